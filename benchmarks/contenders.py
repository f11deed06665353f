"""The contenders of `sdfleet bench`: the code a user would otherwise write, and sdfleet itself.

Each contender makes the same images (same manifest rows, model, size, steps, guidance and
seeds) into its own fresh folder and returns a `Sample`: images written, wall seconds and
startup seconds. Startup is the time until the model is loaded and ready to generate (for Ray:
until the last replica actor is up, which includes the actor's process start and imports).
Steady images/s (`bench.workload.steady_rate`) runs from the first replica being ready to the
last image written, for every contender alike: reading the manifest, generating, encoding and
writing images count, and for sdfleet its PNG metadata and results; its validation and summary
fall in "fixed s" with the start-up. Every contender writes each image as its pipeline call
returns, so each file's time is that image's own finish time.

    a      plain diffusers: `from_pretrained`, a loop calling the pipeline per row, `save` PNG
    b      the same loop on batches of `batch_size` rows
    c      plain Ray Data, as in Ray's batch inference docs: read_parquet -> map_batches(class,
           ActorPoolStrategy) -> write_parquet; images saved in the UDF; no resume, no metadata
    local  sdfleet, `local` executor (`jobs.runner`: prepare_batch_job + run_batch_job)
    ray    sdfleet, `ray` executor, same code path; same actor count and CPUs as c
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdfleet.batch.models import ModelSpec
from sdfleet.batch.progress import ProgressEvent
from sdfleet.bench.workload import BenchError, Sample, Workload, measure

logger = logging.getLogger(__name__)

CONTENDER_NAMES = {
    "a": "(a) plain diffusers, per row",
    "b": "(b) plain diffusers, batched",
    "c": "(c) plain Ray Data",
    "local": "(d) sdfleet, local executor",
    "ray": "(e) sdfleet, ray executor",
}


# ---------------------------------------------------------------------------- plain diffusers


def cpu_threads(work: Workload) -> int | None:
    """Torch threads on CPU: the job's `cpu_threads`, else every core, as sdfleet's replica
    (`batch.replica.Replica`) does; the plain contenders set the same."""
    from sdfleet.batch.models import choose_device_dtype

    device, _ = choose_device_dtype(work.spec)
    return (work.cpu_threads or os.cpu_count() or 1) if device.type == "cpu" else None


def load_plain_pipeline(spec: ModelSpec) -> Any:
    """What a user writes: `from_pretrained` on the folder or hub id, `.to(device)`.

    builtin:tiny is its diffusers folder; builtin:null the instrument; a single-file checkpoint
    goes through `batch.models.load_pipelines`, which makes the same `from_single_file` call.
    """
    from diffusers import AutoPipelineForText2Image

    from sdfleet.batch.models import (
        choose_device_dtype,
        load_pipelines,
        quiet_loading,
        resolve_model_source,
    )
    from sdfleet.batch.tiny import tiny_model_dir

    quiet_loading()  # loading is not timed; this only keeps Ray workers' logs short
    source = resolve_model_source(spec)
    device, dtype = choose_device_dtype(spec)
    if source.location == "builtin:null" or source.kind == "single_file":
        return load_pipelines(spec).txt2img
    location = str(tiny_model_dir()) if source.kind == "builtin" else source.location
    pipe = AutoPipelineForText2Image.from_pretrained(location, dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_and_save(
    pipe: Any, ids: list[str], prompts: list[str], seeds: list[int], work: Workload, folder: Path
) -> list[str]:
    """One pipeline call with a seeded generator per row; each image saved as `<id>.png`."""
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    images = pipe(prompt=prompts, generator=generators, **work.call_kwargs()).images
    paths = [str(folder / f"{row_id}.png") for row_id in ids]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def run_plain(work: Workload, folder: Path, repeat: int, name: str, rows_per_call: int) -> Sample:
    """(a) and (b): load, read the manifest, call the pipeline per row (or per batch), save."""
    import pyarrow.parquet as pq
    import torch

    started, cpu_started = time.perf_counter(), time.process_time()
    threads = cpu_threads(work)
    if threads:
        torch.set_num_threads(threads)
    pipe = load_plain_pipeline(work.spec)
    ready, ready_at = time.perf_counter(), time.time()
    rows = pq.read_table(work.manifest).to_pylist()
    images = folder / "images"
    images.mkdir(parents=True)
    for start in range(0, len(rows), rows_per_call):
        chunk = rows[start : start + rows_per_call]
        generate_and_save(
            pipe,
            [r["id"] for r in chunk],
            [r["prompt"] for r in chunk],
            [r["seed"] for r in chunk],
            work,
            images,
        )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return measure(name, repeat, images, wall, ready - started, ready_at, cpu)


# ---------------------------------------------------------------------------- plain Ray Data


class PlainRayPredictor:
    """Ray's batch-inference recipe: the model loads in `__init__`, `__call__` maps a batch."""

    def __init__(self, work: Workload, folder: str) -> None:
        import torch

        threads = cpu_threads(work)
        if threads:  # Ray workers start with OMP_NUM_THREADS=1; sdfleet's replica sets this too
            torch.set_num_threads(threads)
        self.pipe = load_plain_pipeline(work.spec)
        self.work, self.folder = work, Path(folder)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        paths = generate_and_save(
            self.pipe,
            list(batch["id"]),
            list(batch["prompt"]),
            list(batch["seed"]),
            self.work,
            self.folder,
        )
        return {"id": batch["id"], "path": np.array(paths)}


