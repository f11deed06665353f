"""What every contender of `sdfleet bench` makes and how a run is measured: the workload, the
bench manifest, one sample per contender and repeat, and the steady rate.

`Sample.images_per_s` is the least-squares slope of images written against time
(`steady_rate`), the same rule for every contender, so model start-up falls out of it.
"""

from __future__ import annotations

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
    images_per_s: float  # steady rate: slope of images done against time (`steady_rate`)
    cpu_s: float | None = None  # this process's CPU time for the run (in-process contenders)
    load_average: tuple[float, float] | None = None  # 1-min load average before, after

    @property
    def fixed_s(self) -> float:
        """What the run costs besides `images / images_per_s`: load, start-up, fill, tail."""
        return self.wall_s - self.images / self.images_per_s

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
    cpu_s: float | None = None,
) -> Sample:
    """A Sample from the images a run wrote."""
    times = image_times(images_dir)
    return Sample(contender, repeat, len(times), wall_s, startup_s, steady_rate(times), cpu_s)


def image_times(folder: Path) -> list[float]:
    """When each image was written (file modification times, seconds), sorted."""
    if not folder.is_dir():
        return []
    return sorted(
        entry.stat().st_mtime_ns / 1e9
        for entry in os.scandir(folder)
        if entry.name.endswith(".png")
    )


def steady_rate(times: list[float]) -> float:
    """Images/s once running: the least-squares slope of images written against time.

    The same rule for every contender, whatever writes its images in groups (a row, a batch,
    a chunk, a Ray block): model load, start-up and the tail fall into the intercept, not the
    slope. Needs several groups (rows >= 4 x the largest group); with fewer it is the plain
    images / (last - first) estimate and less exact.
    """
    import numpy as np

    if len(times) < 2 or times[-1] == times[0]:
        return float("nan")
    t = np.asarray(times) - times[0]
    done = np.arange(1, len(times) + 1, dtype=float)
    slope = float(np.polyfit(t, done, 1)[0])
    return slope if slope > 0 else (len(times) - 1) / t[-1]


class BenchError(SdfleetError):
    """A contender did not make every image (the comparison would be meaningless); the CLI
    prints it as a message, like every sdfleet error."""


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
