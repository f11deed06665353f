"""The `ray` executor: pinning, exactly-once resume, faults, over-asking, parity with `local`.

Each test starts its own Ray instance or multi-node `ray.cluster_utils.Cluster` on this machine
(fake GPUs), so they are marked `ray` and `slow`; `make test` (CI) runs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.batch import ray_runner
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.pool import NodeResources, check_shared_storage, plan_pool
from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_CRASH, EXIT_OK, EXIT_ROWS_FAILED
from tests.batch.faults import faulty_actor

ray_test = [pytest.mark.ray, pytest.mark.slow]


def write_job(tmp_path: Path, rows: list[dict], ray_options: dict | None = None, **fields) -> Path:
    pq.write_table(table_from_rows(rows), tmp_path / "m.parquet")
    job = {
        "manifest": "m.parquet",
        "executor": "ray",
        "seed": 11,
        "batch_size": 2,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
        "ray": {"rows_per_block": 4, **(ray_options or {})},
    } | fields
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i:03d}", "prompt": f"prompt {i}", "label": i % 3} for i in range(n)]


def run(job: Path, out: Path, *extra: str, hooks: dict | None = None) -> int:
    """`sdfleet run`; with `hooks`, its replica actor injects those faults (tests/batch/faults)."""
    actor_class = faulty_actor(hooks) if hooks else None
    return main(["run", str(job), "--out", str(out), "--no-progress", *extra], actor_class)


def results(out: Path) -> list[dict]:
    return pq.read_table(out / "results").to_pylist()


def images(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())}


@pytest.fixture
def local_ray(tiny_dir, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # ours, never a running one
    yield
    ray.shutdown()


@pytest.fixture
def cluster(tiny_dir, monkeypatch):
    """Head (CPUs for reads) + two worker nodes declaring fake GPUs."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    workers = [cluster.add_node(num_cpus=2, num_gpus=2), cluster.add_node(num_cpus=2, num_gpus=1)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


# --- pure pool sizing -------------------------------------------------------------------------


NODES = [NodeResources("a", "10.0.0.1", 8, 1), NodeResources("b", "10.0.0.2", 8, 1)]


def test_pool_defaults_to_one_replica_per_gpu():
    plan = plan_pool(NODES)
    assert (plan.replicas, plan.num_gpus, plan.num_cpus) == (2, 1, 1)
    assert plan_pool(NODES, replicas_per_gpu=2).replicas == 4
    assert plan_pool(NODES, replicas_per_gpu=2).num_gpus == 0.5


def test_pool_on_cpus_is_one_replica_per_machine_and_keeps_cpus_for_ray_data():
    one_machine = [NodeResources("a", "h", 4, 0)]
    assert plan_pool(one_machine).replicas == 1
    two_machines = [NodeResources("a", "h1", 4, 0), NodeResources("b", "h2", 4, 0)]
    assert plan_pool(two_machines).replicas == 2
    assert plan_pool(one_machine, replicas=3).replicas == 3  # 4 CPUs, one kept for reads
    with pytest.raises(ConfigError, match="fits 3"):
        plan_pool(one_machine, replicas=4)
    with pytest.raises(ConfigError, match="fits 0 \\(2 CPU kept"):  # resuming keeps a 2nd CPU
        plan_pool([NodeResources("a", "h", 2, 0)], reserved_cpus=2)


def test_a_cpu_job_on_a_gpu_cluster_holds_no_gpu():
    plan = plan_pool(NODES, use_gpus=False)  # device: cpu
    assert (plan.replicas, plan.num_gpus) == (2, 0.0)  # one per machine, like a CPU cluster
    assert plan_pool(NODES, replicas=3, use_gpus=False).replicas == 3  # not capped by GPUs


