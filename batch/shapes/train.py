"""Train `builtin:shapes` from scratch on the synthetic world (CPU, bounded wall-clock time).

    python -m sdfleet.batch.shapes.train --out DIR [--budget-min 68] [--finish-min 30]

1. VAE: reconstruct world images (L1 + MSE on posterior samples, a small KL), on 32 px crops
   first (4x cheaper; the VAE is convolutional) and 64 px images at the end.
2. Latents: encode a fixed set of scenes once; the scaling factor makes them unit variance.
3. Text encoder + UNet together: v-prediction on the cached latents with SD's betas rescaled
   to zero terminal SNR (the noisiest step shows nothing of the picture, so the layout has to
   come from the prompt) and 10% empty captions, so classifier-free guidance has an
   unconditional branch. EMA weights are what is saved.
4. Finish (`finish_min`, after the budget): the same from the saved weights, at a lower rate,
   on captions of which 20% name one attribute wrongly (`world.mislabel`), as web captions
   do: the conditional model alone then draws the prompt ~8 times in 10 and guidance has the
   spread to take back (without it guidance 1 drew the prompt as often as 3).
Each stage stops at its step count or its share of the budget, whichever comes first; the
pipeline is saved (atomically) every few minutes, so a stopped run still leaves usable weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sdfleet.batch.shapes.model import build_components
from sdfleet.batch.shapes.world import mislabel, random_caption, random_scene, render_array

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    seed: int = 14
    budget_min: float = 68.0
    vae_share: float = 0.18  # of the budget
    vae_steps: int = 4000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-5
    vae_shape_weight: float = 4.0  # extra loss weight on the shape's pixels (not background)
    vae_edge_weight: float = 1.0  # L1 on image gradients: sharp corners tell square from circle
    latent_scenes: int = 16000
    unet_steps: int = 12000
    unet_batch: int = 64
    unet_lr: float = 6e-4
    caption_drop: float = 0.1
    caption_noise: float = 0.0  # share of captions with one attribute wrong (`world.mislabel`)
    finish_min: float = 30.0  # stage 4, after the budget: noisy captions (0 leaves it out)
    finish_lr: float = 2e-4
    finish_caption_noise: float = 0.2
    noise_offset: float = 0.0  # zero terminal SNR already lets the mean move
    ema: float = 0.999
    min_snr: float = 0.0  # min-SNR-gamma loss weights (Hang et al. 2023); 0 turns them off
    save_every_min: float = 6.0
    threads: int = 2


class Clock:
    """Wall-clock budget: `left_s()` and `share_over(start, share)` for each stage."""

    def __init__(self, budget_min: float):
        self.start, self.budget_s = time.monotonic(), budget_min * 60

    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def over(self, until_s: float) -> bool:
        return self.elapsed_s() >= until_s


def lr_at(base: float, progress: float, warmup: float = 0.03) -> float:
    """Linear warmup then cosine to 10% of `base`; `progress` in [0, 1]."""
    if progress < warmup:
        return base * (progress / warmup + 0.01)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def to_tensor(images: np.ndarray):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def world_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([render_array(random_scene(rng)) for _ in range(n)])


def reconstruction_loss(recon, x, recipe: Recipe):
    """L1 + MSE, weighted up on the shape's pixels (a flat background is most of the picture
    and easy), plus L1 on horizontal and vertical differences (edges and corners): the kind of
    a small shape lives in a few pixels of its outline."""
    shape = (x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.05  # (B, 1, H, W)
    weight = 1.0 + recipe.vae_shape_weight * shape.float()
    err = recon - x
    rec = ((err.abs() + err**2) * weight).mean() / weight.mean()
    if recipe.vae_edge_weight:
        dx = err[..., :, 1:] - err[..., :, :-1]
        dy = err[..., 1:, :] - err[..., :-1, :]
        rec = rec + recipe.vae_edge_weight * (dx.abs().mean() + dy.abs().mean())
    return rec


def train_vae(vae, recipe: Recipe, clock: Clock) -> None:
    """Stage 1: the autoencoder, until `vae_steps` or its share of the budget."""
    import torch

    rng = np.random.default_rng(recipe.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    until_s = recipe.vae_share * clock.budget_s
    vae.train()
    for step in range(recipe.vae_steps):
        progress = max(step / recipe.vae_steps, clock.elapsed_s() / until_s)
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe.vae_lr, progress)
        x = to_tensor(world_images(rng, recipe.vae_batch))  # (B, 3, 64, 64)
        if progress < 0.7:  # random 32 px crops: the same local job at a quarter of the cost
            i, j = rng.integers(0, 33, size=2)
            x = x[:, :, i : i + 32, j : j + 32]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = reconstruction_loss(recon, x, recipe)
        loss = rec + recipe.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            logger.info("vae step %d  rec %.4f  t=%.0fs", step, rec.item(), clock.elapsed_s())
    vae.eval()


def encode_latents(vae, recipe: Recipe):
    """Stage 2: (N, 4, 8, 8) latent means of fixed scenes, their scenes, and the scaling."""
    import torch

    rng = np.random.default_rng(recipe.seed + 1)
    scenes = [random_scene(rng) for _ in range(recipe.latent_scenes)]
    chunks = []
    with torch.no_grad():
        for k in range(0, len(scenes), 256):
            x = to_tensor(np.stack([render_array(s) for s in scenes[k : k + 256]]))
            chunks.append(vae.encode(x).latent_dist.mean)
    latents = torch.cat(chunks)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    logger.info(
        "latents %s  mean %.3f  scaling %.4f", tuple(latents.shape), latents.mean(), scaling
    )
    return latents * scaling, scenes


class TokenCache:
    """Caption -> token ids, padded to 77 like the pipeline does."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids = tokenizer, {}

    def __call__(self, captions: list[str]):
        import torch

        for c in captions:
            if c not in self.ids:
                self.ids[c] = self.tokenizer(
                    c, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
                ).input_ids[0]
        return torch.stack([self.ids[c] for c in captions])


