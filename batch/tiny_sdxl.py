"""`builtin:tiny-sdxl` and `builtin:tiny-sdxl-refiner`: SDXL pipelines at toy size, built offline.

Built like `builtin:tiny` (`batch.tiny`): every component is the real class, weights come from a
fixed seed, and the pipeline is saved with `save_pretrained` into the sdfleet cache and loaded
back with `from_pretrained`, like any SDXL folder.

- base: two CLIP text encoders (`CLIPTextModel`, then `CLIPTextModelWithProjection`, whose
  projected EOS state is SDXL's pooled embedding), two byte-level tokenizers (the second pads with
  `!` like SDXL's), a UNet with `addition_embed_type="text_time"` (pooled embedding plus the six
  size numbers: original size, crop, target size), builtin:tiny's VAE layout (8x).
- refiner: only the second text encoder (shared with the base, as SDXL's refiner shares it), a
  UNet conditioned on five numbers (original size, crop, aesthetic score), the same VAE.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sdfleet.batch.tiny import (
    TINY_SEED,
    build_once,
    build_tiny_pipeline,
    cache_root,
    write_byte_level_tokenizer,
)

logger = logging.getLogger(__name__)

TINY_SDXL_VERSION = 1  # bump when the architecture or seed changes
_TIME_EMBED_DIM = 8
_TEXT_DIM = 32  # hidden size of each text encoder; the projection is as wide


def tiny_sdxl_dir() -> Path:
    """The `builtin:tiny-sdxl` folder, built on first use."""
    target = cache_root() / f"builtin-tiny-sdxl-v{TINY_SDXL_VERSION}"
    return build_once(target, lambda out: build_tiny_sdxl().save_pretrained(out))


def tiny_sdxl_refiner_dir() -> Path:
    """The `builtin:tiny-sdxl-refiner` folder (shares the base's second text encoder)."""
    target = cache_root() / f"builtin-tiny-sdxl-refiner-v{TINY_SDXL_VERSION}"
    return build_once(target, _save_refiner)


def _save_refiner(out: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir(), local_files_only=True)
    build_tiny_sdxl_refiner(base).save_pretrained(out)


def _tokenizer(pad_token: str | None = None):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_byte_level_tokenizer(Path(tmp))
        extra = {"pad_token": pad_token} if pad_token else {}
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77, **extra)


def _text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=3,  # SDXL reads the penultimate layer: keep more than two
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=_TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _unet(cross_attention_dim: int, time_numbers: int):
    """A text_time UNet: its added embedding reads the pooled text and `time_numbers` sizes."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=time_numbers * _TIME_EMBED_DIM + _TEXT_DIM,
        norm_num_groups=32,
    )


def build_tiny_sdxl():
    """The toy SDXL base from a fixed seed; global RNG state is restored afterwards."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tiny = build_tiny_pipeline()  # its VAE and scheduler: the same layout as builtin:tiny
    tokenizer, tokenizer_2 = _tokenizer(), _tokenizer(pad_token="!")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 1)
        text_encoder = CLIPTextModel(_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2))
        unet = _unet(cross_attention_dim=2 * _TEXT_DIM, time_numbers=6)
    return StableDiffusionXLPipeline(
        vae=tiny.vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=tiny.scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_tiny_sdxl_refiner(base):
    """A toy refiner for `base`: its second text encoder and VAE, a new aesthetic-score UNet."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 2)
        unet = _unet(cross_attention_dim=_TEXT_DIM, time_numbers=5)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=base.scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
