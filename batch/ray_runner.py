"""The `ray` executor: Ray Data pipeline with pinned replicas and exactly-once resume.

read_parquet -> repartition(rows per block) -> [checkpoint filter: drop committed ids]
  -> map_batches(GenerateBatch, ActorPoolStrategy(size=N), num_gpus=g, num_cpus=c)
  -> write_parquet(OUT/results), committed with CheckpointConfig(id_column="id").

Passes: Ray Data's driver keeps state for every block of an execution until it ends (the
blocks' stats, and `write_parquet` materializes one write result per block), so its memory
grows with the rows of one execution. A manifest with more rows left than `ray.rows_per_pass`
runs as passes: its rows left are copied, streaming, into OUT/_passes/ in pieces of at most that
many rows (by an actor on the driver's node: the rows never load into the driver), and each
piece is one execution of the pipeline above (same checkpoint, so a crash
in any pass resumes like any run). A pass's copy holds only rows that no committed checkpoint
file names, so passes run without Ray's checkpoint filter, which would load every committed id
before each pass (`batch.ray_checkpoint`). Each pass starts its replica pool again.
After each pass, and after a resumed run, the checkpoint is compacted to one file
(`compact_checkpoint`): Ray writes one checkpoint file per write task and reads them all back
before an execution's first row. (A resumed run whose rows left fit one pass compacts too, so
the files a crashed pass left never pile up across resumes.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sdfleet.batch.actor import GenerateBatch, RunConfig
from sdfleet.batch.errors import ConfigError, PipelineError
from sdfleet.batch.outputs import OutputDir, parquet_files
from sdfleet.batch.pool import (
    SHARED_STORAGE_FIX,
    NodeResources,
    PoolPlan,
    check_shared_storage,
    holds_gpu,
    plan_pool,
)
from sdfleet.batch.progress import CallDone, Progress, RunProgress
from sdfleet.batch.ray_context import (
    RayFailure,
    alive_nodes,
    connect,
    pipeline_settings,
    ray_data,
    ray_failure,
    release_freed_memory,
    sdfleet_cause,
)
from sdfleet.batch.run import RunStats, committed_outputs, count_results

logger = logging.getLogger(__name__)


def run_ray(
    config: RunConfig,
    files: list[str],
    stats: RunStats,
    progress: Progress,
    options: Any,
    address: str | None = None,
    actor_class: type[GenerateBatch] = GenerateBatch,
) -> None:
    """Run the job on a Ray cluster (joined, or started locally) and fill `stats`.
    `actor_class`: the replica actor (tests and benchmarks pass a subclass)."""

    # 1. join the cluster (or start a local one) and see what it has
    out = OutputDir(config.out_uri)
    checkpoint = options.checkpoint_path or out.child_uri("_checkpoint")
    storage = {"manifest": files[0], "out": config.out_uri, "checkpoint": checkpoint}
    nodes = join_cluster(address or options.address, storage)
    check_cluster_device(config.model.device, nodes)
    # 2. size the pool before anything loads (resuming from the manifest's own files adds
    # Ray's checkpoint-filter actor; passes need none: their copies leave out what is done)
    done_before = checkpointed_ids(checkpoint)
    passes = ManifestPasses(files, done_before, options.rows_per_pass)
    filtered = has_checkpoint(checkpoint) and not passes.many
    resuming = has_checkpoint(checkpoint) or passes.many
    plan = plan_pool(
        nodes,
        options.replicas,
        options.replicas_per_gpu,
        options.num_cpus_per_replica,
        options.allow_fewer_replicas,
        reserved_cpus=2 if filtered else 1,
        use_gpus=holds_gpu(config.model.device),
    )
    stats.extra["ray"] = {
        "replicas": plan.replicas,
        "num_gpus_per_replica": plan.num_gpus,
        "num_cpus_per_replica": plan.num_cpus,
        "nodes": len(nodes),
        "resumed": bool(done_before),
    }
    if config.cpu_threads is None:
        config = replace(config, cpu_threads=cpu_threads_per_replica(plan, options.replicas))
    # 3. build and run the pipeline; replicas report each call to a small actor
    stats.skipped_rows = len(done_before)
    tracker = RunProgress(progress, skipped=committed_outputs(out, done_before))
    tracker.loading(f"{config.model.model} on {plan.replicas} replica(s)")
    counter = ProgressCounter.options(num_cpus=0, scheduling_strategy=on_this_node()).remote()
    reporter = CounterReporter(counter)
    started = time.time()
    settings = pipeline_settings(
        options.stall_timeout_s,
        options.min_replicas_timeout_s,
        checkpoint_path=checkpoint,
        input_has_committed=not passes.many,  # a pass's copy holds only rows not yet done
    )
    release_freed_memory()  # what validation and the checks before it left
    copy_pass = None
    if passes.many:
        copy_pass = copy_passes_beside(out, files, done_before, options.rows_per_pass)
    with ray_data(settings), poll_progress(counter, tracker):
        inputs = pass_inputs(out, files, passes, copy_pass)
        for number, pass_files in enumerate(inputs, start=1):
            # one execution; its state (every block's) is dropped with the dataset after it
            execute(
                build_pipeline(config, pass_files, plan, options, reporter, actor_class),
                out,
                options,
            )
            stats.extra["ray"]["passes"] = number
            if resuming:
                compact_on_this_node(checkpoint)
            release_freed_memory()  # the pass's leftovers, before the next one's peak
    # 4. what this run did: pool start (actors + model load), then generation
    ready = tracker.first_ready or started
    stats.stage_seconds["pool_start"] = ready - started
    stats.stage_seconds["generate"] = (tracker.total.last_finish or ready) - ready
    stats.stage_seconds["pipeline"] = time.time() - started
    stats.record(tracker)


PASSES_DIR = "_passes"


class ManifestPasses:
    """The rows of a manifest not in `done`, in manifest order, as passes of at most
    `rows_per_pass` rows. `many` is False when the rows left fit one pass: the manifest's own
    files are then the one execution's input and nothing is copied. Otherwise `next_pass()`
    gives the next pass's tables (streaming: the manifest is read once, a table at a time), and
    an empty iterator when every row has been handed out. Row counts come from the files'
    footers, so `many` is known before anything is read; the passes themselves never rely on
    the count (ids in `done` that the manifest no longer holds only make a pass fuller)."""

    def __init__(self, files: list[str], done: set[str], rows_per_pass: int) -> None:
        from sdfleet.batch.run import iter_row_chunks
        from sdfleet.batch.sources import open_parquet

        total = sum(open_parquet(path).metadata.num_rows for path in files)
        self.many = total - len(done) > rows_per_pass
        self.rows_per_pass = rows_per_pass
        self._chunks = iter_row_chunks(files, min(rows_per_pass, 65_536), done)
        self._rest = None  # the part of a table that straddled the last pass's end

    def next_pass(self) -> Iterator[Any]:
        wanted = self.rows_per_pass
        while wanted > 0:
            table, self._rest = self._rest, None
            table = table if table is not None else next(self._chunks, None)
            if table is None:
                return
            if table.num_rows > wanted:
                table, self._rest = table.slice(0, wanted), table.slice(wanted)
            wanted -= table.num_rows
            yield table


def pass_inputs(
    out: OutputDir,
    files: list[str],
    passes: ManifestPasses,
    copy_pass: Callable[[int], list[str]] | None = None,
) -> Iterator[list[str]]:
    """Each execution's input files: the manifest's own when the rows left fit one pass, else
    each pass's copy in OUT/_passes/ (written just before its execution, in place of the pass
    before; removed after the last one, and a crashed run's before a rerun that needs none).
    `copy_pass(number)` writes a pass's copy and returns its URIs, [] when no row is left: by
    default in this process (`PassCopier`); `run_ray` has an actor beside the driver do it."""
    if not passes.many:
        remove_passes(out)
        yield files
        return
    copy_pass = copy_pass or PassCopier(out.uri, passes).copy
    number = 0
    while names := copy_pass(number):
        yield names
        number += 1
    remove_passes(out)


class PassCopier:
    """Writes the passes' copies in turn: `write_pass` of `passes.next_pass()`."""

    def __init__(self, out_uri: str, passes: ManifestPasses) -> None:
        self.out, self.passes = OutputDir(out_uri), passes

    def copy(self, number: int) -> list[str]:
        return write_pass(self.out, number, self.passes.next_pass())


