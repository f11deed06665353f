"""`sdfleet bench --overhead`: sdfleet's own cost per row, measured with `builtin:null`.

`builtin:null` (batch/null_model.py) returns a fixed 8x8 picture without computing, so what
is left is sdfleet: manifest validation, batching, generators, PNG encoding with metadata,
image writes, results Parquet and the summary. For each row count, and each executor, a fresh
Python process (`python -m sdfleet.bench.overhead`) runs the real `sdfleet run` path
(`prepare_batch_job` + `run_batch_job`) and reports wall time and the driver's peak memory
(VmHWM: a fresh process per run, so one size's peak never carries into the next).

Per row = (wall - start-up) / rows, where start-up is the model load (local) or Ray's start
plus the replica actor coming up (ray); Ray's own start (`ray.init`) is timed apart.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sdfleet.bench.options import BenchOptions
from sdfleet.bench.report import format_table, machine_info, write_report
from sdfleet.bench.workload import BenchError, write_bench_manifest

logger = logging.getLogger(__name__)


def run_overhead(settings: BenchOptions) -> dict[str, Any]:
    """Every row count x executor in its own process; table + OUT/overhead.json (rewritten
    after every run, so a long series that is stopped keeps what it measured)."""
    root = settings.out.absolute() / "overhead"  # the run's job file sits elsewhere
    report = {
        "mode": "overhead",
        "machine": machine_info(),
        "settings": settings.record(),
        "results": [],
    }
    for rows in settings.rows:
        manifest = write_bench_manifest(root / f"manifest-{rows}.parquet", rows)
        for executor in settings.contenders:
            folder = root / "runs" / f"{rows}-{executor}"
            shutil.rmtree(folder, ignore_errors=True)
            result = run_child(manifest, folder, executor, settings)
            print(
                f"  {rows} rows, {executor}: {result['ms_per_row']:.3g} ms/row, "
                f"peak {result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
            report["results"].append(result)
            write_report(settings.out / "overhead.json", report, quiet=True)
            if not settings.keep_outputs:
                shutil.rmtree(folder, ignore_errors=True)
    write_report(settings.out / "overhead.json", report)
    print(overhead_table(report["results"]))
    return report


def run_child(manifest: Path, folder: Path, executor: str, settings: BenchOptions) -> dict:
    """One size, one executor, in a fresh interpreter; its JSON line back."""
    request = {
        "manifest": str(manifest),
        "out": str(folder),
        "executor": executor,
        "batch_size": settings.batch_size,
        "rows_per_block": settings.rows_per_block,
    }
    command = [sys.executable, "-m", "sdfleet.bench.overhead", json.dumps(request)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise BenchError(
            f"overhead run {request} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def overhead_table(results: list[dict]) -> str:
    headers = [
        "rows",
        "executor",
        "ms/row",
        "rows/s",
        "wall s",
        "start-up s",
        "validate s",
        "peak driver MiB",
        "driver MiB before the job",
    ]
    rows = [
        [
            r["rows"],
            r["executor"],
            r["ms_per_row"],
            r["rows_per_s"],
            r["wall_s"],
            r["startup_s"],
            r["validate_s"],
            r["peak_rss_mib"],
            r["rss_before_job_mib"],
        ]
        for r in results
    ]
    return "builtin:null, fresh process per run\n" + format_table(headers, rows)


# ---------------------------------------------------------------------------- the child


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM, the high-water mark of its own address
    space. Not ru_maxrss: Linux carries that across fork and exec, so a child reported at
    least its parent's size when it started (the bench process, ~400 MiB after writing a
    manifest), whatever it used itself."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def measure_run(request: dict[str, Any]) -> dict[str, Any]:
    """`sdfleet run` of the null job, timed by stage, in this (fresh) process."""
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.progress import no_progress
    from sdfleet.bench.contenders import bench_job
    from sdfleet.bench.workload import Workload, start_ray
    from sdfleet.jobs.runner import prepare_batch_job, run_batch_job

    executor, folder = request["executor"], Path(request["out"])
    work = Workload(
        ModelSpec(model="builtin:null"),
        Path(request["manifest"]),
        steps=1,
        size_px=64,
        guidance_scale=7.5,
        batch_size=request["batch_size"],
        rows_per_block=request["rows_per_block"],
    )
    job = bench_job(work, executor)
    before = peak_rss_mib()
    ray_start_s = start_ray() if executor == "ray" else None
    started = time.perf_counter()
    prepared = prepare_batch_job(job, folder / "job.yaml", str(folder))
    validated, since = time.perf_counter(), time.time()
    summary = run_batch_job(prepared, executor, no_progress)
    wall = time.perf_counter() - started
    local = executor == "local"
    startup = summary["stage_s"]["load"] if local else first_pool_start_s(summary, since)
    rows = summary["ok"]
    if rows != summary["expected_outputs"] or not rows:
        raise BenchError(f"{executor}: {rows} of {summary['expected_outputs']} rows ok")
    busy = wall - (startup or 0.0)
    return {
        "rows": rows,
        "executor": executor,
        "ok": summary["ok"],
        "error": summary["error"],
        "wall_s": round(wall, 3),
        "startup_s": startup,
        "ray_start_s": ray_start_s,
        "validate_s": round(validated - started, 3),
        "stage_s": summary["stage_s"],
        "ms_per_row": round(1000 * busy / rows, 4),
        "rows_per_s": round(rows / busy, 1),
        "rss_before_job_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }


def first_pool_start_s(summary: dict, since: float) -> float | None:
    """Seconds from `since` until the first execution's replicas were all up. A run in passes
    starts its replicas again for every pass; those later starts are part of the run's cost
    per row, not set-up (the last actor up is the last pass's)."""
    from sdfleet.bench.contenders import replica_ready_times

    ready = sorted(replica_ready_times(since))
    replicas = (summary.get("ray") or {}).get("replicas") or 1
    return ready[min(replicas, len(ready)) - 1] - since if ready else None


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(measure_run(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
