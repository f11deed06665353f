"""Write the ControlNet example's files next to this script
(run: python manifests/make_example_controlnet.py).

- `controlnets/tiny-canny/`: builtin:tiny's ControlNet (`batch.tiny_conditioning`, a diffusers
  ControlNetModel folder made from its UNet with seeded weights). Its pictures are meaningless;
  with a real model, point `model:` at an SD checkpoint and `controlnets[].model` at e.g.
  lllyasviel/control_v11p_sd15_canny saved as a folder.
- `marketing_controlnet.parquet`: product layouts (a shape on a plain background) as init
  images, whose canny edges keep each product where the layout puts it, and two rows that give
  their own `control_image` (txt2img: the edge map comes from the control image alone).
"""

import shutil
from pathlib import Path

from sdfleet.batch.tiny_conditioning import tiny_controlnet_dir
from sdfleet.jobs.examples import shape_image_png, write_manifest

HERE = Path(__file__).resolve().parent
PRODUCTS = ["a ceramic mug", "a red sneaker", "a desk lamp"]


def rows() -> list[dict]:
    out = []
    for index, product in enumerate(PRODUCTS):
        layout = shape_image_png(index)
        out.append(
            {
                "id": f"layout-{index}",
                "prompt": f"{product}, studio photo",
                "seed": 200 + index,
                "init_image": layout,
                "control_image": None,
            }
        )
        out.append({"id": f"edges-{index}", "prompt": f"{product}, poster", "seed": 300 + index,
                    "init_image": None, "control_image": layout})  # fmt: skip
    return out


def write_files(folder: Path = HERE) -> None:
    target = folder / "controlnets" / "tiny-canny"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(tiny_controlnet_dir(0), target, ignore=shutil.ignore_patterns(".*"))
    write_manifest(rows(), folder / "marketing_controlnet.parquet")


if __name__ == "__main__":
    write_files()