def test_over_asking_names_resources_and_fix():
    with pytest.raises(ConfigError) as info:
        plan_pool(NODES, replicas=4)
    text = str(info.value)
    assert "4 replica(s) x (1 GPU, 1 CPU)" in text and "fits 2" in text
    assert "10.0.0.1: 8 CPU 1 GPU" in text and "allow_fewer_replicas" in text
    assert plan_pool(NODES, replicas=4, allow_fewer=True).replicas == 2


def test_local_paths_are_refused_on_a_multi_machine_cluster():
    with pytest.raises(ConfigError, match="spans 2 machines.*out='/data/out'"):
        check_shared_storage(NODES, {"out": "/data/out", "manifest": "s3://b/m.parquet"})
    check_shared_storage(NODES, {"out": "s3://b/out", "manifest": "file:///mnt/m.parquet"})
    check_shared_storage(NODES[:1], {"out": "/data/out"})  # one machine: fine


def test_the_local_executor_runs_the_actor_class_it_is_given(tiny_dir, tmp_path):
    counts = tmp_path / "generated.txt"
    job = write_job(tmp_path, rows(3), executor="local")
    assert run(job, tmp_path / "out", hooks={"count_file": str(counts)}) == EXIT_OK
    assert sorted(counts.read_text().split()) == ["r000", "r001", "r002"]


# --- on Ray -------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_ray_is_the_default_and_matches_local_images(local_ray, tmp_path):
    example = Path(__file__).resolve().parents[2] / "jobs" / "examples" / "marketing.yaml"
    assert run(example, tmp_path / "ray") == EXIT_OK
    assert run(example, tmp_path / "local", "--executor", "local") == EXIT_OK
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["executor"] == "ray" and summary["ok"] == 16
    assert images(tmp_path / "ray") == images(tmp_path / "local")


@pytest.mark.ray
@pytest.mark.slow
def test_poison_row_fails_alone(local_ray, tmp_path, capsys):
    manifest = rows(6) + [{"id": "poison", "prompt": "x", "init_image": b"\x89PNG corrupt"}]
    out = tmp_path / "out"
    assert run(write_job(tmp_path, manifest), out) == EXIT_ROWS_FAILED
    by_id = {r["output_id"]: r for r in results(out)}
    assert len(by_id) == 7 and by_id["poison"]["status"] == "error"
    assert by_id["poison"]["error"].startswith("init_image: UnidentifiedImageError")
    assert all(r["status"] == "ok" for k, r in by_id.items() if k != "poison")
    assert "error poison" in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.slow
def test_pinning_on_two_nodes_with_fake_gpus(cluster, tmp_path):
    out = tmp_path / "out"
    assert run(write_job(tmp_path, rows(24), {"num_cpus_per_replica": 0.5}), out) == EXIT_OK
    found = results(out)
    assert len(found) == 24
    placements = {(r["ray_node_id"], r["worker"]): r["gpu_ids"] for r in found}
    workers = {w for _, w in placements}
    assert len(workers) == 3, placements  # one replica per fake GPU: 2 + 1
    per_node: dict[str, set[str]] = {}
    for (node, _), gpu in placements.items():
        per_node.setdefault(node, set()).add(gpu)
    assert sorted(len(g) for g in per_node.values()) == [1, 2]  # distinct devices per node
    assert all(g in {"0", "1"} for g in placements.values())
    assert len(Counter(r["worker"] for r in found)) == 3  # rows spread over every replica


@pytest.mark.ray
@pytest.mark.slow
def test_over_asking_gpus_fails_fast(cluster, tmp_path, capsys):
    start = time.monotonic()
    code = run(write_job(tmp_path, rows(4), {"replicas": 4}), tmp_path / "out")
    assert code == EXIT_CONFIG and time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "asked for 4 replica(s) x (1 GPU, 1 CPU)" in err and "fits 3" in err


