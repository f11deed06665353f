"""Tiny conditioning models built offline beside `builtin:tiny`: ControlNet, inpainting, upscaler.

Each is the real class at toy size with weights from a fixed seed, saved the way real files are
(`save_pretrained` folders, a spandrel-recognised `.safetensors`) into the sdfleet cache and
loaded back through the same code real checkpoints use. Pictures are meaningless; code paths are
real. Used by tests and by the examples' set-up scripts; nothing here downloads.

- `tiny_controlnet_dir(k)`: `ControlNetModel.from_unet(builtin:tiny's UNet)` (and
  `tiny_sdxl_controlnet_dir(k)`, the same from builtin:tiny-sdxl's). `from_unet` zeroes
  the output convolutions (a fresh ControlNet changes nothing); here they get small seeded
  weights, different per `k`, so a test can tell one ControlNet, two, and none apart.
- `tiny_inpaint_dir()`: builtin:tiny with a 9-channel UNet (latents, mask, masked-image latents),
  the layout of dedicated inpainting checkpoints, saved as a StableDiffusionInpaintPipeline.
- `tiny_upscaler_file(scale)`: a 1-block ESRGAN (RRDBNet) in the original ESRGAN key layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from sdfleet.batch.tiny import TINY_SEED, TINY_VERSION, build_once, cache_root, tiny_model_dir

CONDITIONING_VERSION = 2  # bump when a builder below changes


def _built(name: str, build: Callable[[Path], None], marker: str) -> Path:
    """`cache_root()/name-...`, built once (race-safe) by builtin:tiny's `build_once`."""
    target = cache_root() / f"{name}-t{TINY_VERSION}-v{CONDITIONING_VERSION}"
    return build_once(target, build, marker)


def tiny_controlnet_dir(k: int = 0) -> Path:
    """A ControlNet for builtin:tiny (a diffusers folder), distinct per `k`."""
    build = functools.partial(_build_controlnet, k=k, base=tiny_model_dir())
    return _built(f"tiny-controlnet-{k}", build, "config.json")


def tiny_sdxl_controlnet_dir(k: int = 0) -> Path:
    """A ControlNet for builtin:tiny-sdxl (SDXL's added text/time conditioning included)."""
    from sdfleet.batch.tiny_sdxl import tiny_sdxl_dir

    build = functools.partial(_build_controlnet, k=k, base=tiny_sdxl_dir())
    return _built(f"tiny-sdxl-controlnet-{k}", build, "config.json")


def _build_controlnet(out: Path, k: int, base: Path) -> None:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    # four widths: three stride-2 convolutions take the control image to the latents' 1/8 size
    widths = (8, 16, 16, 32)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths)
    zeroed = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block]
    zeroed += list(controlnet.controlnet_down_blocks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 100 + k)
        for conv in zeroed:
            torch.nn.init.normal_(conv.weight, std=0.05)
            torch.nn.init.normal_(conv.bias, std=0.05)
    controlnet.save_pretrained(out, safe_serialization=True)


def tiny_inpaint_dir() -> Path:
    """builtin:tiny with a 9-channel UNet, as a StableDiffusionInpaintPipeline folder."""
    return _built("tiny-inpaint", _build_inpaint, "model_index.json")


def _build_inpaint(out: Path) -> None:
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    base = StableDiffusionInpaintPipeline.from_pretrained(tiny_model_dir(), safety_checker=None)
    config = dict(base.unet.config)
    config["in_channels"] = 9
    unet = UNet2DConditionModel.from_config(config)
    state = base.unet.state_dict()
    weight = state["conv_in.weight"]  # (C, 4, 3, 3) -> (C, 9, 3, 3): extra inputs seeded
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 200)
        extra = torch.randn(weight.shape[0], 5, *weight.shape[2:]) * weight.std()
    state["conv_in.weight"] = torch.cat([weight, extra], dim=1)
    unet.load_state_dict(state)
    base.unet = unet
    base.register_to_config(requires_safety_checker=False)
    base.save_pretrained(out, safe_serialization=True)


def tiny_upscaler_file(scale: int = 2) -> Path:
    """A tiny ESRGAN `.safetensors` (x`scale`) that spandrel recognises."""
    folder = _built(f"tiny-esrgan-x{scale}", lambda out: _build_upscaler(out, scale), "model")
    return folder / "model" / f"tiny-esrgan-x{scale}.safetensors"


def _build_upscaler(out: Path, scale: int) -> None:
    import torch
    from safetensors.torch import save_file

    from sdfleet.batch.upscale import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 300 + scale)
        net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    (out / "model").mkdir(parents=True)
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    save_file(state, str(out / "model" / f"tiny-esrgan-x{scale}.safetensors"))