def copy_passes_beside(out: OutputDir, files: list[str], done: set[str], rows_per_pass: int):
    """`copy_pass` for `pass_inputs` done by an actor on the driver's node, so the manifest's
    rows never pass through the driver: reading a 1M-row manifest there in 64k-row tables and
    writing its copies held ~75 MiB of Arrow buffers and freed pages, kept for the whole run
    (the driver's peak at 1M rows was +24% over 100k's, where nothing is copied). An error in
    the actor (a full disk, say) is raised here as itself. The actor ends with the run."""
    actor = PassCopierOnRay.options(num_cpus=0, scheduling_strategy=on_this_node()).remote(
        out.uri, files, done, rows_per_pass
    )

    def copy_pass(number: int) -> list[str]:
        return get_beside(actor.copy.remote(number))

    return copy_pass


def get_beside(ref: Any) -> Any:
    """`ray.get` of a helper's result; the helper's own error (a full disk, say) raised as
    itself, as it would be in the driver."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = exc.cause
        raise (cause if isinstance(cause, Exception) else exc) from None


def count_results_beside(out_uri: str, max_errors: int) -> dict[str, Any]:
    """`batch.run.count_results` in a Ray task on the driver's node: counting 1M rows of
    results in the driver added 14 MiB to its peak in the seconds after the last pass, a
    tenth of that at 100k (docs/PERFORMANCE.md). Where Ray no longer runs, in this process."""
    import ray

    if not ray.is_initialized():
        return count_results(out_uri, max_errors)
    task = ray.remote(num_cpus=0, max_retries=2)(count_results)
    return get_beside(task.options(scheduling_strategy=on_this_node()).remote(out_uri, max_errors))


def write_pass(out: OutputDir, number: int, tables: Any) -> list[str]:
    """The pass's rows as Parquet files in OUT/_passes/ (one per table, so each keeps its
    file's Arrow types); their URIs, in the form OUT was given."""
    import pyarrow.parquet as pq

    filesystem, root = out.filesystem()
    folder = f"{root}/{PASSES_DIR}"
    # the last pass's copy (done: its rows are committed) or a crashed run's
    filesystem.delete_dir_contents(folder, missing_dir_ok=True)
    filesystem.create_dir(folder, recursive=True)
    names = []
    for k, table in enumerate(tables):
        name = f"pass-{number:05d}-{k:04d}.parquet"
        pq.write_table(table, f"{folder}/{name}", filesystem=filesystem)
        names.append(out.child_uri(f"{PASSES_DIR}/{name}"))
    return names  # [] when no row is left: the passes are done


