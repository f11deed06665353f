"""Write the LoRA example's files next to this script (run: python manifests/make_example_lora.py).

- `loras/brand_yellow.safetensors`: a LoRA for builtin:shapes that draws the brand's yellow
  background wherever a prompt names no background, trained here (about a minute on two CPU
  cores) on 512 pictures of builtin:shapes' world with every background yellow and captions
  that never name it. Written in kohya/A1111's key layout, as LoRAs shared for A1111 are.
- `marketing_lora.parquet`: the rows of `jobs/examples/marketing_lora.yaml`: the same products
  with no LoRA, with the LoRA from the `loras` column, and from an A1111 `<lora:...>` tag.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np

from sdfleet.batch.models import builtin_folder
from sdfleet.batch.shapes.world import caption, random_scene, render_array
from sdfleet.batch.tiny_adapters import save_tensors, to_kohya, train_unet_lora
from sdfleet.jobs.examples import write_manifest

HERE = Path(__file__).resolve().parent
BRAND = "yellow"
PRODUCTS = ["a large red circle", "a small blue square", "a large white triangle"]


def brand_pictures(count: int = 512, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Scenes of the shapes world on the brand background; captions without the background."""
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < count:
        scene = random_scene(rng)
        if scene.colour != BRAND:
            scenes.append(replace(scene, background=BRAND))
    captions = [
        caption(s, background=False, size=rng.random() < 0.8, position=rng.random() < 0.7)
        for s in scenes
    ]
    return np.stack([render_array(s) for s in scenes]), captions


def rows() -> list[dict]:
    out = []
    for index, product in enumerate(PRODUCTS):
        seed = 100 + 10 * index
        out += [
            {"id": f"p{index}-plain", "prompt": product, "seed": seed, "loras": None},
            {"id": f"p{index}-brand", "prompt": product, "seed": seed, "loras": "brand_yellow"},
            {"id": f"p{index}-tag", "prompt": f"{product} <lora:brand_yellow:0.7>", "seed": seed},
        ]
    out.append(
        {
            "id": "named-bg",
            "prompt": "a large red circle on a (blue:1.2) background",
            "seed": 7,
            "loras": "brand_yellow",
        }
    )  # a background the prompt names wins over the brand's
    return out


def main() -> None:
    images, captions = brand_pictures()
    lora = train_unet_lora(builtin_folder("builtin:shapes"), images, captions, steps=200, seed=1)
    meta = {"ss_output_name": "brand_yellow", "ss_network_dim": "4", "ss_network_alpha": "4"}
    print(save_tensors(to_kohya(lora), HERE / "loras" / "brand_yellow.safetensors", meta))
    print(write_manifest(rows(), HERE / "marketing_lora.parquet"))


if __name__ == "__main__":
    main()
