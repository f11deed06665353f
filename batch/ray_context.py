"""The Ray connection and Ray Data's settings, for both executors (batch rows and clips).

- `connect` joins a cluster (``--address`` / ``RAY_ADDRESS``; ``auto``: the one running on this
  machine) or starts a private local one, even beside a running cluster.
- `pipeline_settings` is the one stall policy: how long a pipeline may make no progress, how
  long its actor pool may take to start (model loads included), no dropped blocks, no bars.
- `ray_data` applies such settings to the process-wide `DataContext` for one run and puts
  back every field it changed on exit (and Ray Data's log levels), so a batch run never leaves
  its checkpoint or timeouts to a clip run that follows in the same process.
- `ray_failure` is the one place that recognises Ray's failures (checked against Ray 2.60,
  see tests/batch/test_ray_context.py); `sdfleet_cause` finds an sdfleet error a replica
  raised inside one.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sdfleet.batch.errors import ConfigError, SdfleetError
from sdfleet.batch.pool import NodeResources
from sdfleet.batch.ray_stderr import filter_ray_noise

logger = logging.getLogger(__name__)

# Ray Data logs every execution start/finish at INFO and warns that its own bars are off (the
# CLI draws one bar); keep its warnings about real trouble.
QUIET_LOGGERS = {
    "ray.data": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,
    # a failed block is logged with Ray's internal traceback; the driver reports the failure
    # itself (the replica's own message, or the exception with its traceback)
    "ray.data._internal.execution.streaming_executor_state": logging.CRITICAL,
    # with raise_original_map_exception a replica's error is not a UserCodeException, and Ray
    # Data would log it as its own internal failure, with the whole stack
    "ray.data.exceptions": logging.CRITICAL,
}


DRIVER_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = DRIVER_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas in this process (mallopt M_ARENA_MAX) before Ray starts its
    threads. glibc gives threads arenas of their own (up to 8 a core) and keeps what each one
    frees; Ray Data's threads, new in every execution, grew the driver's RSS pass after pass
    (+16 MB over a 300k-row run in 10 passes, none with 2 arenas, at the same images/s). A
    user's MALLOC_ARENA_MAX is left alone, as is a C library without mallopt. True if set."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(-8, arenas) == 1  # -8: M_ARENA_MAX in glibc's malloc.h


def release_freed_memory() -> None:
    """Give back to the system what this process has freed but still holds: Arrow's pool keeps
    freed buffers for reuse and glibc keeps freed pages in its arenas, both counted in RSS.
    The driver calls it between phases of a run (after validation, after each pass), when
    nothing large is live, so one phase's leftovers do not raise the next one's peak."""
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def connect(address: str | None) -> None:
    """Join `address` / RAY_ADDRESS, or start a private local instance; reuse an initialised
    one. With neither, the instance is private even when a cluster runs on this machine (a
    user's ``ray start --head``): a run never lands on a cluster nobody named. ``auto`` (Ray's
    word) joins the cluster running here on purpose."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local instance
    # A local instance gets one logical CPU more than the machine has: Ray Data's light tasks
    # (file listing, reads, the checkpoint filter, writes) need slots of their own beside the
    # replica, which uses every core through torch threads, or the pipeline deadlocks.
    num_cpus = None if address else (os.cpu_count() or 1) + 1
    # ray.init replaces the SIGTERM handler with sys.exit(15); the command line's own (SIGTERM
    # as Ctrl-C: statuses written, exit 1) stays
    sigterm = signal.getsignal(signal.SIGTERM)
    limit_malloc_arenas()  # the driver's memory, flat over the passes of a long manifest
    try:
        ray.init(
            address=address or "local",  # None would join a running cluster, then refuse num_cpus
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot join the Ray cluster at {address!r}: {exc}. Check the "
            "address (ray status on the head prints it) or drop --address to "
            "start a local instance."
        ) from exc
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)
    filter_ray_noise()  # `batch.ray_stderr`: Ray's one harmless ERROR line per run


def alive_nodes() -> list[NodeResources]:
    import ray

    return [
        NodeResources(
            node_id=n["NodeID"],
            address=n["NodeManagerAddress"],
            cpus=n["Resources"].get("CPU", 0.0),
            gpus=n["Resources"].get("GPU", 0.0),
        )
        for n in ray.nodes()
        if n["Alive"]
    ]


