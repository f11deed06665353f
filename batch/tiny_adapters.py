"""Tiny LoRA and textual-inversion files for the tiny models, made offline from a fixed seed.

`train_unet_lora` trains one for real on given pictures (the example job's LoRA is trained on
builtin:shapes' world with every background yellow: `manifests/make_example_lora.py`).

For tests and the example job (`manifests/make_example_lora.py`): a LoRA is made with peft on a
model folder's own UNet and text encoder(s) (`add_adapter` with a `LoraConfig`, then the
`lora_B` matrices, which peft starts at zero, filled from the seed so the LoRA changes
pictures), read back with `get_peft_model_state_dict` and written either in diffusers' layout
(`unet.<module>.lora_A.weight`, what `save_lora_weights` writes) or in kohya's, which A1111 and
most shared LoRA files use (`lora_unet_<module_with_underscores>.lora_down.weight`, `lora_up`,
and an `alpha` per module; text encoders `lora_te_` for SD 1.x, `lora_te1_`/`lora_te2_` for
SDXL, module paths under `text_model.`). alpha equals the rank, so both layouts mean scale 1.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

LORA_RANK = 4
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
_KOHYA_PREFIX = {
    ("unet", False): "lora_unet_",
    ("text_encoder", False): "lora_te_",
    ("unet", True): "lora_unet_",
    ("text_encoder", True): "lora_te1_",
    ("text_encoder_2", True): "lora_te2_",
}


def make_tiny_lora(
    model_dir: str | Path, seed: int, rank: int = LORA_RANK, text_encoders: bool = True
) -> dict[str, Any]:
    """A LoRA for the pipeline folder `model_dir`, in diffusers' key layout."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    parts = _components(Path(model_dir), text_encoders)
    state: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(seed)
    for prefix, model in parts.items():
        targets = UNET_TARGETS if prefix == "unet" else TEXT_TARGETS
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        for key, value in get_peft_model_state_dict(model, save_embedding_layers=False).items():
            state[f"{prefix}.{key}"] = value.detach().clone().contiguous()
    return state


def _components(model_dir: Path, text_encoders: bool) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    parts: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    }
    if text_encoders:
        parts["text_encoder"] = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
        if (model_dir / "text_encoder_2").is_dir():
            parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                model_dir, subfolder="text_encoder_2"
            )
    return parts


def to_kohya(state: dict[str, Any]) -> dict[str, Any]:
    """The same LoRA in kohya/A1111's key layout, with alpha = rank (scale 1)."""
    import torch

    sdxl = any(key.startswith("text_encoder_2.") for key in state)
    kohya: dict[str, Any] = {}
    for key, value in state.items():
        component, rest = key.split(".", 1)
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", rest)
        if match is None:
            raise ValueError(f"not a peft LoRA key: {key!r}")
        module, matrix = match.groups()
        if component != "unet" and not module.startswith("text_model."):
            module = f"text_model.{module}"
        name = _KOHYA_PREFIX[(component, sdxl)] + module.replace(".", "_")
        kohya[f"{name}.{'lora_down' if matrix == 'lora_A' else 'lora_up'}.weight"] = value
        if matrix == "lora_A":
            kohya[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    return kohya


def make_tiny_embedding(model_dir: str | Path, seed: int, vectors: int = 2) -> dict[str, Any]:
    """A textual-inversion embedding: A1111's `emb_params` (n, width) for SD 1.x folders,
    SDXL's `clip_l` / `clip_g` pair for folders with a second text encoder."""
    import torch

    from sdfleet.batch.adapter_files import folder_dims

    dims = folder_dims(model_dir)
    if dims is None or not dims.text_dims:
        raise ValueError(f"{str(model_dir)!r} is not a diffusers folder with a text encoder")
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(vectors, width, generator=generator) for width in dims.text_dims]
    if len(tensors) == 2:
        return {"clip_l": tensors[0], "clip_g": tensors[1]}
    return {"emb_params": tensors[0]}


def save_tensors(state: dict[str, Any], path: str | Path, metadata: dict | None = None) -> Path:
    """Write tensors as `.safetensors` (creating the folder)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def train_unet_lora(
    model_dir: str | Path,
    images: Any,
    captions: list[str],
    steps: int = 200,
    rank: int = LORA_RANK,
    seed: int = 0,
    lr: float = 2e-3,
    batch: int = 32,
) -> dict[str, Any]:
    """A UNet LoRA trained on (images (N, H, W, 3) uint8, captions) for the pipeline folder
    `model_dir` (the noise schedule and prediction type of its scheduler config: epsilon or
    v; the text encoder frozen), in diffusers' key layout."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True)
    latents, context = _training_inputs(pipe, images, captions)
    unet = pipe.unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas, v_prediction = (
        noise_schedule.alphas_cumprod,
        pipe.scheduler.config.prediction_type == "v_prediction",
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, len(latents), (batch,), generator=generator)
        noise = torch.randn(latents[pick].shape, generator=generator)
        t = torch.randint(0, len(alphas), (batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents[pick] + (1 - a).sqrt() * noise  # (B, 4, h, w)
        target = noise_schedule.get_velocity(latents[pick], noise, t) if v_prediction else noise
        loss = (unet(noisy, t, context[pick]).sample - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    state = get_peft_model_state_dict(unet, save_embedding_layers=False)
    return {f"unet.{key}": value.detach().clone().contiguous() for key, value in state.items()}


def _training_inputs(pipe: Any, images: Any, captions: list[str]) -> tuple[Any, Any]:
    """VAE latents (N, 4, h, w) of the images and text-encoder states (N, 77, dim)."""
    import torch

    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
    ids = pipe.tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        latents = torch.cat([pipe.vae.encode(p).latent_dist.mode() for p in pixels.split(64)])
        context = torch.cat([pipe.text_encoder(i)[0] for i in ids.split(64)])
    return latents * pipe.vae.config.scaling_factor, context