@pytest.mark.ray
@pytest.mark.slow
def test_actor_killed_mid_batch_and_node_removed(cluster, tmp_path):
    cluster_obj, workers = cluster
    marker = tmp_path / "killed-once"
    hooks = {"kill_on_id": "r005", "kill_marker": str(marker), "sleep_s": 0.3}
    job = write_job(
        tmp_path,
        rows(30),
        {"num_cpus_per_replica": 0.5, "replicas": 2, "allow_fewer_replicas": True},
    )
    out = tmp_path / "out"

    removed_mid_run = threading.Event()

    def remove_a_worker_when_half_done():
        while len(list((out / "images").glob("*.png"))) < 12 if (out / "images").exists() else True:
            time.sleep(0.2)
        cluster_obj.remove_node(workers[1])
        removed_mid_run.set()

    remover = threading.Thread(target=remove_a_worker_when_half_done, daemon=True)
    remover.start()
    assert run(job, out, hooks=hooks) == EXIT_OK
    assert removed_mid_run.is_set()  # the node went away before the job finished
    assert marker.exists()  # the actor really died once
    found = Counter(r["output_id"] for r in results(out))
    assert set(found) == {f"r{i:03d}" for i in range(30)}
    assert max(found.values()) == 1  # every output exactly once


@pytest.mark.ray
@pytest.mark.slow
def test_stalled_pipeline_fails_with_a_message(local_ray, tmp_path, capsys):
    job = write_job(tmp_path, rows(2), {"stall_timeout_s": 8})
    start = time.monotonic()
    assert (
        run(job, tmp_path / "out", hooks={"sleep_s": 60}) == EXIT_CRASH
    )  # a runtime stop, not a bad job
    assert time.monotonic() - start < 55
    assert "made no progress for 8 s" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_driver_sigkill_then_rerun_resumes_exactly_once(tiny_dir, tmp_path, sdfleet_cache):
    manifest = rows(40)
    job = write_job(tmp_path, manifest)
    out, counts = tmp_path / "out", tmp_path / "generated.txt"
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "SDFLEET_CACHE": str(sdfleet_cache)}
    hooks = {"count_file": str(counts), "sleep_s": 0.4}
    command = [
        sys.executable,
        str(Path(__file__).with_name("faults.py")),  # `sdfleet` with a counting actor
        json.dumps(hooks),
        "run",
        str(job),
        "--out",
        str(out),
        "--no-progress",
    ]
    first = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        wait_for(lambda: len(list((out / "_checkpoint").glob("*.parquet"))) >= 2, 240)
        first.send_signal(signal.SIGKILL)  # the driver only
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # agents the dead driver's Ray left behind
    committed = checkpoint_ids(out)
    generated_first = counts.read_text().splitlines()
    assert 0 < len(committed) < 40
    assert subprocess.run(command, env=env, timeout=400).returncode == EXIT_OK
    generated_second = counts.read_text().splitlines()[len(generated_first) :]
    assert not committed & set(generated_second)  # committed rows were not generated again
    found = Counter(r["output_id"] for r in results(out))
    assert set(found) == {r["id"] for r in manifest} and max(found.values()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_already_done_rows"] >= len(committed)
    reference = tmp_path / "reference"
    assert run(job, reference, "--executor", "local") == EXIT_OK
    assert images(out) == images(reference)  # byte-identical to an uninterrupted run


def checkpoint_ids(out: Path) -> set[str]:
    files = list((out / "_checkpoint").glob("*.parquet"))
    return {i for f in files for i in pq.read_table(f).column("id").to_pylist()}


def wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)


def test_keyboard_interrupt_code_is_distinct():
    assert len({EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_ROWS_FAILED}) == 4


