"""Write the ControlNet example's files next to this script
(run: python manifests/make_example_controlnet.py).

- `controlnets/shapes-layout/`: builtin:shapes' layout ControlNet (`batch.shapes.control_train`,
  a diffusers ControlNetModel folder): its control image is a silhouette, the shape white on
  black where the picture should have it. With a real model, point `model:` at an SD
  checkpoint and `controlnets[].model` at e.g. lllyasviel/control_v11p_sd15_seg or
  control_v11p_sd15_scribble saved as a folder.
- `marketing_controlnet.parquet`: product layouts (silhouettes) as each row's `control_image`,
  prompts that name the product and its background but not its place: txt2img rows, and
  img2img rows whose init image is a picture of the product elsewhere in the frame.
"""

import io
import shutil
from dataclasses import replace
from pathlib import Path

from sdfleet.batch.shapes import shapes_controlnet_dir
from sdfleet.batch.shapes.world import Scene, caption, silhouette
from sdfleet.jobs.examples import world_image_png, write_manifest

HERE = Path(__file__).resolve().parent
# builtin:shapes draws these; with a real model "a ceramic mug, studio photo" and its layout
PRODUCTS = [
    Scene("circle", "red", "white", "large", "top left"),
    Scene("square", "blue", "yellow", "large", "bottom right"),
    Scene("triangle", "black", "white", "large", "center"),
]


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rows() -> list[dict]:
    out = []
    for index, scene in enumerate(PRODUCTS):
        layout = png(silhouette(scene))
        out.append({"id": f"layout-{index}", "prompt": caption(scene, position=False),
                    "seed": 200 + index, "init_image": None, "control_image": layout})  # fmt: skip
        elsewhere = replace(scene, position="center" if scene.position != "center" else "top right")
        out.append({"id": f"moved-{index}", "prompt": caption(scene, position=False),
                    "seed": 300 + index, "init_image": world_image_png(elsewhere),
                    "control_image": layout})  # fmt: skip
    return out


def write_files(folder: Path = HERE) -> None:
    target = folder / "controlnets" / "shapes-layout"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(shapes_controlnet_dir(), target, ignore=shutil.ignore_patterns(".*"))
    write_manifest(rows(), folder / "marketing_controlnet.parquet")


if __name__ == "__main__":
    write_files()
