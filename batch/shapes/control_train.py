"""Train the layout ControlNet of `builtin:shapes` (CPU, bounded wall-clock time).

    python -m sdfleet.batch.shapes.control_train --out DIR [--budget-min 20] [--base FOLDER]

The control image is the scene's silhouette (`world.silhouette`: the shape white on black, at
its place and size); the ControlNet learns to put the prompt's shape there. It starts as
`ControlNetModel.from_unet` of the committed UNet (its encoder's weights, zero convolutions
out, so at step 0 it changes nothing) and trains alone: the pipeline's VAE, text encoder and
UNet stay frozen, as a ControlNet is trained for a released model. Loss: the base model's own
(v-prediction on its zero-terminal-SNR schedule) on cached latents, the UNet run with the
ControlNet's residuals. Captions leave the position out 7 times in 10 (the silhouette has to
carry it) and are empty 1 in 10 (guidance's unconditional branch gets the control too, as in
diffusers' pipelines). EMA weights are saved, as `DIR/controlnet` (staged, then renamed).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sdfleet.batch.shapes.train import (
    Clock,
    TokenCache,
    load_parts,
    lr_at,
    publish,
    to_tensor,
    update_ema,
)
from sdfleet.batch.shapes.world import caption, random_scene, render_array, silhouette

logger = logging.getLogger(__name__)
CONDITIONING_WIDTHS = (16, 32, 64, 64)  # three stride-2 convolutions: 64 px -> the 8 px latents


@dataclass(frozen=True)
class ControlRecipe:
    seed: int = 15
    budget_min: float = 20.0
    scenes: int = 8000
    steps: int = 8000
    batch: int = 64
    lr: float = 3e-4
    caption_drop: float = 0.1
    position_drop: float = 0.7  # captions without the position: the silhouette says it
    ema: float = 0.995
    save_every_min: float = 5.0
    threads: int = 2


def training_caption(scene, rng: np.random.Generator, recipe: ControlRecipe) -> str:
    if rng.random() < recipe.caption_drop:
        return ""
    keep = rng.random(2) >= 0.15  # size and background, as the base model's captions
    position = rng.random() >= recipe.position_drop
    return caption(scene, size=bool(keep[0]), background=bool(keep[1]), position=position)


def scene_set(vae, recipe: ControlRecipe):
    """Fixed scenes: their latents (scaled as the pipeline scales them), their silhouettes as
    (N, 64, 64) uint8, and the scenes."""
    import torch

    rng = np.random.default_rng(recipe.seed)
    scenes = [random_scene(rng) for _ in range(recipe.scenes)]
    chunks = []
    with torch.no_grad():
        for k in range(0, len(scenes), 256):
            x = to_tensor(np.stack([render_array(s) for s in scenes[k : k + 256]]))
            chunks.append(vae.encode(x).latent_dist.mean)
    latents = torch.cat(chunks) * vae.config.scaling_factor
    masks = np.stack([np.asarray(silhouette(s).convert("L")) for s in scenes])
    return latents, masks, scenes


def control_tensor(masks: np.ndarray):
    """(B, 64, 64) uint8 -> (B, 3, 64, 64) float in [0, 1], as diffusers prepares a control
    image (no normalisation to [-1, 1])."""
    import torch

    return torch.from_numpy(masks).float().div(255.0).unsqueeze(1).expand(-1, 3, -1, -1)


def make_controlnet(unet):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_WIDTHS)


def train(base: Path, out: Path, recipe: ControlRecipe) -> int:
    """The ControlNet for the pipeline at `base`, saved to `out/controlnet`; the steps done."""
    import torch
    from diffusers import DDPMScheduler

    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(recipe.budget_min)
    parts = load_parts(base)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    vae, unet, text_encoder = parts["vae"], parts["unet"], parts["text_encoder"]
    for frozen in (vae, unet, text_encoder):
        frozen.requires_grad_(False).eval()
    latents, masks, scenes = scene_set(vae, recipe)
    logger.info("scenes %d encoded  t=%.0fs", len(scenes), clock.elapsed_s())
    controlnet = make_controlnet(unet).train()
    ema = copy.deepcopy(controlnet).requires_grad_(False)
    noise_sched = DDPMScheduler.from_pretrained(base / "scheduler")
    alphas = noise_sched.alphas_cumprod
    tokens, contexts = TokenCache(tokenizer), {}
    rng = np.random.default_rng(recipe.seed + 1)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=recipe.lr, weight_decay=0.01)
    info = {"recipe": asdict(recipe), "base": str(base), "base_training": _base_info(base)}
    start_s = last_save = clock.elapsed_s()
    step = 0
    for step in range(recipe.steps):
        progress = max(
            step / recipe.steps, (clock.elapsed_s() - start_s) / (clock.budget_s - start_s)
        )
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe.lr, progress)
        idx = rng.integers(0, len(scenes), size=recipe.batch)
        captions = [training_caption(scenes[i], rng, recipe) for i in idx]
        for text in set(captions) - set(contexts):
            with torch.no_grad():
                contexts[text] = text_encoder(tokens([text]))[0][0]
        context = torch.stack([contexts[c] for c in captions])  # (B, 77, 64)
        x0 = latents[torch.from_numpy(idx)]
        noise = torch.randn_like(x0)
        t = torch.randint(0, len(alphas), (len(idx),))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise_sched.get_velocity(x0, noise, t)
        down, mid = controlnet(
            xt, t, context, controlnet_cond=control_tensor(masks[idx]), return_dict=False
        )
        pred = unet(
            xt, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        loss = (pred - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        update_ema([ema], [controlnet], min(recipe.ema, (1 + step) / (10 + step)))
        if step % 50 == 0:
            logger.info("step %d  loss %.4f  t=%.0fs", step, loss.item(), clock.elapsed_s())
        if clock.elapsed_s() - last_save > recipe.save_every_min * 60:
            save(ema, out, info | {"steps": step + 1, "seconds": round(clock.elapsed_s())})
            last_save = clock.elapsed_s()
    save(ema, out, info | {"steps": step + 1, "seconds": round(clock.elapsed_s())})
    return step + 1


def _base_info(base: Path) -> dict | None:
    path = base / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None


def save(controlnet, out: Path, info: dict) -> None:
    target = publish(controlnet, out / "controlnet", info)
    logger.info("saved %s (%s steps)", target, info["steps"])


def load_controlled(controlnet: Path, base: Path):
    """diffusers' own ControlNet pipeline: the base pipeline's folder with the ControlNet's."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    net = ControlNetModel.from_pretrained(controlnet)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base, controlnet=net, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def placement(pipe, scenes, seeds: list[int], scale: float, steps: int = 20, guidance=3.0):
    """Each scene's caption without its position, the scene's silhouette as the control image
    (at `scale`; 0: the control does nothing): the share of pictures with the shape at the
    silhouette's place ("placed") and right in every attribute, position included ("right")."""
    import torch

    from sdfleet.batch.shapes.judge import judge, mismatches

    pairs = [(scene, seed) for scene in scenes for seed in seeds]
    placed = right = 0
    for k in range(0, len(pairs), 8):
        chunk = pairs[k : k + 8]
        with torch.inference_mode():
            images = pipe(
                prompt=[caption(scene, position=False) for scene, _ in chunk],
                image=[silhouette(scene) for scene, _ in chunk],
                controlnet_conditioning_scale=scale,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(seed) for _, seed in chunk],
                height=64,
                width=64,
                output_type="np",
            ).images
        for image, (scene, _) in zip((images * 255).round().astype(np.uint8), chunk):
            read = judge(image)
            placed += read.position == scene.position
            right += not mismatches(read, caption(scene))
    return {"placed": placed / len(pairs), "right": right / len(pairs), "images": len(pairs)}


