"""Write the hires-fix example's files next to this script
(run: python manifests/make_example_hires.py).

- `controlnets/tiny-canny/`: builtin:tiny's ControlNet, as `make_example_controlnet.py` makes it.
- `upscalers/tiny-esrgan-x2.safetensors`: a tiny ESRGAN (x2, seeded weights) that spandrel
  recognises (`batch.tiny_conditioning.tiny_upscaler_file`); with a real model, an ESRGAN-family
  `.safetensors` such as 4x-UltraSharp.
- `marketing_hires.parquet`: txt2img rows, each with a product layout as its `control_image`
  (the hires fix runs on txt2img rows), so every image comes out at the same delivery size.
"""

import shutil
from pathlib import Path

from sdfleet.batch.tiny_conditioning import tiny_controlnet_dir, tiny_upscaler_file
from sdfleet.jobs.examples import shape_image_png, write_manifest

HERE = Path(__file__).resolve().parent
PRODUCTS = ["a ceramic mug", "a red sneaker", "a desk lamp"]


def rows() -> list[dict]:
    return [
        {
            "id": f"hero-{index}",
            "prompt": f"{product}, studio photo",
            "seed": 400 + index,
            "control_image": shape_image_png(index),
        }  # fmt: skip
        for index, product in enumerate(PRODUCTS)
    ]


def write_files(folder: Path = HERE) -> None:
    target = folder / "controlnets" / "tiny-canny"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(tiny_controlnet_dir(0), target, ignore=shutil.ignore_patterns(".*"))
    (folder / "upscalers").mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_upscaler_file(2), folder / "upscalers" / "tiny-esrgan-x2.safetensors")
    write_manifest(rows(), folder / "marketing_hires.parquet")


if __name__ == "__main__":
    write_files()
