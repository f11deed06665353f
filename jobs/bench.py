"""`sdfleet bench`: sdfleet against the code a user would otherwise write, side by side.

Three modes (docs/PERFORMANCE.md has the method, the commands and the figures):

- throughput (default): the same manifest rows (prompts, seeds, size, steps) and model through
  each contender of `jobs.bench_contenders` (a plain diffusers loop, batched, plain Ray Data,
  sdfleet local, sdfleet on Ray), in one run. Each repeat runs every contender once, in an
  order rotated by one per repeat, so machine drift hits all of them alike. Reported: images/s
  (model startup excluded, see `jobs.bench_contenders`), its min/median/max over repeats, and
  each contender's ratio to (a) taken repeat by repeat.
- `--overhead` (`jobs.bench_overhead`): `builtin:null` at 10k..1M rows, each size in a fresh
  process: sdfleet's own cost per row and the driver's peak memory.
- `--animation` (`jobs.bench_anim`): the 2D render against a plain img2img loop, and the
  video encoder.

Every mode prints a table and writes OUT/<mode>.json with the machine, the settings, every
sample and the summary.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.models import ModelSpec
from sdfleet.jobs.bench_contenders import CONTENDER_NAMES, CONTENDERS, BenchError, Sample, Workload

logger = logging.getLogger(__name__)

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
class BenchSettings:
    """The command line, validated."""

    model: str = "builtin:tiny"
    rows: tuple[int, ...] = (64,)
    steps: int = 4
    size_px: int = 64
    batch_size: int = 4
    repeats: int = 3
    guidance_scale: float = 7.5
    device: str | None = None
    dtype: str | None = None
    out: Path = Path("out/bench")
    contenders: tuple[str, ...] = ("a", "b", "c", "local", "ray")
    keep_outputs: bool = False
    frames: int = 24
    strength: float = 0.5
    rows_per_block: int | None = None  # sdfleet's ray executor (None: the job default, 128)
    cpu_threads: int | None = None  # torch threads of every contender on CPU (None: all cores)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(model=self.model, device=self.device, dtype=self.dtype)


def run_bench_command(args: Any) -> int:
    """`sdfleet bench ...`: run the chosen mode, print its table, write its JSON."""
    mode = "overhead" if args.overhead else "animation" if args.animation else "throughput"
    settings = settings_from_args(args, mode)
    if mode == "overhead":
        from sdfleet.jobs.bench_overhead import run_overhead

        run_overhead(settings)
    elif mode == "animation":
        from sdfleet.jobs.bench_anim import run_animation_bench

        run_animation_bench(settings)
    else:
        run_throughput(settings)
    return 0


def settings_from_args(args: Any, mode: str) -> BenchSettings:
    default_rows = {"overhead": "10000,100000", "animation": "1"}.get(mode, "128")
    default_contenders = {"overhead": "local,ray", "animation": "sdfleet,plain"}.get(
        mode, ",".join(CONTENDERS)
    )
    rows = parse_ints("--rows", args.rows or default_rows)
    contenders = tuple(n.strip() for n in (args.contenders or default_contenders).split(","))
    known = {"overhead": ("local", "ray"), "animation": ("sdfleet", "plain")}.get(
        mode, tuple(CONTENDERS)
    )
    unknown = [n for n in contenders if n not in known]
    if unknown:
        raise ConfigError(
            f"--contenders: {', '.join(unknown)} unknown here; choose from {', '.join(known)}"
        )
    if mode == "throughput" and len(rows) != 1:
        raise ConfigError(f"--rows: one number for a throughput run, got {args.rows!r}")
    for name in (
        "steps",
        "size",
        "batch_size",
        "repeats",
        "frames",
        "rows_per_block",
        "cpu_threads",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
    if not 0 < args.strength <= 1:
        raise ConfigError(f"--strength: img2img strength is in (0, 1], got {args.strength}")
    return BenchSettings(
        model=args.model,
        rows=rows,
        steps=args.steps,
        size_px=args.size,
        batch_size=args.batch_size,
        repeats=args.repeats,
        guidance_scale=args.guidance_scale,
        device=args.device,
        dtype=args.dtype,
        out=Path(args.out),
        contenders=contenders,
        keep_outputs=args.keep_outputs,
        frames=args.frames,
        strength=args.strength,
        rows_per_block=args.rows_per_block,
        cpu_threads=args.cpu_threads,
    )


def parse_ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part.replace("_", "")) for part in str(text).split(","))
    except ValueError:
        raise ConfigError(f"{flag}: give whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag}: every value must be at least 1, got {text!r}")
    return values


# ---------------------------------------------------------------------------- throughput


def run_throughput(settings: BenchSettings) -> dict[str, Any]:
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
    ray_start_s = start_ray() if {"c", "ray"} & set(settings.contenders) else None
    report = {
        "mode": "throughput",
        "machine": machine_info(settings.spec),
        "settings": settings_record(settings),
        "ray_start_s": ray_start_s,
    }
    # 2. the rounds; the report is rewritten after every sample (a stopped run keeps them)
    samples: list[Sample] = []
    for repeat in range(settings.repeats):
        for name in rotated(settings.contenders, repeat):
            samples.append(run_sample(work, settings, name, repeat))
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


def run_sample(work: Workload, settings: BenchSettings, name: str, repeat: int) -> Sample:
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
    from sdfleet.batch.ray_runner import connect

    started = time.perf_counter()
    connect(None)
    return round(time.perf_counter() - started, 3)


# ---------------------------------------------------------------------------- statistics


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """min / median / max."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


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


# ---------------------------------------------------------------------------- report


def machine_info(spec: ModelSpec | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    from sdfleet.jobs.runner import versions

    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads_default": torch.get_num_threads(),
        "versions": versions(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
    }
    if spec is not None:
        from sdfleet.batch.models import choose_device_dtype

        device, dtype = choose_device_dtype(spec)
        info |= {"device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def settings_record(settings: BenchSettings) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}


def write_report(path: Path, report: dict[str, Any], quiet: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not quiet:
        print(f"wrote {path}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def fmt_spread(entry: dict[str, float] | None, digits: int = 3) -> str:
    """'median (min-max)'."""
    if entry is None:
        return "-"
    return f"{entry['median']:.{digits}g} ({entry['min']:.{digits}g}-{entry['max']:.{digits}g})"


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
    return "\n".join([title, format_table(headers, rows), *pairs])