def snr_weights(alpha_bar, gamma: float, prediction: str):
    """min(SNR, gamma) / SNR per item for epsilon prediction, min(SNR, gamma) / (SNR + 1) for
    v-prediction: low-noise steps count less, so the steps that decide layout (high noise) are
    learned sooner. gamma 0 -> all ones."""
    if gamma <= 0:
        return alpha_bar.new_ones(alpha_bar.shape)
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / (snr + 1 if prediction == "v_prediction" else snr)


def training_caption(scene, rng: np.random.Generator, recipe: Recipe) -> str:
    """Empty with `caption_drop` (the unconditional branch), else the scene's caption, naming one
    attribute wrongly with `caption_noise`."""
    if rng.random() < recipe.caption_drop:
        return ""
    if recipe.caption_noise and rng.random() < recipe.caption_noise:
        scene = mislabel(scene, rng)
    return random_caption(scene, rng)


def update_ema(ema_models, models, decay: float) -> None:
    import torch

    with torch.no_grad():
        for ema, model in zip(ema_models, models):
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - decay)


def train_unet(parts: dict, latents, scenes, recipe: Recipe, clock: Clock, save) -> int:
    """Stage 3: text encoder + UNet on cached latents; returns the steps done."""
    import torch
    from diffusers import DDPMScheduler

    unet, text_encoder = parts["unet"], parts["text_encoder"]
    models = [unet, text_encoder]
    emas = [copy.deepcopy(m).requires_grad_(False) for m in models]
    noise_sched = DDPMScheduler.from_config(parts["scheduler"].config)
    alphas, prediction = noise_sched.alphas_cumprod, noise_sched.config.prediction_type
    tokens = TokenCache(parts["tokenizer"])
    rng = np.random.default_rng(recipe.seed + 2)
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=0.01)
    start_s, last_save = clock.elapsed_s(), clock.elapsed_s()
    for m in models:
        m.train()
    step = 0
    for step in range(recipe.unet_steps):
        progress = max(
            step / recipe.unet_steps, (clock.elapsed_s() - start_s) / (clock.budget_s - start_s)
        )
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe.unet_lr, progress)
        idx = rng.integers(0, len(scenes), size=recipe.unet_batch)
        captions = [training_caption(scenes[i], rng, recipe) for i in idx]
        x0 = latents[torch.from_numpy(idx)]  # (B, 4, 8, 8)
        noise = torch.randn_like(x0) + recipe.noise_offset * torch.randn(len(idx), 4, 1, 1)
        t = torch.randint(0, len(alphas), (len(idx),))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise_sched.get_velocity(x0, noise, t) if prediction == "v_prediction" else noise
        context = text_encoder(tokens(captions))[0]  # (B, 77, 64)
        per_item = (unet(xt, t, context).sample - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        loss = (per_item * snr_weights(a.flatten(), recipe.min_snr, prediction)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        update_ema(emas, models, min(recipe.ema, (1 + step) / (10 + step)))
        if step % 50 == 0:
            logger.info("unet step %d  loss %.4f  t=%.0fs", step, loss.item(), clock.elapsed_s())
        if clock.elapsed_s() - last_save > recipe.save_every_min * 60:
            save(emas, step)
            last_save = clock.elapsed_s()
    save(emas, step + 1)
    return step + 1


def save_pipeline(parts: dict, emas, out: Path, info: dict) -> None:
    """Write the pipeline with the EMA weights to `out/pipeline` (staged, then renamed)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=emas[1],
        tokenizer=parts["tokenizer"],
        unet=emas[0],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target = publish(pipe, out / "pipeline", info)
    logger.info("saved %s (%s)", target, info)


def publish(model, target: Path, info: dict) -> Path:
    """`model.save_pretrained` with `info` as training.json, into a staging folder renamed to
    `target` once whole: a run stopped mid-save leaves the last whole save."""
    staging, old = (
        target.with_name(target.name + ".staging"),
        target.with_name(target.name + ".old"),
    )
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    (staging / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def load_vae(folder: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder / "vae")


def load_parts(folder: Path) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return dict(
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
    )


def run(
    recipe: Recipe, out: Path, vae_from: Path | None = None, resume: Path | None = None
) -> None:
    import torch

    torch.set_num_threads(recipe.threads)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(recipe.budget_min)
    parts = build_components(recipe.seed)
    info = {"recipe": asdict(recipe)}
    if resume:  # continue from a saved pipeline: its VAE, text encoder and UNet
        parts.update(load_parts(resume))
        info["resumed_from"] = json.loads((resume / "training.json").read_text())
    # 1. VAE (or reuse a trained one)
    if resume or vae_from:
        if vae_from:
            parts["vae"] = load_vae(vae_from)
            info["vae_from"] = str(vae_from)
    else:
        train_vae(parts["vae"], recipe, clock)
        parts["vae"].save_pretrained(out / "vae", safe_serialization=True)
    info["vae_s"] = round(clock.elapsed_s())
    # 2. latents
    latents, scenes = encode_latents(parts["vae"], recipe)

    # 3. text encoder + UNet, saving as it goes
    def save(emas, steps: int) -> None:
        info.update(unet_steps=steps, total_s=round(clock.elapsed_s()))
        save_pipeline(parts, emas, out, info)

    train_unet(parts, latents, scenes, recipe, clock, save)
    if recipe.finish_min > 0 and not resume:
        finish(recipe, out, latents, scenes, info)
    logger.info("done in %.0f s", clock.elapsed_s())


def finish(recipe: Recipe, out: Path, latents, scenes, info: dict) -> None:
    """Stage 4: go on from the saved pipeline (its EMA weights, as `--resume` does) for
    `finish_min` more minutes on captions of which `finish_caption_noise` name one attribute
    wrongly, at `finish_lr`. Clean captions leave guidance nothing to do (docs/SHAPES.md)."""
    stage = replace(
        recipe,
        budget_min=recipe.finish_min,
        unet_lr=recipe.finish_lr,
        caption_noise=recipe.finish_caption_noise,
    )
    parts = build_components(recipe.seed)
    parts.update(load_parts(out / "pipeline"))
    clock = Clock(stage.budget_min)
    done = {k: info[k] for k in ("unet_steps", "total_s")}

    def save(emas, steps: int) -> None:
        info.update(done, finish_steps=steps, finish_s=round(clock.elapsed_s()))
        save_pipeline(parts, emas, out, info)

    train_unet(parts, latents, scenes, stage, clock, save)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-min", type=float, default=Recipe.budget_min)
    parser.add_argument("--unet-steps", type=int, default=Recipe.unet_steps)
    parser.add_argument("--vae-steps", type=int, default=Recipe.vae_steps)
    parser.add_argument("--vae-from", type=Path, default=None, help="reuse a trained vae folder")
    parser.add_argument("--resume", type=Path, default=None, help="continue a saved pipeline")
    parser.add_argument("--unet-lr", type=float, default=Recipe.unet_lr)
    parser.add_argument("--latent-scenes", type=int, default=Recipe.latent_scenes)
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--caption-noise", type=float, default=Recipe.caption_noise)
    parser.add_argument("--finish-min", type=float, default=Recipe.finish_min)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    recipe = Recipe(
        seed=args.seed,
        budget_min=args.budget_min,
        unet_steps=args.unet_steps,
        vae_steps=args.vae_steps,
        unet_lr=args.unet_lr,
        latent_scenes=args.latent_scenes,
        caption_noise=args.caption_noise,
        finish_min=args.finish_min,
        vae_share=0.0 if args.vae_from or args.resume else Recipe.vae_share,
    )
    run(recipe, args.out, args.vae_from.parent if args.vae_from else None, args.resume)


if __name__ == "__main__":
    main()
