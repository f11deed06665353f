"""The `ray` executor under faults: a cluster already running on the machine, errors the driver
must find before any actor starts, two runs into one OUT, a full disk inside a replica.

The driver checks need no Ray (they run before it starts: the tests say so by asserting Ray
was never initialised); the rest start Ray and are marked `ray` and `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sdfleet.batch.errors import ConfigError, StorageError
from sdfleet.batch.pool import NodeResources
from sdfleet.batch.ray_runner import check_cluster_device
from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_CRASH, EXIT_OK
from tests.batch.test_ray import rows, write_job
from tests.jobs.test_faults_out import start_run, wait_until_held

REPO = Path(__file__).resolve().parents[2]


def run(job: Path, out: Path, *extra: str) -> int:
    return main(["run", str(job), "--out", str(out), "--no-progress", *extra])


def output_counts(out: Path) -> Counter:
    return Counter(r["output_id"] for r in pq.read_table(out / "results").to_pylist())


# ---------------------------------------------------------------------------- driver checks


def pipeline_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "pipe"))


def break_config(folder: Path) -> None:
    (folder / "unet" / "config.json").unlink()


def pickle_weights(folder: Path) -> None:
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("hub", "hub id 'nobody-here/no-such-model' is not in the local Hugging Face cache"),
        ("cuda", "device: 'cuda', but this machine has 0 usable CUDA GPU(s)"),
        ("config", "is missing unet/config.json (model_index.json names unet:"),
        ("pickled", "vae/ has no .safetensors weights, only pickled"),
    ],
)
def test_model_and_device_errors_are_the_same_on_both_executors_before_ray(
    tiny_dir, tmp_path, monkeypatch, capsys, case, said
):
    """The same one-line message and exit 2 on `local` and `ray`, with Ray never started."""
    import ray
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fields = {"model": "nobody-here/no-such-model"} if case == "hub" else {}
    if case == "cuda":
        fields = {"device": "cuda"}
    if case in ("config", "pickled"):
        folder = pipeline_copy(tiny_dir, tmp_path)
        (break_config if case == "config" else pickle_weights)(folder)
        fields = {"model": str(folder)}
    job = write_job(tmp_path, rows(2), **fields)
    messages = []
    for executor in ("local", "ray"):
        assert run(job, tmp_path / f"out-{executor}", "--executor", executor) == EXIT_CONFIG
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
        messages.append(err)
    assert messages[0] == messages[1].replace("out-ray", "out-local")
    assert not ray.is_initialized()


def test_a_joined_cluster_without_gpus_refuses_a_cuda_job():
    nodes = [NodeResources("a", "10.0.0.1", 8, 0), NodeResources("b", "10.0.0.2", 8, 0)]
    with pytest.raises(ConfigError, match=r"device: 'cuda:0', but the Ray cluster has 0 GPUs"):
        check_cluster_device("cuda:0", nodes)
    check_cluster_device("cpu", nodes)
    check_cluster_device("cuda", [NodeResources("g", "10.0.0.3", 8, 1)])


def test_a_replicas_sdfleet_error_comes_out_of_rays_wrapping():
    from ray.exceptions import RayTaskError, UserCodeException

    from sdfleet.batch.ray_context import sdfleet_cause

    original = StorageError("cannot write OUT/images/a.png: No space left on device")
    wrapped = RayTaskError("map_batches", "Traceback ...", original).as_instanceof_cause()
    try:
        try:
            raise wrapped
        except Exception as exc:
            raise UserCodeException("UDF failed") from exc
    except UserCodeException as outer:
        assert sdfleet_cause(outer) is original
    assert sdfleet_cause(RuntimeError("other")) is None


# ---------------------------------------------------------------------------- a running cluster


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A user's `ray start --head --num-cpus 2` on this machine (the default temp dir, so it
    is the cluster a plain `ray.init()` finds). Started with --block and ended by its pid:
    `ray stop` would end every Ray process on the machine, other runs' included."""
    from ray._common.utils import get_ray_address_file

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = free_port()
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--disable-usage-stats",
        ]
        + ["--include-dashboard", "false", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"RAY_AUTH_MODE": "disabled"},
    )
    address_file = Path(get_ray_address_file(None))
    try:
        yield wait_for_head(address_file, port, head)
    finally:
        head.terminate()  # --block: its Ray processes are ended with it
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        if address_file.exists() and address_file.read_text().strip().endswith(f":{port}"):
            address_file.unlink()  # as `ray stop` does