def test_compacting_the_checkpoint_keeps_every_id_and_nothing_else(tmp_path):
    """Between passes Ray's one-file-per-write-task checkpoint becomes one file; a pending
    file (Ray's name for a write not yet committed) is neither folded in nor read as done, and
    a crash after the move (ids twice) still reads as each id once."""
    import pyarrow as pa

    from sdfleet.batch.outputs import PENDING_SUFFIX
    from sdfleet.batch.ray_runner import checkpointed_ids, compact_checkpoint

    folder = tmp_path / "_checkpoint"
    folder.mkdir()
    for k in range(5):
        pq.write_table(pa.table({"id": [f"r{k}-{i}" for i in range(3)]}), folder / f"t{k}.parquet")
    pending = f"t9{PENDING_SUFFIX}"
    pq.write_table(pa.table({"id": ["in-flight-0", "in-flight-1"]}), folder / pending)
    before = checkpointed_ids(str(folder))
    assert compact_checkpoint(str(folder)) == 5
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2 and files[1] == pending and files[0].startswith("compact-")
    assert checkpointed_ids(str(folder)) == before and len(before) == 15
    assert not {"in-flight-0", "in-flight-1"} & before  # Ray makes these rows again
    assert not list(tmp_path.glob("_checkpoint.*"))  # the staged copy was moved in
    assert compact_checkpoint(str(folder)) == 0  # one file: nothing to do
    # a crash between the move and the deletes: the ids are there twice, read once
    (folder / "t0.parquet").write_bytes((folder / files[0]).read_bytes())
    assert compact_checkpoint(str(folder)) == 2
    assert checkpointed_ids(str(folder)) == before


