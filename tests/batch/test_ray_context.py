"""batch.ray_context: DataContext settings restored after a run; Ray's failures recognised.

Pinned to the installed Ray: the failure tests raise Ray's own exception classes (and, with a
cluster, make Ray raise them), so a Ray upgrade that renames them or rewords the message fails
here rather than in a user's run.
"""

from __future__ import annotations

import inspect
import logging
import os
import time

import pytest

ray = pytest.importorskip("ray")

from ray.data.exceptions import ExecutionTimeoutError  # noqa: E402
from ray.exceptions import GetTimeoutError  # noqa: E402

from sdfleet.batch.ray_context import (  # noqa: E402
    QUIET_LOGGERS,
    RayFailure,
    pipeline_settings,
    ray_data,
    ray_failure,
)

# What Ray 2.60 says when an actor pool does not start in wait_for_min_actors_s
POOL_MESSAGE = (
    "Timed out while starting actors. This may mean that the cluster does not have enough "
    "resources for the requested actor pool."
)


def test_ray_is_the_version_these_checks_were_made_against():
    assert ray.__version__.startswith("2.60."), (
        f"ray {ray.__version__}: check batch.ray_context.ray_failure against this Ray's "
        "ExecutionTimeoutError and actor-pool start timeout, then update this pin"
    )


def test_the_pool_start_message_is_the_one_ray_raises():
    from ray.data._internal.execution.operators import actor_pool_map_operator

    source = inspect.getsource(actor_pool_map_operator)
    assert '"Timed out while starting actors. "' in source
    assert "raise ray.exceptions.GetTimeoutError(" in source


def _raised_from(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("wrapped by a caller") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    "exc,failure",
    [
        (ExecutionTimeoutError("Dataset execution made no progress for at least 1s"), "STALLED"),
        (_raised_from(ExecutionTimeoutError("no progress")), "STALLED"),
        (GetTimeoutError(POOL_MESSAGE), "POOL_NOT_STARTED"),
        (_raised_from(GetTimeoutError(POOL_MESSAGE)), "POOL_NOT_STARTED"),
        (GetTimeoutError("Get timed out: some object(s) not ready."), "OTHER"),  # a ray.get
        (ValueError("Timed out while starting actors"), "OTHER"),  # the words alone: no
        (RuntimeError("made no progress"), "OTHER"),
    ],
)
def test_ray_failure_is_recognised_by_type(exc, failure):
    assert ray_failure(exc) is RayFailure[failure]


def test_settings_are_restored_after_the_block_even_on_error():
    import ray.data

    context = ray.data.DataContext.get_current()
    before = {
        "execution_no_progress_timeout_s": context.execution_no_progress_timeout_s,
        "wait_for_min_actors_s": context.wait_for_min_actors_s,
        "checkpoint_config": context.checkpoint_config,
        "max_errored_blocks": context.max_errored_blocks,
        "enable_progress_bars": context.enable_progress_bars,
    }
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    settings = pipeline_settings(12.0, 3.2, checkpoint_path="/tmp/unused-checkpoint")
    with pytest.raises(KeyError), ray_data(settings) as inside:
        assert inside is ray.data.DataContext.get_current()
        assert inside.execution_no_progress_timeout_s == 12.0
        assert inside.wait_for_min_actors_s == 4  # whole seconds, rounded up
        assert inside.checkpoint_config.checkpoint_path == "/tmp/unused-checkpoint"
        assert logging.getLogger("ray.data").level == logging.WARNING
        raise KeyError("a failing run")
    after = ray.data.DataContext.get_current()
    assert {name: getattr(after, name) for name in before} == before
    assert {name: logging.getLogger(name).level for name in QUIET_LOGGERS} == levels


def test_one_stall_policy_for_both_executors():
    settings = pipeline_settings(600, 600)
    assert "checkpoint_config" not in settings  # clips keep their own status files
    assert settings["max_errored_blocks"] == 0  # a lost block is never hidden
    assert pipeline_settings(600, 600, "/x").keys() - settings.keys() == {"checkpoint_config"}


def test_a_misspelt_setting_is_refused():
    with pytest.raises(ValueError, match="no field"), ray_data({"execution_no_progres_s": 1}):
        pass


# ---------------------------------------------------------------------------- real Ray


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # ours, not a running one
    yield ray
    ray.shutdown()


def _sleep_batch(batch):
    time.sleep(30)
    return batch


@pytest.mark.ray
@pytest.mark.slow
def test_a_real_stall_is_recognised(local_ray):
    import ray.data

    with ray_data(pipeline_settings(stall_timeout_s=2, start_timeout_s=60)):
        dataset = ray.data.range(2, override_num_blocks=1).map_batches(_sleep_batch)
        with pytest.raises(Exception) as info:
            dataset.take_all()
    assert ray_failure(info.value) is RayFailure.STALLED, repr(info.value)


class _Identity:
    def __call__(self, batch):
        return batch


@pytest.mark.ray
@pytest.mark.slow
def test_a_real_pool_that_cannot_start_is_recognised(local_ray):
    import ray.data

    with ray_data(pipeline_settings(stall_timeout_s=120, start_timeout_s=2)):
        dataset = ray.data.range(2).map_batches(
            _Identity,
            compute=ray.data.ActorPoolStrategy(size=1),
            resources={"no-such-resource": 1},  # no node has it: the actor never starts
        )
        with pytest.raises(Exception) as info:
            dataset.take_all()
    assert ray_failure(info.value) is RayFailure.POOL_NOT_STARTED, repr(info.value)


ARENA_PROBE = """
import ctypes, os, sys, tempfile, threading
from sdfleet.batch.ray_context import limit_malloc_arenas
capped = limit_malloc_arenas()
barrier = threading.Barrier(9)
def allocate():
    kept = [bytearray(4096) for _ in range(2000)]
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
barrier.wait()  # eight threads allocating at once: each would get an arena of its own
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
path = os.path.join(tempfile.mkdtemp(), "malloc.xml")
stream = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(capped, open(path).read().count("<heap nr="))
for thread in threads:
    thread.join()
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc arenas")
@pytest.mark.parametrize(
    ("env", "expected"), [({}, "True 2"), ({"MALLOC_ARENA_MAX": "4"}, "False 4")]
)
def test_the_driver_caps_its_malloc_arenas_unless_the_user_set_them(env, expected):
    """Ray Data's threads, new in every pass, each took an arena and kept its freed memory:
    the driver's RSS grew pass after pass. Capped, eight busy threads share two."""
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE], env=environ, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected.split()