def wait_for_head(address_file: Path, port: int, head: subprocess.Popen) -> tuple[str, str]:
    """(address, the head's node id), once `ray start` has named it and a driver can join."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        address = address_file.read_text().strip() if address_file.exists() else ""
        if address.endswith(f":{port}"):
            probe = (
                f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
                "print(ray.get_runtime_context().get_node_id())"
            )
            done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
            if done.returncode == 0:
                return address, done.stdout.strip().splitlines()[-1]
        time.sleep(2)
    raise AssertionError(f"the head on port {port} did not come up")


def run_subprocess(job: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`sdfleet run` in a fresh process (Ray is per process)."""
    argv = [sys.executable, "-m", "sdfleet.jobs.cli", "run", str(job), "--out", str(out)]
    return subprocess.run(
        [*argv, "--no-progress", *extra], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def node_ids(out: Path) -> set[str]:
    return {r["ray_node_id"] for r in pq.read_table(out / "results").to_pylist()}


@pytest.mark.ray
@pytest.mark.slow
def test_with_a_cluster_running_a_run_without_address_starts_its_own(
    ray_head, tiny_dir, sdfleet_cache, tmp_path
):
    """Acceptance: `ray start --head` on the machine, `sdfleet run` without --address works,
    on a private instance (not on the cluster nobody named)."""
    _, head_node = ray_head
    job, out = write_job(tmp_path, rows(4)), tmp_path / "out"
    done = run_subprocess(job, out)
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    assert "num_cpus and num_gpus must not be provided" not in done.stderr
    assert set(output_counts(out).values()) == {1} and len(output_counts(out)) == 4
    assert head_node not in node_ids(out)


@pytest.mark.ray
@pytest.mark.slow
def test_address_auto_joins_the_running_cluster_on_purpose(
    ray_head, tiny_dir, sdfleet_cache, tmp_path
):
    _, head_node = ray_head
    job, out = write_job(tmp_path, rows(4)), tmp_path / "out"
    done = run_subprocess(job, out, "--address", "auto")
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    assert node_ids(out) == {head_node}


# ---------------------------------------------------------------------------- one OUT, full disk


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_runs_into_one_out_never_commit_a_row_twice(
    tiny_dir, sdfleet_cache, tmp_path, capsys, monkeypatch
):
    """The reported double commit: a second run while the first holds OUT is refused (exit 2,
    naming the first); the first finishes with every output once; a rerun adds nothing."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    manifest = rows(8)
    job, out = write_job(tmp_path, manifest), tmp_path / "out"
    first = start_run(job, out, {"sleep_s": 1.0})
    wait_until_held(out, first)
    assert run(job, out) == EXIT_CONFIG
    assert f"in use by another run: pid {first.pid}" in capsys.readouterr().err
    assert first.wait(timeout=600) == EXIT_OK, first.communicate()
    assert output_counts(out) == Counter({r["id"]: 1 for r in manifest})
    done = run_subprocess(job, out)
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    assert output_counts(out) == Counter({r["id"]: 1 for r in manifest})
    assert json.loads((out / "summary.json").read_text())["generated_this_run"] == 0


@pytest.mark.ray
@pytest.mark.slow
def test_a_full_disk_in_a_replica_stops_with_the_message_and_resumes(
    tiny_dir, sdfleet_cache, tmp_path, capsys, monkeypatch
):
    from tests.batch.faults import faulty_actor

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    manifest = rows(8)
    job, out = write_job(tmp_path, manifest), tmp_path / "out"
    hooks = {"full_disk_on_id": "r005", "full_disk_marker": str(tmp_path / "once")}
    argv = ["run", str(job), "--out", str(out), "--no-progress"]
    try:
        assert main(argv, faulty_actor(hooks)) == EXIT_CRASH
        err = capsys.readouterr().err
        assert "sdfleet: stopped: cannot write" in err and "r005.png: No space left" in err
        # one line of ours; a line Ray's log monitor forwards from its own processes
        # ("(pid=gcs_server) ... Failed to kill actor" as the pool is torn down under load)
        # is Ray's, not the run's message
        ours = [line for line in err.splitlines() if not line.startswith("(")]
        assert "Traceback" not in err and len(ours) == 1, err
        assert main(argv, faulty_actor(hooks)) == EXIT_OK
    finally:
        import ray

        ray.shutdown()
    assert output_counts(out) == Counter({r["id"]: 1 for r in manifest})
    assert not list(out.rglob("*.tmp"))
