"""Run a validated batch job: check everything, write job.yaml, execute, summarize."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sdfleet.batch.actor import GenerateBatch, RunConfig
from sdfleet.batch.errors import ConfigError, ModelError
from sdfleet.batch.fingerprint import settings_changes
from sdfleet.batch.kept_rows import check_kept_rows
from sdfleet.batch.manifest import validate_manifest
from sdfleet.batch.model_checks import check_model_files
from sdfleet.batch.models import model_spec
from sdfleet.batch.out_lock import check_out_folder, hold_out
from sdfleet.batch.outputs import OutputDir, parquet_files
from sdfleet.batch.paths import is_uri, resolve_path
from sdfleet.batch.retry import forget_failed_rows
from sdfleet.batch.run import Progress, RunStats, count_results, run_local, summarize
from sdfleet.batch.sources import check_out_outside_manifest, manifest_folder
from sdfleet.jobs.console import progress_bar, report_batch
from sdfleet.jobs.expand import manifest_files
from sdfleet.jobs.spec import BatchJob, record_base, with_absolute_paths

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 2
EXIT_ROWS_FAILED = 3


@dataclass(frozen=True)
class PreparedJob:
    job: BatchJob
    config: RunConfig
    files: list[str]
    expected_outputs: int
    job_path: Path


def prepare_batch_job(job: BatchJob, job_path: Path, out_uri: str | None) -> PreparedJob:
    """Every check that needs no model: model source, manifest rows, output location."""
    spec = model_spec(job, job_path.parent)
    try:
        check_model_files(spec)  # what would fail in every replica, found here
    except ModelError as exc:
        raise ModelError(f"{job_path}: {exc}") from None
    out = out_uri or str(Path("out") / (job.name or job_path.stem))
    out = out if is_uri(out) else str(resolve_path(out).resolve())  # actors may run elsewhere
    check_out(OutputDir(out))
    check_out_outside_manifest(job.manifest, job_path.parent, out)  # before reading it
    files = manifest_files(job.manifest, job_path.parent, out)  # a matrix file: expanded
    base_dir = manifest_folder(job.manifest, job_path.parent)
    defaults = job.row_defaults()
    expected = validate_manifest(
        files, defaults, job.max_reported_errors, Path(base_dir) if base_dir else None
    )
    config = RunConfig(
        model=spec,
        defaults=defaults,
        out_uri=out,
        job_seed=job.seed,
        batch_size=job.batch_size,
        pad_batches=job.pad_batches,
        cpu_threads=job.cpu_threads,
        image_format=job.output.format,
        image_quality=job.output.quality,
        embed_image_bytes=job.output.embed_image_bytes,
        manifest_dir=base_dir,
    )
    return PreparedJob(job, config, files, expected, job_path)


def check_out(out: OutputDir) -> None:
    """OUT's filesystem is one pyarrow knows, and OUT is a folder this user can write (before
    any model loads)."""
    from pyarrow import fs

    check_out_folder(out.uri)

    try:
        filesystem, root = out.filesystem()
        info = filesystem.get_file_info(root)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(
            f"--out {out.uri!r}: {exc}; give a local folder or a URI of a filesystem pyarrow "
            "reads and writes (s3://bucket/path, gs://..., abfs://..., file:///mnt/...)"
        ) from None
    if info.type == fs.FileType.File:
        raise ConfigError(f"--out {out.uri!r} is a file; give a folder (new, or an earlier run's)")


def checkpoint_uri(job: BatchJob, out: OutputDir) -> str:
    """Where the Ray executor records finished rows (Ray Data's checkpoint)."""
    return job.ray.checkpoint_path or out.child_uri("_checkpoint")


def check_same_job(
    out: OutputDir, job: BatchJob, executor: str, base_dir: Path | None = None
) -> None:
    """Resuming into OUT is only safe with the settings (and executor) that started it. A run
    that committed no row yet (it failed first) binds nothing: its job.yaml is replaced.
    With `base_dir` (the job file's folder), relative paths compare as the files they name,
    so the record OUT/job.yaml, whose paths load absolute, resumes its own OUT."""
    checkpoint = checkpoint_uri(job, out)
    committed = any(parquet_files(folder)[1] for folder in (out.child_uri("results"), checkpoint))
    if not out.exists("job.yaml") or not committed:
        return
    before = yaml.safe_load(out.read_bytes("job.yaml")) or {}
    # every setting but the output-only ones (ray.checkpoint_path counts: another record of
    # finished rows would make every row again, next to the old)
    was, now = before.get("job") or {}, job.model_dump(mode="json", by_alias=True)
    if base_dir is not None:
        was, now = with_absolute_paths(was, record_base(before)), with_absolute_paths(now, base_dir)
    changed = settings_changes(was, now)
    if changed:
        raise ConfigError(
            f"{out.uri} holds results of a different job (changed {'; '.join(changed)}); a "
            "resume would mix settings. Use a new --out, or delete the folder to start over."
        )
    if before.get("executor") not in (None, executor):
        raise ConfigError(
            f"{out.uri} was started with the {before['executor']} executor, which keeps its own "
            f"record of finished rows; resume it with --executor {before['executor']}, or use "
            "a new --out."
        )


def check_local_device(device: str | None) -> None:
    """`device: cuda[:N]` needs that GPU in this process; say so before a model loads."""
    if not device or not device.startswith("cuda"):
        return
    import torch

    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise ConfigError(
            f"device: {device!r}, but this machine has {count} usable CUDA GPU(s) (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); set device: cpu "
            "or auto, or run where the GPU and a CUDA build of torch are."
        )


def write_job_record(out: OutputDir, job: BatchJob | Any, source: Path, executor: str) -> None:
    """OUT/job.yaml: the resolved job as run, plus the versions that produced the images."""
    record = {
        "job": job.model_dump(mode="json", by_alias=True),
        "source": str(source.resolve()),
        "executor": executor,
        "versions": versions(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.write_bytes("job.yaml", yaml.safe_dump(record, sort_keys=False).encode())


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in ("sdfleet", "torch", "diffusers", "transformers", "ray", "pyarrow"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def run_batch(
    job: BatchJob,
    job_path: Path,
    out: str | None,
    executor: str,
    address: str | None,
    show_progress: bool = True,
    actor_class: type[GenerateBatch] = GenerateBatch,
    retry_errors: bool = False,
    output: str = "text",
) -> int:
    """`sdfleet run` of a batch job: check, run with a progress bar, report; the exit status.
    `output`: what is printed after the run: "text" (counts, rate, errors), "json" (the
    summary on stdout) or "quiet" (nothing)."""
    prepared = prepare_batch_job(job, job_path, out)
    with progress_bar(prepared.expected_outputs, show_progress) as bar:
        summary = run_batch_job(prepared, executor, bar.update, address, actor_class, retry_errors)
    if output == "json":
        print(json.dumps(summary, indent=2))
    elif output == "text":
        report_batch(summary, prepared.config.out_uri)
    return exit_status(summary)


def run_batch_job(
    prepared: PreparedJob,
    executor: str,
    progress: Progress,
    address: str | None = None,
    actor_class: type[GenerateBatch] = GenerateBatch,
    retry_errors: bool = False,
) -> dict:
    """Execute and return the summary (also written to OUT/summary.json), holding OUT for
    this run (`batch.out_lock`: another run into it is refused, naming this one). `actor_class`:
    the replica actor (default `GenerateBatch`; tests and benchmarks pass a subclass).
    `retry_errors`: the rows whose committed result is an error are made again
    (`batch.retry`); every ok row is kept."""
    with hold_out(prepared.config.out_uri, "batch"):
        return _run_held(prepared, executor, progress, address, actor_class, retry_errors)


def _run_held(
    prepared: PreparedJob,
    executor: str,
    progress: Progress,
    address: str | None,
    actor_class: type[GenerateBatch],
    retry_errors: bool,
) -> dict:
    out = OutputDir(prepared.config.out_uri)
    if executor == "local" or not (
        address or prepared.job.ray.address or os.environ.get("RAY_ADDRESS")
    ):
        # this machine's GPUs are the pool's (a private Ray instance too); a joined cluster's
        # are checked when the pool is sized
        check_local_device(prepared.config.model.device)
    check_same_job(out, prepared.job, executor, prepared.job_path.parent)
    check_kept_rows(prepared.config, prepared.files, ok_only=retry_errors)
    write_job_record(out, prepared.job, prepared.job_path, executor)
    stats = RunStats(executor=executor, price_per_gpu_hour=prepared.job.price_per_gpu_hour)
    if retry_errors:
        retried = forget_failed_rows(out, checkpoint_uri(prepared.job, out))
        stats.extra["retried_failed_rows"] = retried
    try:
        if executor == "local":
            run_local(prepared.config, prepared.files, stats, progress, actor_class)
        elif executor == "ray":
            from sdfleet.batch.ray_runner import run_ray

            options = prepared.job.ray
            run_ray(prepared.config, prepared.files, stats, progress, options, address, actor_class)
        else:
            raise ConfigError(f"executor: {executor!r} is unknown; use 'ray' or 'local'")
    except KeyboardInterrupt:  # SIGINT, or SIGTERM (`jobs.cli`): summary.json counts what is done
        stats.extra["interrupted"] = True
        summarize(out, stats, prepared.expected_outputs, prepared.job.max_reported_errors)
        raise
    count = count_results
    if executor == "ray":  # the results counted beside the driver (`batch.ray_runner`)
        from sdfleet.batch.ray_runner import count_results_beside

        count = count_results_beside
    return summarize(out, stats, prepared.expected_outputs, prepared.job.max_reported_errors, count)


def exit_status(summary: dict) -> int:
    """3 when rows failed (--allow-row-errors accepts that); 1 when outputs are missing (the
    run stopped short: run it again), which no flag turns into success."""
    if summary["unique_outputs"] < summary["expected_outputs"]:  # ok and error rows alike
        return EXIT_CRASH
    if summary["error"]:
        return EXIT_ROWS_FAILED
    return EXIT_OK
