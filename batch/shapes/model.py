"""The untrained `builtin:shapes` components: the same diffusers/transformers classes as SD.

The tokenizer is CLIP's byte-level BPE, written by hand (no download): the 256 byte symbols plus
merges that make every word of the world one token, so the text encoder reads words, not letters.
Any other text still tokenizes (byte by byte); nothing is ever unknown.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdfleet.batch.shapes.world import COLOURS, KINDS, POSITIONS, SIZES_PX
from sdfleet.batch.tiny import byte_characters, text_config

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
IMAGE_PX = 64
LATENT_PX = IMAGE_PX // 8


def world_words() -> list[str]:
    """Every word a caption of the world uses (plus a few a user is likely to write)."""
    words = {"a", "an", "on", "background", "in", "the", "centre", "middle", "and", "of"}
    words |= set(COLOURS) | set(KINDS) | set(SIZES_PX)
    for name in POSITIONS:
        words |= set(name.split())
    return sorted(words)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's merge loop for one word: merge the lowest-ranked adjacent pair until none is left."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        known = [(r, i) for r, i in pairs if r is not None]
        if not known:
            break
        _, i = min(known)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges (in rank order) that turn each word into a single token under `_bpe`."""
    merges: list[tuple[str, str]] = []
    for _ in range(50):  # a later merge can split an earlier word again: repeat until stable
        ranks = {m: r for r, m in enumerate(merges)}
        split = [w for w in words if len(_bpe(w, ranks)) > 1]
        if not split:
            return merges
        for word in split:
            while len(parts := _bpe(word, {m: r for r, m in enumerate(merges)})) > 1:
                merges.append((parts[0], parts[1]))
    raise RuntimeError("word merges did not converge")


def write_tokenizer(folder: Path) -> None:
    """vocab.json (bytes, bytes + </w>, merged words, bos, eos) and merges.txt."""
    chars = byte_characters()
    tokens = chars + [c + "</w>" for c in chars]
    merges = word_merges(world_words())
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [_BOS, _EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")


def build_components(seed: int) -> dict:
    """Fresh tokenizer, text encoder, UNet, VAE and scheduler (the pipeline's parts)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(tokenizer, hidden=64, intermediate=128, layers=3))
    unet = UNet2DConditionModel(
        sample_size=LATENT_PX,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=IMAGE_PX,
    )
    # SD's betas rescaled to zero terminal SNR, v-prediction and trailing timesteps (Lin et al.
    # 2024): with SD's own schedule the noisiest training step still shows the picture (signal
    # 0.07), so the model learns to read the layout from the noise instead of the prompt, and
    # at sampling time, from pure noise, it puts the shape wherever the noise suggests.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,  # unused by trailing spacing; diffusers warns when it is not 1
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )
    return dict(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, scheduler=scheduler
    )
