"""Write a diffusers Stable Diffusion pipeline as one original-layout (LDM / A1111) checkpoint.

The inverse of diffusers' single-file conversion (`loaders/single_file_utils.py`:
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`), in
the spirit of diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py` but derived
from the model configs, so it works for any `layers_per_block` and number of blocks. Tests use it
to produce a real single-file checkpoint offline and check the round trip is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# diffusers ResnetBlock2D names -> LDM ResBlock names (UNet) / ResnetBlock names (VAE)
_UNET_RESNET_NAMES = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_RESNET_NAMES = {"conv_shortcut.": "nin_shortcut."}
# diffusers Attention (VAE mid block) names -> LDM AttnBlock names
_VAE_ATTENTION_NAMES = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def save_as_original_sd_checkpoint(pipe: Any, path: str | Path) -> dict[str, Any]:
    """Write `pipe`'s unet, vae and text encoder to `path` (.safetensors) in LDM key layout.

    Returns the written state dict (LDM keys -> tensors) so callers can also `torch.save` it.
    """
    from safetensors.torch import save_file

    state = {
        **convert_unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **convert_vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **convert_clip_to_ldm(pipe.text_encoder.state_dict()),
    }
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}
    save_file(state, str(path))
    return state


def convert_unet_to_ldm(state_dict: dict[str, Any], config: Any) -> dict[str, Any]:
    """UNet2DConditionModel keys -> `model.diffusion_model.*` (input/middle/output blocks)."""
    blocks = _unet_block_prefixes(config)
    return {
        UNET_PREFIX + _rename(key, blocks, _UNET_RESNET_NAMES): tensor
        for key, tensor in state_dict.items()
    }


def convert_vae_to_ldm(state_dict: dict[str, Any], config: Any) -> dict[str, Any]:
    """AutoencoderKL keys -> `first_stage_model.*`; mid-block attention becomes 1x1 convs."""
    blocks = _vae_block_prefixes(config)
    converted = {}
    for key, tensor in state_dict.items():
        is_attention = ".mid_block.attentions." in key
        names = _VAE_ATTENTION_NAMES if is_attention else _VAE_RESNET_NAMES
        if is_attention and key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # Linear (C, C) -> Conv2d 1x1 (C, C, 1, 1)
        converted[VAE_PREFIX + _rename(key, blocks, names)] = tensor
    return converted


def convert_clip_to_ldm(state_dict: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModel keys -> `cond_stage_model.transformer.text_model.*` (SD 1.x layout).

    transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); LDM keeps it.
    """
    return {
        CLIP_PREFIX + "text_model." + key.removeprefix("text_model."): tensor
        for key, tensor in state_dict.items()
        if not key.endswith("position_ids")  # a buffer, not a weight; the loader rebuilds it
    }


def _rename(key: str, blocks: list[tuple[str, str]], inner: dict[str, str]) -> str:
    """Swap the diffusers block prefix for its LDM one, then (inside a block) the layer name.

    The prefixes are disjoint (each ends in "."), so the first match is the only one.
    """
    for diffusers_prefix, ldm_prefix in blocks:
        if key.startswith(diffusers_prefix):
            tail = key[len(diffusers_prefix) :]
            if _is_inner_block(diffusers_prefix):
                for old, new in inner.items():
                    if tail.startswith(old):
                        tail = new + tail[len(old) :]
                        break
            return ldm_prefix + tail
    raise ValueError(f"no LDM name known for diffusers key {key!r}; extend ldm_convert.py")


def _is_inner_block(diffusers_prefix: str) -> bool:
    return ".resnets." in diffusers_prefix or ".attentions." in diffusers_prefix


def _layers_per_block(config: Any) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"per-block layers_per_block {layers!r} is not supported")
    return layers


def _unet_block_prefixes(config: Any) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for UNet2DConditionModel.

    LDM numbers every layer: input_blocks.0 is conv_in, then per down block `layers` resnet(+attn)
    entries and one downsampler (not after the last block); output_blocks has `layers + 1` entries
    per up block, the upsampler riding on the last one after its resnet (and attention).
    """
    layers = _layers_per_block(config)
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for b in range(len(config["down_block_types"])):
        first = 1 + b * (layers + 1)
        for j in range(layers):
            pairs.append((f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{first + j}.0."))
            pairs.append((f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{first + j}.1."))
        downsampler = f"input_blocks.{first + layers}.0.op."
        pairs.append((f"down_blocks.{b}.downsamplers.0.conv.", downsampler))
    for b, block_type in enumerate(config["up_block_types"]):
        first = b * (layers + 1)
        for j in range(layers + 1):
            pairs.append((f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{first + j}.0."))
            pairs.append((f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{first + j}.1."))
        upsampler = f"output_blocks.{first + layers}.{2 if 'CrossAttn' in block_type else 1}."
        pairs.append((f"up_blocks.{b}.upsamplers.0.", upsampler))
    return pairs


def _vae_block_prefixes(config: Any) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for AutoencoderKL; LDM numbers decoder.up reversed."""
    layers = _layers_per_block(config)
    pairs = [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in.", f"{part}.conv_in."),
            (f"{part}.conv_out.", f"{part}.conv_out."),
            (f"{part}.conv_norm_out.", f"{part}.norm_out."),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."),
        ]
    for i in range(len(config["down_block_types"])):
        for j in range(layers):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
    num_up = len(config["up_block_types"])
    for i in range(num_up):
        ldm_i = num_up - 1 - i
        for j in range(layers + 1):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{ldm_i}.block.{j}."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{ldm_i}.upsample."))
    return pairs
