"""What every contender of `sdfleet bench` makes and how a run is measured: the workload, the
bench manifest, one sample per contender and repeat, and the steady rate.

`Sample.images_per_s` is images over the seconds from the first replica being ready to the
last image written (`steady_rate`), the same rule for every contender: model load and start-up
fall outside it, and since each image's file is written when its pipeline call returns, no
image is counted before it was made, so it cannot report a rate faster than images were made.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfleet.batch.errors import SdfleetError
from sdfleet.batch.models import ModelSpec

PROMPT_SUBJECTS = (
    "a red bicycle",
    "a lighthouse at dusk",
    "a bowl of ramen",
    "a snowy forest",
    "an old typewriter",
    "a city street in the rain",
    "a tabby cat",
    "a sailboat",
)
PROMPT_STYLES = ("watercolor", "studio photo", "oil painting", "pixel art")


@dataclass(frozen=True)
class Workload:
    """What every contender makes: the manifest's rows with these generation settings."""

    spec: ModelSpec
    manifest: Path  # Parquet: id, prompt, seed
    steps: int
    size_px: int
    guidance_scale: float
    batch_size: int
    rows_per_block: int | None = None  # sdfleet's ray executor: None keeps the job default
    cpu_threads: int | None = None  # CPU: torch threads of every contender (None: all cores)

    def call_kwargs(self) -> dict[str, Any]:
        return {
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "width": self.size_px,
            "height": self.size_px,
        }


@dataclass(frozen=True)
class Sample:
    """One contender, one repeat."""

    contender: str
    repeat: int
    images: int
    wall_s: float  # the whole run, model load and start-up included
    startup_s: float | None  # until the model was ready (Ray: the last replica actor up)
    images_per_s: float  # steady rate: images / (last written - first replica ready)
    cpu_s: float | None = None  # this process's CPU time for the run (in-process contenders)
    load_average: tuple[float, float] | None = None  # 1-min load average before, after
    fill_s: float | None = None  # from the first replica ready to the first image written

    @property
    def fixed_s(self) -> float:
        """What the run costs besides `images / images_per_s`: start-up and model load before
        the first replica is ready, the results and summary after the last image. The steady
        span lies inside the wall time, so this is >= 0 but for the file clock's coarseness
        (`FILE_CLOCK_S`), which is not shown as a negative time."""
        return max(0.0, self.wall_s - self.images / self.images_per_s)

    @property
    def end_to_end_images_per_s(self) -> float:
        return self.images / self.wall_s

    @property
    def cpu_ms_per_image(self) -> float | None:
        """CPU time per image, model load included: unlike wall time, other processes on the
        machine barely change it (with one torch thread, nothing spins while it waits)."""
        return None if self.cpu_s is None else 1000 * self.cpu_s / self.images


def measure(
    contender: str,
    repeat: int,
    images_dir: Path,
    wall_s: float,
    startup_s: float | None,
    ready_at: float | None,
    cpu_s: float | None = None,
) -> Sample:
    """A Sample from the images a run wrote; `ready_at`: time.time() when the first replica
    had its model (None when unknown: then the rate is end to end)."""
    times = image_times(images_dir)
    if ready_at is None:
        rate = len(times) / wall_s if times else float("nan")
        return Sample(contender, repeat, len(times), wall_s, startup_s, rate, cpu_s)
    rate = steady_rate(times, ready_at)
    fill = times[0] - ready_at if times else None
    return Sample(contender, repeat, len(times), wall_s, startup_s, rate, cpu_s, fill_s=fill)


def image_times(folder: Path) -> list[float]:
    """When each image was written (file modification times, seconds), sorted."""
    if not folder.is_dir():
        return []
    return sorted(
        entry.stat().st_mtime_ns / 1e9
        for entry in os.scandir(folder)
        if entry.name.endswith(".png")
    )


# File times come from the kernel's coarse clock, up to one tick (a few ms) behind time.time():
# the span is taken this much longer, so the rate is never overstated by it.
FILE_CLOCK_S = 0.01


def steady_rate(times: list[float], ready_at: float) -> float:
    """Images/s once running: images / seconds from `ready_at` (the first replica has its
    model) to the last image written (`times`: each image's own finish time, sorted).

    The same rule for every contender. Every image counted was made inside the span, so the
    figure cannot be faster than images were made; what the span holds besides steady work
    is the pipeline's fill (ready -> first image, `Sample.fill_s`) and a tail where fewer
    replicas have work, which enough rows make small (`rows_needed`)."""
    if not times:
        return float("nan")
    return len(times) / (times[-1] + FILE_CLOCK_S - ready_at)


def rows_needed(replicas: int, rows_per_unit: int, share: float = 0.1) -> int:
    """Rows for a steady figure: the last unit of work (a call, or a Ray block) of each
    replica, which may run while others sit idle, at most `share` of the run."""
    return math.ceil(replicas * rows_per_unit / share)


class BenchError(SdfleetError):
    """A contender did not make every image (the comparison would be meaningless); the CLI
    prints it as a message, like every sdfleet error."""


def replica_bench_parser(
    description: str, rows: int, block: int, repeats: int, out: str
) -> argparse.ArgumentParser:
    """The flags of the benchmarks that drive one loaded replica in this process (LoRA
    switching, conditioning): rows, rows per generate call, batch, size, steps, repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--block", type=int, default=block, help="rows per generate call")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--cpu-threads", type=int, default=None)
    parser.add_argument("--out", default=out)
    return parser


def rotated(names: Sequence[str], repeat: int) -> list[str]:
    """Repeat r starts with the r-th contender: each runs early and late equally often."""
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


def write_bench_manifest(path: Path, rows: int) -> Path:
    """`rows` prompts (subject x style), explicit seeds; written in 64k-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 65536):
            index = range(start, min(rows, start + 65536))
            writer.write_table(
                pa.table(
                    {
                        "id": [f"row-{i:07d}" for i in index],
                        "prompt": [
                            f"{PROMPT_SUBJECTS[i % len(PROMPT_SUBJECTS)]}, "
                            f"{PROMPT_STYLES[i // len(PROMPT_SUBJECTS) % len(PROMPT_STYLES)]}"
                            for i in index
                        ],
                        "seed": [1000 + i for i in index],
                    },
                    schema=schema,
                )
            )
    return path


def start_ray() -> float:
    """Start (or join) Ray once, before any timing, the way `sdfleet run` does."""
    from sdfleet.batch.ray_context import connect

    started = time.perf_counter()
    connect(None)
    return round(time.perf_counter() - started, 3)
