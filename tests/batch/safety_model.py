"""builtin:tiny with a safety checker, saved as a diffusers folder (as hub SD 1.x models ship).

The checker is diffusers' `StableDiffusionSafetyChecker` at toy size (a 32px CLIP vision tower)
and its `CLIPImageProcessor`. Its concept thresholds decide whether it fires: `fires=True` sets
them below any cosine similarity (every image is flagged and blacked out), False above any.
"""

from __future__ import annotations

from pathlib import Path


def save_checked_tiny(tiny_dir: Path, out: Path, fires: bool) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig, CLIPImageProcessor

    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1}
    config = CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        checker = StableDiffusionSafetyChecker(config)
    threshold = -2.0 if fires else 2.0  # cosine similarities lie in [-1, 1]
    checker.concept_embeds_weights.data.fill_(threshold)
    checker.special_care_embeds_weights.data.fill_(threshold)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    tiny = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    pipe = StableDiffusionPipeline(
        **{
            k: v
            for k, v in tiny.components.items()
            if k not in ("safety_checker", "feature_extractor")
        },
        safety_checker=checker,
        feature_extractor=processor,
        requires_safety_checker=True,
    )
    pipe.save_pretrained(out)
    return out
