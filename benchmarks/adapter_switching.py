"""Per-row LoRA switching against one fixed LoRA, side by side on one replica.

Run: `python -m sdfleet.bench.adapter_switching --rows 96 --repeats 5 --out out/bench/adapters`

Both contenders generate the same rows (prompts, seeds, size, steps) on the same loaded replica,
in blocks of `--block` rows (one `Replica.generate` call per block, as an executor hands rows
over). `fixed`: every row has LoRA A at 0.8. `per_row`: row i has adapter set i mod 4 of
{A 0.8, B 0.8, A 0.5, B 0.5} (one LoRA of the same rank each, so every row costs the same
compute as in `fixed`), rows interleaved, so every block holds all four sets; the replica
groups rows by adapter set, so a block costs four switches rather than one per row. A warm-up
block loads both files before timing. The order of the contenders alternates every
repeat; images/s is over the timed blocks only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

CONTENDERS = ("fixed", "per_row")


def lora_files(folder: Path) -> tuple[Any, Any]:
    """Two LoRAs for builtin:tiny (seeded), resolved as a row would name them."""
    from sdfleet.batch.adapter_files import file_hash
    from sdfleet.batch.adapters import LoraUse
    from sdfleet.batch.tiny import tiny_model_dir
    from sdfleet.batch.tiny_adapters import make_tiny_lora, save_tensors

    uses = []
    for name, seed in (("a", 1), ("b", 2)):
        path = save_tensors(make_tiny_lora(tiny_model_dir(), seed), folder / f"{name}.safetensors")
        uses.append(LoraUse(name, str(path), file_hash(path)))
    return uses[0], uses[1]


def adapter_sets(a: Any, b: Any) -> dict[str, list[tuple]]:
    from dataclasses import replace

    def at(use: Any, weight: float) -> Any:
        return replace(use, te_weight=weight, unet_weight=weight)

    per_row = [(at(a, 0.8),), (at(b, 0.8),), (at(a, 0.5),), (at(b, 0.5),)]
    return {"fixed": [(at(a, 0.8),)], "per_row": per_row}


def requests_for(rows: int, sets: list[tuple], size: int, steps: int) -> list[Any]:
    from sdfleet.batch.request import GenRequest

    return [
        GenRequest(
            row_id=f"r{i}",
            variant=0,
            output_name=f"r{i}",
            prompt=f"a product photo, variant {i % 7}",
            negative_prompt="blurry",
            seed=1000 + i,
            num_inference_steps=steps,
            guidance_scale=5.0,
            width=size,
            height=size,
            scheduler=None,
            loras=sets[i % len(sets)],
        )
        for i in range(rows)
    ]


def time_blocks(replica: Any, requests: list[Any], block: int) -> tuple[float, int]:
    """Seconds to generate every block, and the number of adapter switches made."""
    switches_before = replica.sampler.adapters.switches
    start = time.perf_counter()
    for first in range(0, len(requests), block):
        results = replica.generate(requests[first : first + block])
        failed = [r.error for r in results if r.error is not None]
        if failed:
            raise RuntimeError(f"benchmark rows failed: {failed[0]}")
    return time.perf_counter() - start, replica.sampler.adapters.switches - switches_before


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.replica import Replica
    from sdfleet.bench.report import machine_info, spread, write_report

    folder = Path(tempfile.mkdtemp(prefix="adapter-bench-"))
    sets = adapter_sets(*lora_files(folder))
    spec = ModelSpec(model="builtin:tiny")
    replica = Replica(spec, batch_size=args.batch_size, cpu_threads=args.cpu_threads)
    work = {name: requests_for(args.rows, sets[name], args.size, args.steps) for name in sets}
    warm = requests_for(len(sets["per_row"]) * args.batch_size, sets["per_row"], args.size, 1)
    time_blocks(replica, warm, args.block)  # loads both files, derives the pipelines
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for repeat in range(args.repeats):
        order = CONTENDERS if repeat % 2 == 0 else CONTENDERS[::-1]
        for name in order:
            seconds, switches = time_blocks(replica, work[name], args.block)
            samples[name].append({"seconds": seconds, "switches": switches})
    summary = {
        name: {
            "images_per_s": spread([args.rows / s["seconds"] for s in runs]),
            "switches_per_run": runs[0]["switches"],
        }
        for name, runs in samples.items()
    }
    ratios = [f["seconds"] / p["seconds"] for f, p in zip(samples["fixed"], samples["per_row"])]
    summary["per_row_vs_fixed_throughput"] = spread(ratios)
    report = {
        "machine": machine_info(spec),
        "options": vars(args),
        "files_loaded": replica.sampler.adapters.loads,
        "samples": samples,
        "summary": summary,
    }
    write_report(Path(args.out) / "adapters.json", report, quiet=True)
    print(table(summary, args))
    return report


def table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"{args.rows} rows, {args.size} px, {args.steps} steps, batch {args.batch_size}, "
        f"blocks of {args.block}, {args.repeats} repeats",
        f"{'contender':<10} {'images/s (median, min-max)':<30} switches/run",
    ]
    for name in CONTENDERS:
        ips = summary[name]["images_per_s"]
        figure = f"{ips['median']} ({ips['min']}-{ips['max']})"
        lines.append(f"{name:<10} {figure:<30} {summary[name]['switches_per_run']}")
    ratio = summary["per_row_vs_fixed_throughput"]
    lines.append(f"per_row / fixed throughput: {ratio['median']} ({ratio['min']}-{ratio['max']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sdfleet.bench.workload import replica_bench_parser

    parser = replica_bench_parser(
        __doc__.splitlines()[0], rows=96, block=32, repeats=5, out="out/bench/adapters"
    )
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