def main(argv: list[str] | None = None) -> None:
    from sdfleet.batch.shapes import shapes_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, default=None, help="default: builtin:shapes")
    parser.add_argument("--budget-min", type=float, default=ControlRecipe.budget_min)
    parser.add_argument("--steps", type=int, default=ControlRecipe.steps)
    parser.add_argument("--lr", type=float, default=ControlRecipe.lr)
    parser.add_argument("--seed", type=int, default=ControlRecipe.seed)
    parser.add_argument("--scenes", type=int, default=ControlRecipe.scenes)
    parser.add_argument("--evaluate", type=Path, default=None, help="score this ControlNet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.evaluate:
        import torch

        from sdfleet.batch.shapes.evaluate import fixed_scenes

        torch.set_num_threads(2)
        pipe = load_controlled(args.evaluate, args.base or shapes_model_dir())
        for held_out in (False, True):
            scenes = fixed_scenes(16 if held_out else 32, held_out)
            for scale in (1.0, 0.0):
                score = placement(pipe, scenes, [0, 1, 2, 3], scale)
                print(json.dumps({"held_out": held_out, "scale": scale} | score), flush=True)
        return
    recipe = ControlRecipe(
        seed=args.seed,
        budget_min=args.budget_min,
        steps=args.steps,
        lr=args.lr,
        scenes=args.scenes,
    )
    train(args.base or shapes_model_dir(), args.out, recipe)


if __name__ == "__main__":
    main()