def remove_passes(out: OutputDir) -> None:
    import pyarrow.fs as pafs

    filesystem, root = out.filesystem()
    if filesystem.get_file_info(f"{root}/{PASSES_DIR}").type != pafs.FileType.NotFound:
        filesystem.delete_dir(f"{root}/{PASSES_DIR}")


def join_cluster(
    address: str | None, storage: dict[str, str], fix: str = SHARED_STORAGE_FIX
) -> list[NodeResources]:
    """Join `address` (or start a private local instance: `batch.ray_context.connect`) and
    check that every node sees the `storage` paths (`batch.pool.check_shared_storage`, whose
    message ends with `fix`); the alive nodes. Batch jobs and clip runs start this way."""
    connect(address)
    nodes = alive_nodes()
    check_shared_storage(nodes, storage, fix)
    return nodes


def check_cluster_device(device: str | None, nodes: list) -> None:
    """`device: cuda[:N]` on a cluster with no GPU fails in every replica: say so first."""
    if device and device.startswith("cuda") and not sum(node.gpus for node in nodes):
        raise ConfigError(
            f"device: {device!r}, but the Ray cluster has 0 GPUs ({len(nodes)} node(s)); set "
            "device: cpu or auto, or join a cluster with GPUs (--address)."
        )


def cpu_threads_per_replica(plan: PoolPlan, asked_replicas: int | None) -> int | None:
    """Torch threads of a CPU replica: None (every core of its machine) for the default one
    replica per machine; its CPU share when the job packs several replicas per machine."""
    if plan.num_gpus or asked_replicas is None:
        return None
    return max(1, int(plan.num_cpus))


