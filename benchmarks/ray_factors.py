"""Where sdfleet's Ray pipeline spends time besides the model: Ray Data's checkpointing and the
block size, one factor at a time, with sdfleet's own replica actor (`batch.actor.GenerateBatch`).

    python benchmarks/ray_factors.py [--rows 2000] [--model builtin:null] [--repeats 2]
                                     [--rows-per-block K]  (only K, with and without checkpoint)

Each variant builds read_parquet -> [repartition(k)] -> map_batches(GenerateBatch) ->
write_parquet, with or without `CheckpointConfig` (what `sdfleet run` sets for resume), and
reports: seconds from the replica actor being up to its first batch (pipeline fill), and the
seconds after that per block (what each extra block costs). docs/PERFORMANCE.md quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sdfleet.batch.actor import GenerateBatch, RunConfig
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.request import RowDefaults


class TimedGenerateBatch(GenerateBatch):
    """sdfleet's actor, appending (start, end) of every call to a file."""

    def __init__(self, config: RunConfig, log_path: str) -> None:
        super().__init__(config)
        self.log_path = log_path

    def __call__(self, batch):
        started = time.time()
        table = super().__call__(batch)
        with open(self.log_path, "a") as log:
            log.write(f"{started} {time.time()}\n")
        return table


def run_variant(
    manifest: Path, out: Path, model: str, rows_per_block: int | None, checkpoint: bool
) -> dict[str, float]:
    import ray.data

    from sdfleet.batch.pool import plan_pool
    from sdfleet.batch.ray_context import alive_nodes, pipeline_settings, ray_data
    from sdfleet.bench.contenders import replicas_startup_s, use_default_data_context
    from sdfleet.jobs.spec import RayOptions

    plan = plan_pool(alive_nodes())
    config = RunConfig(
        model=ModelSpec(model=model),
        out_uri=str(out),
        batch_size=4,
        defaults=RowDefaults(width=64, height=64, num_inference_steps=4),
    )
    use_default_data_context()
    options = RayOptions()  # with the checkpoint: every setting sdfleet's executor makes
    settings = pipeline_settings(
        options.stall_timeout_s, options.min_replicas_timeout_s, str(out / "_checkpoint")
    )
    with ray_data(settings if checkpoint else {}):
        log = out.with_suffix(".calls")
        since = time.time()
        dataset = ray.data.read_parquet(str(manifest))
        if rows_per_block:
            dataset = dataset.repartition(target_num_rows_per_block=rows_per_block)
        dataset = dataset.map_batches(
            TimedGenerateBatch,
            fn_constructor_kwargs={"config": config, "log_path": str(log)},
            batch_size=rows_per_block or 4,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=plan.replicas),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
        )
        dataset.write_parquet(str(out / "results"))
    ended = time.time()
    calls = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    ready = since + (replicas_startup_s(since) or 0.0)
    busy = sum(end - start for start, end in calls)
    return {
        "fill_s": calls[0][0] - ready,
        "after_fill_s": ended - calls[0][0],
        "udf_busy_s": busy,
        "calls": len(calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--model", default="builtin:null")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--rows-per-block", type=int, help="only this block size, with and without checkpoint"
    )
    args = parser.parse_args()

    from sdfleet.bench.report import format_table
    from sdfleet.bench.workload import start_ray, write_bench_manifest

    root = Path(tempfile.mkdtemp(prefix="ray-factors-"))
    manifest = write_bench_manifest(root / "manifest.parquet", args.rows)
    start_ray()
    variants = [(None, False), (16, False), (None, True), (16, True), (256, True)]
    if args.rows_per_block:
        variants = [(args.rows_per_block, False), (args.rows_per_block, True)]
    results: dict[tuple, list[dict[str, float]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for rows_per_block, checkpoint in variants:
            out = root / f"{repeat}-{rows_per_block}-{checkpoint}"
            result = run_variant(manifest, out, args.model, rows_per_block, checkpoint)
            results[(rows_per_block, checkpoint)].append(result)
    table = []
    for (rows_per_block, checkpoint), runs in results.items():
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        per_call_ms = 1000 * (median["after_fill_s"] - median["udf_busy_s"]) / median["calls"]
        table.append(
            [
                rows_per_block or "one block",
                checkpoint,
                median["fill_s"],
                median["after_fill_s"],
                median["udf_busy_s"],
                int(median["calls"]),
                per_call_ms,
            ]
        )
    headers = [
        "rows per block",
        "checkpoint",
        "fill s",
        "after fill s",
        "in the actor s",
        "actor calls",
        "Ray ms per call",
    ]
    print(f"{args.model}, {args.rows} rows, medians of {args.repeats}")
    print(format_table(headers, table))


if __name__ == "__main__":
    main()