def run_plain_ray(work: Workload, folder: Path, repeat: int) -> Sample:
    """(c): read_parquet -> map_batches(PlainRayPredictor) -> write_parquet, on the pool that
    sdfleet's ray executor would use here (same actor count, CPUs and GPUs per actor)."""
    import ray.data

    images = folder / "images"
    images.mkdir(parents=True)
    plan = sdfleet_pool_plan()
    use_default_data_context()
    since, started = time.time(), time.perf_counter()
    dataset = ray.data.read_parquet(str(work.manifest)).map_batches(
        PlainRayPredictor,
        fn_constructor_kwargs={"work": work, "folder": str(images)},
        batch_size=work.batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.replicas),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    dataset.write_parquet(str(folder / "results"))
    wall = time.perf_counter() - started
    return measure("c", repeat, images, wall, replicas_startup_s(since), replicas_ready_at(since))


def sdfleet_pool_plan() -> Any:
    """The pool `sdfleet run` plans on this cluster with a job's default `ray:` options."""
    from sdfleet.batch.pool import plan_pool
    from sdfleet.batch.ray_context import alive_nodes
    from sdfleet.jobs.spec import RayOptions

    options = RayOptions()
    return plan_pool(
        alive_nodes(),
        options.replicas,
        options.replicas_per_gpu,
        options.num_cpus_per_replica,
        options.allow_fewer_replicas,
    )


# What sdfleet's ray executor sets on the driver's DataContext (batch.ray_context); plain Ray
# Data runs with Ray's defaults for these, except that neither shows progress bars.
_SDFLEET_CONTEXT_FIELDS = (
    "checkpoint_config",
    "execution_no_progress_timeout_s",
    "wait_for_min_actors_s",
    "max_errored_blocks",
)


def use_default_data_context() -> None:
    import ray.data

    current, default = ray.data.DataContext.get_current(), ray.data.DataContext()
    for name in _SDFLEET_CONTEXT_FIELDS:
        setattr(current, name, getattr(default, name))
    current.enable_progress_bars = False
    current.print_on_execution_start = False


def replicas_startup_s(since: float) -> float | None:
    """Seconds from `since` (time.time()) until the last Ray Data map actor created after it
    was up (`replica_ready_times`); None if Ray's actor table cannot be read."""
    ready = replica_ready_times(since)
    return max(ready) - since if ready else None


def replicas_ready_at(since: float) -> float | None:
    """time.time() when the first Ray Data map actor created after `since` was up."""
    ready = replica_ready_times(since)
    return min(ready) if ready else None


def replica_ready_times(since: float) -> list[float]:
    """When each Ray Data map actor created after `since` (time.time()) was up: an actor is
    ALIVE once its constructor, which loads the model, has returned.

    Read from the GCS actor table (a private Ray API, the public one needs the dashboard);
    empty if it cannot be read, and then images/s is end to end.
    """
    try:
        from ray._private import state

        actors = list(state.actors().values())
    except Exception as exc:  # noqa: BLE001 - an instrument, not a requirement
        logger.warning("cannot read Ray's actor table (%s); startup not measured", exc)
        return []
    return [
        a["StartTime"] / 1000
        for a in actors
        if "MapWorker" in str(a.get("ActorClassName")) and a["StartTime"] / 1000 >= since
    ]


# ---------------------------------------------------------------------------- sdfleet


def bench_job(work: Workload, executor: str) -> Any:
    """The batch job `sdfleet run` would get for this workload (defaults everywhere else)."""
    from sdfleet.jobs.spec import BatchJob

    ray = {"rows_per_block": work.rows_per_block} if work.rows_per_block else {}
    return BatchJob.model_validate(
        {
            "name": "bench",
            "model": work.spec.model,
            "device": work.spec.device,
            "dtype": work.spec.dtype,
            "manifest": str(work.manifest),
            "executor": executor,
            "batch_size": work.batch_size,
            "ray": ray,
            "cpu_threads": work.cpu_threads,
            "defaults": {
                "num_inference_steps": work.steps,
                "guidance_scale": work.guidance_scale,
                "width": work.size_px,
                "height": work.size_px,
            },
        }
    )


def run_sdfleet(work: Workload, folder: Path, repeat: int, executor: str) -> Sample:
    """(d)/(e): the real path of `sdfleet run` (validation, job record, run, summary)."""
    from sdfleet.jobs.runner import EXIT_OK, exit_status, prepare_batch_job, run_batch_job

    job = bench_job(work, executor)
    started, cpu_started = time.perf_counter(), time.process_time()
    prepared = prepare_batch_job(job, folder / "job.yaml", str(folder))
    since = time.time()
    loading_at: list[float] = []  # the local replica starts loading right after this event

    def note_loading(event: ProgressEvent) -> None:
        if event.stage == "loading":
            loading_at.append(time.time())

    summary = run_batch_job(prepared, executor, note_loading)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if exit_status(summary) != EXIT_OK:
        raise BenchError(
            f"sdfleet {executor}: {summary['error']} errors, "
            f"{summary['unique_outputs']}/{summary['expected_outputs']} outputs"
        )
    images = folder / "images"
    if executor == "local":  # the replica ran in this process: its CPU time is comparable
        load_s = summary["stage_s"]["load"]
        return measure(executor, repeat, images, wall, load_s, loading_at[0] + load_s, cpu)
    startup_s, ready_at = replicas_startup_s(since), replicas_ready_at(since)
    return measure(executor, repeat, images, wall, startup_s, ready_at)


Contender = Callable[[Workload, Path, int], Sample]
CONTENDERS: dict[str, Contender] = {
    "a": lambda work, folder, repeat: run_plain(work, folder, repeat, "a", 1),
    "b": lambda work, folder, repeat: run_plain(work, folder, repeat, "b", work.batch_size),
    "c": run_plain_ray,
    "local": lambda work, folder, repeat: run_sdfleet(work, folder, repeat, "local"),
    "ray": lambda work, folder, repeat: run_sdfleet(work, folder, repeat, "ray"),
}
