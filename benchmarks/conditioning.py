"""ControlNet and hires-fix cost per image against the plain call, side by side in one run.

Run: `python -m sdfleet.bench.conditioning --rows 16 --repeats 3 --out out/bench/conditioning`

Every contender generates the same txt2img rows (prompts, seeds, size, steps) on its own
`builtin:tiny` replica, loaded once before timing: `plain` (no conditioning), `controlnet_1` and
`controlnet_2` (one and two tiny ControlNets, `batch.tiny_conditioning.tiny_controlnet_dir`, the
control image from a column), `hires_latent` (x2, A1111's "Latent", second pass at the same
steps and denoise 0.7) and `hires_model` (x2 through the tiny ESRGAN file, tiled). A warm-up block
per contender derives its pipelines first. The contenders' order rotates every repeat; the
figure is each contender's seconds per image over the plain call's in the same repeat.
"""

from __future__ import annotations

import argparse
import io
import time
from typing import Any

CONTENDERS = ("plain", "controlnet_1", "controlnet_2", "hires_latent", "hires_model")


def control_png(size: int, seed: int) -> bytes:
    """A blocky layout (edges) as PNG bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    array = rng.integers(40, 80, (size, size, 3), dtype=np.uint8)
    array[size // 4 : size // 2, size // 8 : 3 * size // 4] = (220, 190, 30)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def contender_setup(name: str) -> tuple[Any, Any]:
    """(ModelSpec, RowDefaults extras) of a contender."""
    from sdfleet.batch.controlnets import ControlNetUse
    from sdfleet.batch.hires import HiresFix
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.tiny_conditioning import tiny_controlnet_dir, tiny_upscaler_file

    if name.startswith("controlnet_"):
        count = int(name.removeprefix("controlnet_"))
        columns = ("control_image", "control_depth")
        units = tuple(
            ControlNetUse(str(tiny_controlnet_dir(k)), image_column=columns[k])
            for k in range(count)
        )
        return ModelSpec(controlnets=units), {"controlnets": units}
    if name == "hires_latent":
        hires = HiresFix(upscaler="latent", scale=2.0)
        return ModelSpec(hires=hires), {"hires": hires}
    if name == "hires_model":
        hires = HiresFix(upscaler=str(tiny_upscaler_file(2)), scale=2.0, tile=64)
        return ModelSpec(hires=hires), {"hires": hires}
    return ModelSpec(), {}


def requests_for(rows: int, defaults: Any, size: int) -> list[Any]:
    from sdfleet.batch.request import expand_row

    made = []
    for i in range(rows):
        row = {"id": f"r{i}", "prompt": f"a product photo, variant {i % 7}", "seed": 1000 + i}
        if defaults.controlnets:
            row |= {
                "control_image": control_png(size, i),
                "control_depth": control_png(size, 50 + i),
            }
        made.extend(expand_row(row, defaults, 0))
    return made


def time_blocks(replica: Any, requests: list[Any], block: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(requests), block):
        results = replica.generate(requests[first : first + block])
        failed = [r.error for r in results if r.error is not None]
        if failed:
            raise RuntimeError(f"benchmark rows failed: {failed[0]}")
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace
    from pathlib import Path

    from sdfleet.batch.replica import Replica
    from sdfleet.batch.request import RowDefaults
    from sdfleet.bench.report import machine_info, spread, write_report

    base = RowDefaults(num_inference_steps=args.steps, width=args.size, height=args.size)
    replicas, work = {}, {}
    for name in CONTENDERS:
        spec, extras = contender_setup(name)
        defaults = replace(base, **extras)
        replicas[name] = Replica(spec, batch_size=args.batch_size, cpu_threads=args.cpu_threads)
        work[name] = requests_for(args.rows, defaults, args.size)
        time_blocks(replicas[name], work[name][: args.batch_size], args.block)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for repeat in range(args.repeats):
        shift = repeat % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            samples[name].append(time_blocks(replicas[name], work[name], args.block) / args.rows)
    summary = {
        name: {
            "seconds_per_image": spread(samples[name], 4),
            "vs_plain": spread([s / p for s, p in zip(samples[name], samples["plain"])]),
        }
        for name in CONTENDERS
    }
    report = {
        "machine": machine_info(replicas["plain"].spec),
        "options": vars(args),
        "samples": samples,
        "summary": summary,
    }
    write_report(Path(args.out) / "conditioning.json", report, quiet=True)
    print(table(summary, args))
    return report


def table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"{args.rows} rows, {args.size} px, {args.steps} steps, batch {args.batch_size}, "
        f"{args.repeats} repeats",
        f"{'contender':<14} {'s/image (median, min-max)':<28} vs plain (median, min-max)",
    ]
    for name in CONTENDERS:
        sec, ratio = summary[name]["seconds_per_image"], summary[name]["vs_plain"]
        left = f"{sec['median']} ({sec['min']}-{sec['max']})"
        lines.append(f"{name:<14} {left:<28} {ratio['median']} ({ratio['min']}-{ratio['max']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sdfleet.bench.workload import replica_bench_parser

    parser = replica_bench_parser(
        __doc__.splitlines()[0], rows=16, block=8, repeats=3, out="out/bench/conditioning"
    )
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
