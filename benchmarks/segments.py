"""A clip with hard cuts: its segments side by side on two Ray replicas against its render in
sequence, wall time side by side in one run.

Run: `python -m sdfleet.bench.segments --frames 16 --repeats 3 --out out/bench/segments`

One 2D clip on `builtin:tiny` (64 px) with one hard cut in the middle, so two segments of equal
length. Contenders, in an order that rotates every repeat, each into a fresh folder:

- `sequential_all`: the clip in this process, one replica with every core's torch threads;
- `sequential_1`: the same with 1 torch thread (what one of the two replicas below has);
- `segments_ray`: the two segments on a pool of two clip actors (1 thread each) on a private
  Ray instance, then joined on the driver (`anim.segments.run_segments_ray`).

Every contender's wall time includes loading its model(s) and encoding the video: what a user
waits for. Ray's own start (`ray.init`) and one untimed warm-up render (the model built, the
imports warm) happen before the repeats; Ray's start is reported apart.
After each repeat the `segments_ray` frames are compared with `sequential_1`'s (the same torch
threads): byte-identical, or the benchmark says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

CONTENDERS = ("sequential_all", "sequential_1", "segments_ray")


def clip_job(frames: int, size: int, steps: int):
    from sdfleet.anim.spec import load_animation_job

    data = {
        "kind": "animation",
        "model": "builtin:tiny",
        "W": size,
        "H": size,
        "max_frames": frames,
        "hard_cuts": [frames // 2],
        "seed": 5,
        "zoom": "0:(1.02)",
        "angle": "0:(1)",
        "strength_schedule": "0:(0.6)",
        "steps_schedule": f"0:({steps})",
        "prompts": {"0": "a lighthouse", str(frames // 2): "a city at night"},
        "video": {"format": "mp4", "preset": "veryfast"},
    }
    return load_animation_job(data, source="<bench>")


def run_one(name: str, job, folder: Path) -> float:
    """Seconds of one contender's render into `folder`."""
    from sdfleet.anim.ray_clips import ClipTask, RenderClips
    from sdfleet.anim.segments import run_segments_ray, segment_tasks
    from sdfleet.batch.models import model_spec

    started = time.perf_counter()
    if name == "segments_ray":
        # half a logical CPU each: two fit beside Ray Data's own light tasks; 1 torch thread
        rows = run_segments_ray(segment_tasks("clip", job, folder), replicas=2, num_cpus=0.5)
        failed = [row["error"] for row in rows if row["error"]]
        if failed:
            raise RuntimeError(f"segments failed: {failed}")
    else:
        threads = 1 if name == "sequential_1" else os.cpu_count() or 1
        status = RenderClips(model_spec(job), cpu_threads=threads).render_row(
            ClipTask("clip", job, folder).to_row()
        )
        if status["status"] != "ok":
            raise RuntimeError(f"{name}: {status['error']}")
    return time.perf_counter() - started


def same_frames(a: Path, b: Path, frames: int) -> bool:
    name = "frames/frame_{:06d}.png"
    return all(
        (a / name.format(i)).read_bytes() == (b / name.format(i)).read_bytes()
        for i in range(frames)
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from sdfleet.bench.report import machine_info, spread, write_report
    from sdfleet.bench.workload import rotated

    job = clip_job(args.frames, args.size, args.steps)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
    ray_start_s = time.perf_counter() - t0
    warm = Path(tempfile.mkdtemp(prefix="sdfleet-bench-segments-warm-"))
    run_one("sequential_1", job, warm)  # builds builtin:tiny once and warms the imports, untimed
    shutil.rmtree(warm, ignore_errors=True)
    seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    identical = []
    try:
        for repeat in range(args.repeats):
            root = Path(tempfile.mkdtemp(prefix="sdfleet-bench-segments-"))
            try:
                for name in rotated(CONTENDERS, repeat):
                    seconds[name].append(run_one(name, job, root / name))
                identical.append(
                    same_frames(root / "segments_ray", root / "sequential_1", args.frames)
                )
            finally:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        ray.shutdown()
    summary = {name: spread(values, 3) for name, values in seconds.items()}
    for name in ("sequential_all", "sequential_1"):
        ratios = [s / p for s, p in zip(seconds["segments_ray"], seconds[name])]
        summary[f"segments_ray_vs_{name}"] = spread(ratios, 3)
    report = {
        "machine": machine_info(),
        "settings": vars(args),
        "ray_start_s": round(ray_start_s, 2),
        "seconds": seconds,
        "summary": summary,
        "segments_equal_sequential_1": identical,
    }
    write_report(Path(args.out) / "segments.json", report, quiet=True)
    print(table(summary, args, ray_start_s, identical))
    return report


def table(summary: dict[str, Any], args: argparse.Namespace, ray_s: float, same: list) -> str:
    lines = [
        f"{args.frames} frames (2 segments), {args.size} px, {args.steps} steps, "
        f"{args.repeats} repeats; Ray start {ray_s:.1f} s (apart)",
        f"{'contender':<16} wall s (median, min-max)",
    ]
    for name in CONTENDERS:
        s = summary[name]
        lines.append(f"{name:<16} {s['median']} ({s['min']}-{s['max']})")
    for name in ("sequential_all", "sequential_1"):
        r = summary[f"segments_ray_vs_{name}"]
        lines.append(f"segments_ray / {name}: {r['median']} ({r['min']}-{r['max']})")
    lines.append(f"segments byte-identical to sequential_1: {same}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="out/bench/segments")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
