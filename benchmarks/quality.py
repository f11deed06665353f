"""`sdfleet bench --quality`: prompt adherence beside images/s, so a speed setting is judged at
equal quality.

The model (default `builtin:shapes`, or any diffusers folder trained on the same world) is
loaded once through sdfleet's own path (`batch.models.load_pipelines`); each setting of
`batch.shapes.evaluate.SWEEP` (steps, guidance, scheduler by the name a job writes, through
`batch.sampler.Sampler.pipeline`) renders the fixed prompt x seed set, and the judge
(`batch.shapes.judge`) reads every picture. Adherence = the share of pictures whose every
attribute named in the prompt is what the judge reads (docs/SHAPES.md); images/s is the same
renders' rate. `--cpu-threads` sets torch's threads.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from sdfleet.bench.options import BenchOptions
from sdfleet.bench.report import format_table, machine_info, write_report

logger = logging.getLogger(__name__)

PROMPTS = 32  # training-pair captions in the fixed set (held-out pairs: half as many)
SEEDS = list(range(8))  # 256 + 128 pictures a setting: one picture is 0.4 (0.8) points


def run_quality_bench(
    options: BenchOptions,
    sweep: list[tuple] | None = None,
    prompts: int = PROMPTS,
    seeds: list[int] = SEEDS,
) -> dict[str, Any]:
    """Every `sweep` setting (default `SWEEP`) on the fixed set of `prompts` training-pair
    captions (held-out: half as many) x `seeds`; prints the table, writes OUT/quality.json,
    returns the report."""
    import torch

    from sdfleet.batch.models import load_pipelines
    from sdfleet.batch.sampler import Sampler
    from sdfleet.batch.shapes.evaluate import SWEEP, fixed_prompts, score

    if options.cpu_threads:
        torch.set_num_threads(options.cpu_threads)
    sampler = Sampler(load_pipelines(options.spec))
    rows = []
    for held_out, position, steps, guidance, scheduler in sweep or SWEEP:
        pipe = sampler.pipeline("txt2img", scheduler)
        chosen = fixed_prompts(prompts // 2 if held_out else prompts, held_out, position)
        result = score(pipe, chosen, seeds, steps, guidance)
        setting = dict(held_out=held_out, position=position, steps=steps, guidance=guidance)
        rows.append(setting | {"scheduler": scheduler or "model's own"} | asdict(result))
        logger.info("%s: adherence %.3f", setting, result.adherence)
    report = {
        "mode": "quality",
        "machine": machine_info(options.spec),
        "options": options.record(),
        "seeds": seeds,
        "settings": rows,
    }
    print(quality_table(rows))
    write_report(options.out / "quality.json", report)
    return report


def quality_table(rows: list[dict[str, Any]]) -> str:
    headers = ["prompts", "position", "steps", "guidance", "scheduler", "adherence", "images/s"]
    return format_table(
        headers,
        [
            [
                "held-out pairs" if row["held_out"] else "training pairs",
                "yes" if row["position"] else "no",
                row["steps"],
                row["guidance"],
                row["scheduler"],
                f"{row['adherence']:.0%} of {row['images']}",
                1 / row["seconds_per_image"],
            ]
            for row in rows
        ],
    )
