"""`sdfleet bench` (throughput, the default mode): the same manifest rows (prompts, seeds, size,
steps) and model through each contender of `bench.contenders` (a plain diffusers loop, batched,
plain Ray Data, sdfleet local, sdfleet on Ray), in one run.

Each repeat runs every contender once, in an order rotated by one per repeat, so machine drift
hits all of them alike. Reported: images/s (model start-up excluded, see `bench.contenders`),
its min/median/max over repeats, and each contender's ratio to (a) taken repeat by repeat.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from sdfleet.bench.contenders import CONTENDER_NAMES, CONTENDERS, sdfleet_pool_plan
from sdfleet.bench.options import BenchOptions
from sdfleet.bench.report import fmt_spread, format_table, machine_info, spread, write_report
from sdfleet.bench.workload import (
    BenchError,
    Sample,
    Workload,
    rotated,
    rows_needed,
    start_ray,
    write_bench_manifest,
)

logger = logging.getLogger(__name__)


def run_throughput(settings: BenchOptions) -> dict[str, Any]:
    """Every contender on the same rows, `repeats` rounds in rotated order; table + JSON."""
    from sdfleet.batch.models import resolve_model_source

    # 1. the rows, and everything that is started once for all repeats
    resolve_model_source(settings.spec)
    settings.out.mkdir(parents=True, exist_ok=True)
    manifest = write_bench_manifest(settings.out / "manifest.parquet", settings.rows[0])
    work = Workload(
        settings.spec,
        manifest,
        settings.steps,
        settings.size_px,
        settings.guidance_scale,
        settings.batch_size,
        settings.rows_per_block,
        settings.cpu_threads,
    )
    on_ray = bool({"c", "ray"} & set(settings.contenders))
    ray_start_s = start_ray() if on_ray else None
    ray_replicas = sdfleet_pool_plan().replicas if on_ray else 1
    report = {
        "mode": "throughput",
        "machine": machine_info(settings.spec),
        "settings": settings.record(),
        "ray_start_s": ray_start_s,
        "warnings": too_few_rows(work, settings.rows[0], settings.contenders, ray_replicas),
    }
    for warning in report["warnings"]:
        print(f"warning: {warning}", flush=True)
    # 2. the rounds; the report is rewritten after every sample (a stopped run keeps them)
    samples: list[Sample] = []
    for repeat in range(settings.repeats):
        for name in rotated(settings.contenders, repeat):
            samples.append(run_sample(work, settings, name, repeat))
            if warning := fill_warning(samples[-1]):
                print(f"warning: {warning}", flush=True)
                report["warnings"].append(warning)
            report |= {
                "contenders": summarize_samples(samples, settings.contenders),
                "pairs": pair_ratios(samples),
                "samples": [sample_record(s) for s in samples],
            }
            write_report(settings.out / "throughput.json", report, quiet=True)
    # 3. the table
    write_report(settings.out / "throughput.json", report)
    print(throughput_table(report))
    return report


def run_sample(work: Workload, settings: BenchOptions, name: str, repeat: int) -> Sample:
    """One contender, one repeat, in a fresh folder (so nothing is skipped as already done)."""
    folder = settings.out / "runs" / f"{repeat}-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    load_before = os.getloadavg()[0]
    sample = CONTENDERS[name](work, folder, repeat)
    sample = replace(sample, load_average=(load_before, os.getloadavg()[0]))
    logger.info("%s repeat %d: %.2f images/s", name, repeat, sample.images_per_s)
    print(
        f"  repeat {repeat} {name:>5}: {sample.images_per_s:.3g} images/s, "
        f"fixed {sample.fixed_s:.3g} s, wall {sample.wall_s:.3g} s",
        flush=True,
    )
    if sample.images != settings.rows[0]:
        raise BenchError(f"{name} made {sample.images} images, not {settings.rows[0]}")
    if not settings.keep_outputs:
        shutil.rmtree(folder, ignore_errors=True)
    return sample


def too_few_rows(
    work: Workload, rows: int, names: Sequence[str], ray_replicas: int = 1
) -> list[str]:
    """A warning per contender whose rows are too few for a steady figure (`rows_needed`):
    its last unit of work per replica (a call; a Ray block for sdfleet on Ray) would be more
    than a tenth of the run. `ray_replicas`: the pool of the Ray contenders."""
    from sdfleet.jobs.spec import RayOptions

    replicas = ray_replicas
    units = {
        "a": (1, 1, "row per call"),
        "b": (1, work.batch_size, "rows per call"),
        "c": (replicas, work.batch_size, "rows per call"),
        "local": (1, work.batch_size, "rows per call"),
        "ray": (replicas, work.rows_per_block or RayOptions().rows_per_block, "rows per block"),
    }
    warnings = []
    for name in names:
        count, unit, what = units[name]
        needed = rows_needed(count, unit)
        if rows < needed:
            warnings.append(
                f"{name}: {rows} rows is fewer than a steady figure needs ({needed}: 10 x "
                f"{count} replica(s) x {unit} {what}); its images/s includes more fill and "
                f"tail than steady work. Use --rows {needed} or more."
            )
    return warnings


def fill_warning(sample: Sample) -> str | None:
    """A warning when the time from the first replica ready to the first image is more than
    a tenth of the steady span: that figure is mostly the pipeline filling."""
    if sample.fill_s is None or not sample.images_per_s > 0:
        return None
    span = sample.images / sample.images_per_s
    if sample.fill_s <= 0.1 * span:
        return None
    return (
        f"{sample.contender} repeat {sample.repeat}: {sample.fill_s:.3g} s from ready to the "
        f"first image, {sample.fill_s / span:.0%} of its {span:.3g} s steady span; more rows "
        "would make its images/s steadier"
    )


# ---------------------------------------------------------------------------- statistics


# The comparisons the targets name: sdfleet local vs the loops, sdfleet on Ray vs plain Ray.
PAIRS = (("local", "a"), ("local", "b"), ("ray", "c"))


def paired_ratio(samples: list[Sample], name: str, baseline: str) -> dict[str, float] | None:
    """images/s of `name` over `baseline`, repeat by repeat (the two ran side by side)."""
    base = {s.repeat: s.images_per_s for s in samples if s.contender == baseline}
    ratios = [
        s.images_per_s / base[s.repeat] for s in samples if s.contender == name and s.repeat in base
    ]
    return spread(ratios) if ratios else None


def summarize_samples(samples: list[Sample], names: Sequence[str]) -> dict[str, Any]:
    """Per contender: spreads over repeats, and the ratio to (a) taken repeat by repeat."""
    summary: dict[str, Any] = {}
    for name in names:
        mine = [s for s in samples if s.contender == name]
        if not mine:  # not run yet: the report is rewritten while a series is under way
            continue
        startups = [s.startup_s for s in mine if s.startup_s is not None]
        summary[name] = {
            "label": CONTENDER_NAMES[name],
            "images_per_s": spread([s.images_per_s for s in mine]),
            "ratio_to_a": paired_ratio(samples, name, "a"),
            "fixed_s": spread([s.fixed_s for s in mine]),
            "startup_s": spread(startups) if startups else None,
            "end_to_end_images_per_s": spread([s.end_to_end_images_per_s for s in mine]),
            "wall_s": spread([s.wall_s for s in mine]),
        }
        cpu = [s.cpu_ms_per_image for s in mine if s.cpu_ms_per_image is not None]
        summary[name]["cpu_ms_per_image"] = spread(cpu) if cpu else None
    return summary


def pair_ratios(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """The target comparisons that this run has both sides of, e.g. {"ray/c": spread}."""
    found = {f"{a}/{b}": paired_ratio(samples, a, b) for a, b in PAIRS}
    return {key: value for key, value in found.items() if value is not None}


def sample_record(sample: Sample) -> dict[str, Any]:
    return asdict(sample) | {
        "fixed_s": round(sample.fixed_s, 3),
        "end_to_end_images_per_s": round(sample.end_to_end_images_per_s, 3),
        "cpu_ms_per_image": sample.cpu_ms_per_image,
    }


def throughput_table(report: dict[str, Any]) -> str:
    settings = report["settings"]
    rows = [
        [
            entry["label"],
            fmt_spread(entry["images_per_s"]),
            fmt_spread(entry["ratio_to_a"]),
            fmt_spread(entry["fixed_s"]),
            fmt_spread(entry["startup_s"]),
            fmt_spread(entry["end_to_end_images_per_s"]),
            fmt_spread(entry["cpu_ms_per_image"]),
        ]
        for entry in report["contenders"].values()
    ]
    title = (
        f"{settings['model']}, {settings['rows'][0]} rows, {settings['size_px']} px, "
        f"{settings['steps']} steps, batch {settings['batch_size']}, "
        f"{settings['repeats']} repeats; median (min-max)"
    )
    headers = [
        "contender",
        "images/s",
        "ratio to (a)",
        "fixed s",
        "model ready s",
        "images/s end to end",
        "CPU ms/image",
    ]
    pairs = [f"{key}: {fmt_spread(value)}" for key, value in report["pairs"].items()]
    warnings = [f"warning: {w}" for w in report.get("warnings", ())]
    return "\n".join([title, format_table(headers, rows), *pairs, *warnings])