def has_checkpoint(checkpoint_uri: str) -> bool:
    return bool(parquet_files(checkpoint_uri)[1])


def compact_checkpoint(checkpoint_uri: str) -> int:
    """Rewrite the committed checkpoint files as one; the number of files it replaced.

    Ray Data writes a checkpoint file per write task (a pass of 100k rows at 128 rows a block
    leaves ~800) and reads every one back, on a read task, before an execution's first row.
    Without this, the 8th pass of a 1M-row run read ~5,500 files and its read task stalled
    with thousands of threads (docs/PERFORMANCE.md, "Passes"). Only between executions: no
    write is pending then. The ids are written beside the folder and moved in before the small
    files go, so a crash in between leaves some ids twice, which Ray's filter (a sorted search)
    and `checkpointed_ids` (a set) both read as once. Runs where the files are (a Ray task)."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, paths = parquet_files(checkpoint_uri, committed=True)
    if len(paths) < 2:
        return 0
    ids = pa.concat_tables(
        [pq.read_table(p, columns=["id"], filesystem=filesystem) for p in paths],
        promote_options="permissive",
    )
    root = OutputDir(checkpoint_uri).filesystem()[1].rstrip("/")
    name = f"compact-{uuid.uuid4().hex}.parquet"
    staged = f"{root}.{name}"
    pq.write_table(ids, staged, filesystem=filesystem)
    filesystem.move(staged, f"{root}/{name}")
    for path in paths:
        filesystem.delete_file(path)
    return len(paths)


def compact_on_this_node(checkpoint_uri: str) -> None:
    """`compact_checkpoint` in a Ray task, so that the ids never load into the driver (whose
    memory stays flat with the rows of the run)."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=2)(compact_checkpoint)
    files = ray.get(task.options(scheduling_strategy=on_this_node()).remote(checkpoint_uri))
    logger.info("checkpoint compacted: %d files -> 1", files)


def checkpointed_ids(checkpoint_uri: str) -> set[str]:
    """Rows committed before this run (Ray's checkpoint, not results/: a crash may leave
    uncommitted result files there, which Ray deletes when the run restarts; and not its
    pending files: Ray deletes those rows' results too, so they are made again)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    filesystem, paths = parquet_files(checkpoint_uri, committed=True)
    if not paths:
        return set()
    ids = [pq.read_table(p, columns=["id"], filesystem=filesystem)["id"] for p in paths]
    chunks = [chunk for column in ids for chunk in column.chunks]
    return set(pc.unique(pa.chunked_array(chunks, pa.string())).to_pylist())


def on_this_node():
    """Keep driver-side helpers on the driver's node: a worker node may go away mid-run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def build_pipeline(
    config: RunConfig,
    files: list[str],
    plan: PoolPlan,
    options: Any,
    reporter: CounterReporter,
    actor_class: type[GenerateBatch] = GenerateBatch,
):
    import ray.data

    settle_fsspec_http()
    dataset = ray.data.read_parquet(files)
    dataset = dataset.repartition(target_num_rows_per_block=options.rows_per_block)
    return dataset.map_batches(
        actor_class,
        fn_constructor_kwargs={"config": config, "progress": reporter},
        batch_size=options.rows_per_block,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.replicas),
        num_gpus=plan.num_gpus,
        num_cpus=plan.num_cpus,
        # Ray Data's actor pools restart a crashed replica and rerun its batch by default;
        # images are written under deterministic names, so a rerun overwrites, never duplicates.
    )


def settle_fsspec_http() -> None:
    """Make `import fsspec.implementations.http` fail the same way in every thread.

    Ray Data lists several input files on threads, and each asks whether the filesystem is
    fsspec's HTTP one by importing that module, catching only ModuleNotFoundError. Without
    aiohttp the import fails, nothing is cached, and two threads importing at once get an
    ImportError from the half-made module instead, which ends the run (any manifest of two or
    more files). Where the import fails for a missing module, None in `sys.modules` makes
    every later import raise ModuleNotFoundError at once: the answer Ray expects."""
    import sys

    name = "fsspec.implementations.http"
    if name in sys.modules:
        return
    try:
        __import__(name)
    except ModuleNotFoundError:
        sys.modules[name] = None  # type: ignore[assignment]
    except ImportError:
        pass


