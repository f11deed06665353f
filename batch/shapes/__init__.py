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
    folder = Path(__file__).resolve().parent / "weights"
    if not (folder / "model_index.json").is_file():
        raise ModelError(
            f"model: builtin:shapes has no weights at {folder} (model_index.json missing); "
            "reinstall sdfleet, or train them: python -m sdfleet.batch.shapes.train --out DIR "
            "and copy DIR/pipeline there."
        )
    return folder


def shapes_controlnet_dir() -> Path:
    """The committed layout ControlNet of `builtin:shapes` (a diffusers ControlNetModel folder:
    its control image is the shape's silhouette, white on black); ModelError when missing."""
    folder = Path(__file__).resolve().parent / "controlnet"
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"the builtin:shapes ControlNet has no weights at {folder} (config.json missing); "
            "reinstall sdfleet, or train it: python -m sdfleet.batch.shapes.control_train "
            "--out DIR and copy DIR/controlnet there."
        )
    return folder