def pipeline_settings(
    stall_timeout_s: float,
    start_timeout_s: float,
    checkpoint_path: str | None = None,
    input_has_committed: bool = True,
) -> dict[str, Any]:
    """DataContext fields for one sdfleet pipeline: stopped after `stall_timeout_s` without
    progress, and when its actor pool is not up within `start_timeout_s`; with
    `checkpoint_path`, committed ids are recorded there and skipped on a rerun.
    `input_has_committed` False: the input holds no committed id (a run's passes), so Ray's
    filter is left out and only its clean-up of a crashed write runs (`batch.ray_checkpoint`)."""
    settings: dict[str, Any] = {
        "execution_no_progress_timeout_s": stall_timeout_s,
        "wait_for_min_actors_s": math.ceil(start_timeout_s),  # Ray: whole seconds, 0 = off
        "max_errored_blocks": 0,  # never drop a block silently: rows fail inside the actor
        "enable_progress_bars": False,  # the CLI shows one bar with images/s and ETA
        "print_on_execution_start": False,
        # a replica's own error (an image write on a full disk, say) reaches the driver as
        # itself: wrapped in a UserCodeException it would be pickled without its __cause__
        "raise_original_map_exception": True,
    }
    if checkpoint_path is not None:
        from ray.data.checkpoint import CheckpointConfig

        manager = None
        if not input_has_committed:
            from sdfleet.batch.ray_checkpoint import CleanOnlyCheckpoint

            manager = CleanOnlyCheckpoint
        settings["checkpoint_config"] = CheckpointConfig(
            id_column="id",
            checkpoint_path=checkpoint_path,
            delete_checkpoint_on_success=False,
            checkpoint_manager_cls=manager,
        )
    return settings


@contextmanager
def ray_data(settings: Mapping[str, Any]) -> Iterator[Any]:
    """Set `settings` on the current DataContext (and quiet Ray Data's INFO logs) while the
    block runs; every field and log level is put back as it was on exit, error or not.
    Datasets must be built inside the block: they copy the context when they are made."""
    import ray.data

    context = ray.data.DataContext.get_current()
    unknown = [name for name in settings if not hasattr(context, name)]
    if unknown:  # a typo would otherwise set a new attribute Ray never reads
        raise ValueError(f"DataContext has no field(s) {unknown} (ray {ray.__version__})")
    saved = {name: getattr(context, name) for name in settings}
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    try:
        for name, value in settings.items():
            setattr(context, name, value)
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
        yield context
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class RayFailure(enum.Enum):
    """What stopped a Ray Data run, as far as sdfleet tells them apart."""

    STALLED = "stalled"  # no progress for execution_no_progress_timeout_s
    POOL_NOT_STARTED = "pool_not_started"  # actors not up within wait_for_min_actors_s
    OTHER = "other"


def ray_failure(exc: BaseException) -> RayFailure:
    """Which failure `exc` (or an exception it was raised from) is.

    Ray 2.60 raises `ray.data.exceptions.ExecutionTimeoutError` for a stall, and a
    `ray.exceptions.GetTimeoutError` saying "Timed out while starting actors" when the pool
    does not start (the type alone is also any ``ray.get`` timeout, hence the message).
    """
    from ray.data.exceptions import ExecutionTimeoutError
    from ray.exceptions import GetTimeoutError

    for link in _chain(exc):
        if isinstance(link, ExecutionTimeoutError):
            return RayFailure.STALLED
        if isinstance(link, GetTimeoutError) and "starting actors" in str(link).lower():
            return RayFailure.POOL_NOT_STARTED
    return RayFailure.OTHER


def sdfleet_cause(exc: BaseException) -> SdfleetError | None:
    """The sdfleet error a Ray failure carries from a replica (a `StorageError` of an image
    write, say), or None. Ray wraps it (`RayTaskError.cause`, in a `UserCodeException`);
    its own text is the message the local executor prints."""
    from ray.exceptions import RayTaskError

    for link in _chain(exc):
        found = link.cause if isinstance(link, RayTaskError) else link
        if isinstance(found, SdfleetError) and not isinstance(found, RayTaskError):
            return _without_ray_advice(found)
    return None


RAY_RETRY_ADVICE = "\nFailed to apply UDF transform"  # Ray Data appends it to a UDF's error


def _without_ray_advice(error: SdfleetError) -> SdfleetError:
    """The error with the retry advice Ray Data appends to a failed UDF's message cut off."""
    if error.args and isinstance(error.args[0], str) and RAY_RETRY_ADVICE in error.args[0]:
        error.args = (error.args[0].split(RAY_RETRY_ADVICE, 1)[0], *error.args[1:])
    return error


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        # a RayTaskError holds the replica's exception as `.cause` (a UserCodeException whose
        # own __cause__ is the real error), not as its __cause__
        wrapped = getattr(link, "cause", None)
        wrapped = wrapped if isinstance(wrapped, BaseException) else None
        link = link.__cause__ or wrapped or link.__context__