def execute(dataset, out: OutputDir, options: Any) -> None:
    """Write results; turn Ray's timeouts into messages that say what to do."""
    try:
        dataset.write_parquet(out.path("results"), filesystem=out.filesystem()[0])
    except Exception as exc:
        cause = sdfleet_cause(exc)
        if cause is not None:  # e.g. an image write on a full disk: the replica's message
            raise cause from None
        failure = ray_failure(exc)
        said = f"{type(exc).__name__}: {exc}"
        if failure is RayFailure.STALLED:
            raise PipelineError(
                f"the pipeline made no progress for {options.stall_timeout_s:g} s "
                f"(ray.stall_timeout_s) and was stopped; committed rows are kept, run the same "
                f"command again to resume. Ray said: {said.splitlines()[0][:300]}"
            ) from exc
        if failure is RayFailure.POOL_NOT_STARTED:
            raise PipelineError(
                f"the replica pool did not start within {options.min_replicas_timeout_s:g} s "
                f"(ray.min_replicas_timeout_s): the cluster cannot host it. {said[:300]}"
            ) from exc
        raise


# Progress per pipeline call, not per block: replicas tell a small actor of each call and a
# driver thread drains it. Ray Data itself reports only finished blocks (128 rows by default),
# and blocks of one call would cost Ray's ~60-110 ms per block on every call; a fire-and-forget
# actor call costs the replica well under a millisecond.


def _progress_counter_class():
    import ray

    @ray.remote
    class ProgressCounterActor:
        """Replicas report here (model loaded, each call done); the driver takes the reports."""

        def __init__(self) -> None:
            self.reports: list[tuple[str, Any]] = []

        def loaded(self, seconds: float) -> None:
            self.reports.append(("loaded", (seconds, time.time())))

        def call_done(self, call: CallDone) -> None:
            self.reports.append(("call", call))

        def take(self) -> list[tuple[str, Any]]:
            """The reports since the last `take`, in arrival order."""
            taken, self.reports = self.reports, []
            return taken

    return ProgressCounterActor


class _LazyActorClass:
    """Defer `@ray.remote` to first use: no ray import or work at module import."""

    def __init__(self, factory):
        self._factory, self._cls = factory, None

    def options(self, **kwargs):
        self._cls = self._cls or self._factory()
        return self._cls.options(**kwargs)


ProgressCounter = _LazyActorClass(_progress_counter_class)


def _pass_copier_class():
    import ray

    @ray.remote(max_restarts=0)
    class PassCopierActor:
        """A `PassCopier` of its own `ManifestPasses` (a reader of the manifest's files)."""

        def __init__(self, out_uri: str, files: list[str], done: set[str], rows_per_pass: int):
            self.copier = PassCopier(out_uri, ManifestPasses(files, done, rows_per_pass))

        def copy(self, number: int) -> list[str]:
            return self.copier.copy(number)

    return PassCopierActor


PassCopierOnRay = _LazyActorClass(_pass_copier_class)


@dataclass(frozen=True)
class CounterReporter:
    """The replica's `batch.actor.Reporter` on Ray: forwards to the counter actor, not
    waiting for it (a lost report costs the bar a step, never the run)."""

    counter: Any  # ProgressCounterActor handle

    def loaded(self, seconds: float) -> None:
        self.counter.loaded.remote(seconds)

    def call_done(self, call: CallDone) -> None:
        self.counter.call_done.remote(call)


class poll_progress:
    """A thread that hands the replicas' reports to `tracker` (and so to the bar)."""

    def __init__(self, counter, tracker: RunProgress, interval_s: float = 0.25):
        self.counter, self.tracker, self.interval_s = counter, tracker, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            self._update()

    def _update(self) -> None:
        import ray

        try:
            reports = ray.get(self.counter.take.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - progress is best effort
            return
        for kind, report in reports:
            if kind == "loaded":
                self.tracker.loaded(*report)
            else:
                self.tracker.call_done(report)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._update()
