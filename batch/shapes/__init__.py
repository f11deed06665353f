"""`builtin:shapes`: a toy Stable Diffusion pipeline trained here on a world of flat shapes.

`world` draws the captioned pictures, `judge` reads a picture back into words, `train` builds the
weights that ship in `weights/` (a diffusers folder loaded with `from_pretrained`), and
`control_train` the layout ControlNet in `controlnet/` (a silhouette places the shape).
"""

from __future__ import annotations

from pathlib import Path

from sdfleet.batch.errors import ModelError


def shapes_model_dir() -> Path:
    """The committed diffusers folder of `builtin:shapes`; ModelError when it is missing."""
    return _committed("weights", "model_index.json", "model: builtin:shapes", "train", "pipeline")


def shapes_controlnet_dir() -> Path:
    """The committed layout ControlNet of `builtin:shapes` (a diffusers ControlNetModel folder:
    its control image is the shape's silhouette, white on black); ModelError when missing."""
    return _committed(
        "controlnet", "config.json", "the builtin:shapes ControlNet", "control_train", "controlnet"
    )


def _committed(name: str, marker: str, what: str, script: str, made: str) -> Path:
    """This package's folder `name`, which holds `marker` when its weights shipped; the
    ModelError names it and how to make it (`script` writes DIR/`made`)."""
    folder = Path(__file__).resolve().parent / name
    if not (folder / marker).is_file():
        raise ModelError(
            f"{what} has no weights at {folder} ({marker} missing); reinstall sdfleet, or train "
            f"them: python -m sdfleet.batch.shapes.{script} --out DIR and copy DIR/{made} there."
        )
    return folder
