"""Prompt adherence of a shapes pipeline over a fixed prompt x seed set.

    python -m sdfleet.batch.shapes.evaluate FOLDER [--steps 20] [--guidance 7.5] [--scheduler N]

The fixed set: `n_prompts` full captions of training pairs and of held-out pairs, drawn from a
fixed seed, each rendered with `seeds` seeds. The pipeline's own call does the sampling, so the
score measures what a job with the same settings gets.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from sdfleet.batch.shapes.judge import ATTRIBUTES, adherence, judge, mismatches
from sdfleet.batch.shapes.world import Scene, all_scenes, caption

logger = logging.getLogger(__name__)
SET_SEED = 1414


def fixed_scenes(n_scenes: int, held_out: bool) -> list[Scene]:
    """`n_scenes` scenes of training (or held-out) pairs, the same every time."""
    scenes = all_scenes(held_out=held_out)
    rng = np.random.default_rng(SET_SEED + int(held_out))
    return [scenes[i] for i in rng.choice(len(scenes), size=n_scenes, replace=False)]


def fixed_prompts(n_prompts: int, held_out: bool, position: bool = True) -> list[str]:
    """The captions of `fixed_scenes`; `position` False leaves the position out of them."""
    return [caption(scene, position=position) for scene in fixed_scenes(n_prompts, held_out)]


@dataclass(frozen=True)
class Score:
    adherence: float
    images: int
    seconds_per_image: float
    failures: tuple[str, ...]  # 'prompt -> mismatch; mismatch'
    attribute_errors: dict[str, int]  # how many images got each attribute wrong


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch=8):
    """(N, 64, 64, 3) uint8 for every prompt x seed, prompt-major."""
    import torch

    pairs = [(p, s) for p in prompts for s in seeds]
    out = []
    for k in range(0, len(pairs), batch):
        chunk = pairs[k : k + batch]
        with torch.inference_mode():
            images = pipe(
                prompt=[p for p, _ in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                height=64,
                width=64,
                output_type="np",
            ).images
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out), [p for p, _ in pairs]


def score(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> Score:
    start = time.perf_counter()
    images, labels = generate(pipe, prompts, seeds, steps, guidance)
    per_image = (time.perf_counter() - start) / len(labels)
    failures, errors = [], dict.fromkeys(ATTRIBUTES, 0)
    for image, prompt in zip(images, labels):
        problems = mismatches(judge(image), prompt)
        for problem in problems:
            errors[problem.split(":")[0]] += 1
        if problems:
            failures.append(f"{prompt} -> {'; '.join(problems)}")
    return Score(adherence(images, labels), len(labels), per_image, tuple(failures), errors)


def grid(images: np.ndarray, columns: int, scale: int = 2):
    """(N, 64, 64, 3) uint8 -> one PIL picture, `columns` wide, each tile `scale`x (nearest)."""
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // columns)
    sheet = Image.new("RGB", (columns * w * scale, rows * h * scale), (128, 128, 128))
    for k, image in enumerate(images):
        tile = Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        sheet.paste(tile, ((k % columns) * w * scale, (k // columns) * h * scale))
    return sheet


def load(folder: str, scheduler: str | None = None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    if scheduler:
        from sdfleet.batch.schedulers import make_scheduler

        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SWEEP = [  # (held_out, position, steps, guidance, scheduler): the figures docs/SHAPES.md reports
    (False, True, 20, 7.5, None),  # a job's default steps and guidance
    (True, True, 20, 7.5, None),
    (False, True, 20, 1.0, None),  # no guidance: the conditional branch alone
    (True, True, 20, 1.0, None),
    (False, True, 20, 2.0, None),
    (False, True, 20, 3.0, None),  # the examples' guidance
    (True, True, 20, 3.0, None),
    (False, True, 20, 5.0, None),
    (False, False, 20, 3.0, None),
    (False, True, 8, 1.0, None),
    (False, True, 8, 3.0, None),
    (False, True, 4, 1.0, None),
    (False, True, 4, 3.0, None),
    (False, True, 20, 3.0, "euler_a"),
    (False, True, 20, 3.0, "dpmpp_2m"),
    (False, True, 8, 3.0, "dpmpp_2m"),
]


def sweep(folder: str, n_prompts: int, seeds: list[int]) -> list[dict]:
    """Adherence for every `SWEEP` setting (one line of JSON each, logged as it comes)."""
    rows, pipes = [], {}
    for held_out, position, steps, guidance, scheduler in SWEEP:
        if scheduler not in pipes:
            pipes[scheduler] = load(folder, scheduler)
        prompts = fixed_prompts(n_prompts // 2 if held_out else n_prompts, held_out, position)
        result = score(pipes[scheduler], prompts, seeds, steps, guidance)
        row = dict(held_out=held_out, position=position, steps=steps, guidance=guidance)
        row["scheduler"] = scheduler
        rows.append(row | asdict(result))
        logger.info("%s", json.dumps(row | {"adherence": result.adherence}))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--held-out", action="store_true")
    parser.add_argument("--sweep", default=None, help="run SWEEP, write JSON Lines here")
    parser.add_argument("--grid", default=None, help="also write the pictures as one PNG here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    prompts = fixed_prompts(args.prompts, args.held_out)
    seeds = list(range(args.seeds))
    if args.sweep:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        rows = sweep(args.folder, args.prompts, seeds)
        with open(args.sweep, "w") as out:
            out.writelines(json.dumps(r) + "\n" for r in rows)
        return
    if args.grid:
        pipe = load(args.folder, args.scheduler)
        images, _ = generate(pipe, prompts, seeds, args.steps, args.guidance)
        grid(images, columns=8).save(args.grid)
        return
    pipe = load(args.folder, args.scheduler)
    result = score(pipe, prompts, seeds, args.steps, args.guidance)
    print(json.dumps(vars(args) | asdict(result), indent=1))


if __name__ == "__main__":
    main()
