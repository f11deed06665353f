"""`builtin:tiny`: a real diffusers Stable Diffusion pipeline at toy size, built offline.

Every component is the real class (CLIPTokenizer, CLIPTextModel, UNet2DConditionModel,
AutoencoderKL with 4 blocks so it down-samples 8x like SD, EulerDiscreteScheduler). Weights come
from a fixed seed, are saved once with `save_pretrained` into a cache folder and loaded with
`from_pretrained` like any other model. Pictures are meaningless; every code path is the real one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_VERSION = 1  # bump when the architecture or seed changes: a new cache folder is built
TINY_SEED = 20240601
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def cache_root() -> Path:
    """Where built models live: $SDFLEET_CACHE, else ~/.cache/sdfleet."""
    env = os.environ.get("SDFLEET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sdfleet"


def tiny_model_dir() -> Path:
    """Return the folder of `builtin:tiny`, building it on first use (atomic, race-safe)."""
    target = cache_root() / f"builtin-tiny-v{TINY_VERSION}"
    return build_once(
        target, lambda out: build_tiny_pipeline().save_pretrained(out, safe_serialization=True)
    )


def build_once(
    target: Path, build: Callable[[Path], None], marker: str = "model_index.json"
) -> Path:
    """`target`, made by `build(staging)` in a staging folder renamed into place on first use;
    a folder holding `marker` is complete. Race-safe: a process that loses the rename keeps the
    winner's folder."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)  # another process may have won the race: fine
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built %s", target)
    return target


def byte_characters() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0..255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_byte_level_tokenizer(folder: Path) -> None:
    """Write a CLIP byte-level vocab (256 bytes, 256 bytes + </w>, bos, eos) and empty merges."""
    chars = list(byte_characters())
    tokens = chars + [c + "</w>" for c in chars] + [_BOS, _EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def text_config(tokenizer, hidden: int, intermediate: int, layers: int):
    """A toy CLIP text encoder's config over `tokenizer` (77 positions, 4 heads, its own
    start/end tokens; padding is the end token, as in CLIP's tokenizer)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.convert_tokens_to_ids(_BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(_EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(_EOS),
    )


def build_tiny_pipeline():
    """Build the toy pipeline from `TINY_SEED`; global RNG state is restored afterwards."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_byte_level_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 32, 32, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(text_config(tokenizer, hidden=32, intermediate=37, layers=2))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