def test_pass_copies_replace_each_other_and_a_crashed_runs_go_before_a_one_pass_rerun(tmp_path):
    """Only the pass in flight keeps a copy in OUT/_passes/; a rerun whose rows left fit one
    pass (it reads the manifest itself) removes the copy a crashed run left."""
    import pyarrow as pa

    from sdfleet.batch.outputs import OutputDir
    from sdfleet.batch.ray_runner import ManifestPasses, pass_inputs

    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(10)]}), manifest)
    out = OutputDir(str(tmp_path / "out"))
    seen = []
    for names in pass_inputs(out, [str(manifest)], ManifestPasses([str(manifest)], set(), 4)):
        assert sorted(p.name for p in (tmp_path / "out" / "_passes").iterdir()) == [
            Path(n).name for n in names
        ]
        seen += pq.read_table(names).column("id").to_pylist()
        if len(seen) == 8:
            break  # a crash in the third pass: its copy stays
    assert (tmp_path / "out" / "_passes").exists()
    rest = ManifestPasses([str(manifest)], set(seen), 4)
    assert not rest.many
    assert list(pass_inputs(out, [str(manifest)], rest)) == [[str(manifest)]]
    assert not (tmp_path / "out" / "_passes").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_long_manifest_runs_in_passes_that_resume_like_one_run(
    tiny_dir, sdfleet_cache, tmp_path, monkeypatch
):
    """More rows left than `ray.rows_per_pass`: one Ray Data execution per pass (the driver
    keeps state per block of an execution, so a pass bounds it). A pass that stops (a full
    disk at r006, in the second pass) resumes on the rerun: every output once, the passes'
    copies removed, the same pictures as the local executor."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    manifest = rows(10)
    job = write_job(tmp_path, manifest, {"rows_per_pass": 4, "rows_per_block": 2})
    out = tmp_path / "out"
    hooks = {"full_disk_on_id": "r006", "full_disk_marker": str(tmp_path / "once")}
    try:
        assert run(job, out, hooks=hooks) == EXIT_CRASH
        first = {r["output_id"] for r in results(out)}
        assert {f"r{i:03d}" for i in range(4)} <= first and "r006" not in first
        assert run(job, out, hooks=hooks) == EXIT_OK
    finally:
        ray.shutdown()
    found = Counter(r["output_id"] for r in results(out))
    assert set(found) == {r["id"] for r in manifest} and max(found.values()) == 1
    assert not (out / "_passes").exists()
    # compacted after every pass and after the resumed run (whether its rows left took one
    # pass or two, which depends on when the crash stopped the first run): one file
    checkpoint = list((out / "_checkpoint").glob("*.parquet"))
    assert len(checkpoint) == 1 and checkpoint[0].name.startswith("compact-")
    assert sorted(pq.read_table(checkpoint[0]).column("id").to_pylist()) == sorted(found)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_already_done_rows"] == len(first)
    left = len(manifest) - len(first)
    assert summary["ray"]["passes"] == -(-left // 4)  # 4 rows a pass, or the manifest itself
    assert run(job, tmp_path / "local", "--executor", "local") == EXIT_OK
    assert images(out) == images(tmp_path / "local")


def refuse_in_the_driver(*args, **kwargs):
    raise AssertionError("the driver read the manifest's rows itself")


@pytest.mark.ray
@pytest.mark.slow
def test_a_write_that_crashed_before_its_commit_is_made_again_once_in_passes(
    tiny_dir, sdfleet_cache, tmp_path, monkeypatch
):
    """Ray commits a block in two phases: a pending checkpoint file, the result file, then the
    rename. A run killed in between leaves results Ray deletes before its next execution, so
    those rows are not done: passes (which skip Ray's checkpoint filter, their copies holding
    no committed id) must copy them again, and Ray's clean-up must still run. Every output
    once, the same pictures as the local executor."""
    import pyarrow as pa
    import ray

    from sdfleet.batch.outputs import PENDING_SUFFIX
    from sdfleet.batch.retry import forget_ids

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    manifest = rows(6)
    job = write_job(tmp_path, manifest, {"rows_per_block": 2})
    out = tmp_path / "out"
    try:
        assert run(job, out) == EXIT_OK
        # one committed block taken back to "written, not committed", one to "not run"
        part, gone = sorted((out / "results").glob("*.parquet"))[:2]
        pending_ids = pq.read_table(part).column("id").to_pylist()
        undone = pending_ids + pq.read_table(gone).column("id").to_pylist()
        assert forget_ids(str(out / "_checkpoint"), set(undone)) == len(undone) == 4
        gone.unlink()
        pending = out / "_checkpoint" / f"{part.name[: -len('.parquet')]}{PENDING_SUFFIX}"
        pq.write_table(pa.table({"id": pending_ids}), pending)
        # the rerun's rows left take more than one pass (even were the pending ones done),
        # copied by an actor beside the driver: never in the driver's own process
        write_job(tmp_path, manifest, {"rows_per_block": 2, "rows_per_pass": 1})
        monkeypatch.setattr(ray_runner, "write_pass", refuse_in_the_driver)
        assert run(job, out) == EXIT_OK
    finally:
        ray.shutdown()
    assert not part.exists() and not pending.exists()  # Ray's clean-up ran
    found = Counter(r["output_id"] for r in results(out))
    assert set(found) == {r["id"] for r in manifest} and max(found.values()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_already_done_rows"] == len(manifest) - len(undone)
    assert summary["ray"]["passes"] == len(undone)
    assert run(job, tmp_path / "local", "--executor", "local") == EXIT_OK
    assert images(out) == images(tmp_path / "local")


@pytest.mark.ray
@pytest.mark.slow
def test_a_manifest_of_several_files_runs_on_ray(local_ray, tmp_path):
    """Ray Data lists several files on threads; each thread's import of fsspec's HTTP module
    (which fails here, without aiohttp) once raced into an ImportError that ended the run."""
    folder = tmp_path / "manifest"
    folder.mkdir()
    manifest = rows(8)
    for k in range(4):
        pq.write_table(table_from_rows(manifest[2 * k : 2 * k + 2]), folder / f"part{k}.parquet")
    job = write_job(tmp_path, manifest, manifest="manifest")
    out = tmp_path / "out"
    assert run(job, out) == EXIT_OK
    found = Counter(r["output_id"] for r in results(out))
    assert set(found) == {r["id"] for r in manifest} and max(found.values()) == 1
