"""cluster/: the `ray up` config, the KubeRay RayJob and the local multi-node cluster script.

The YAML tests parse the files and check the structure that matters to sdfleet (GPU workers,
shared storage for outputs and checkpoint, retries that resume); the slow test starts a real
head + worker cluster with the script and looks at it from a driver.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SCRIPT = CLUSTER / "local_cluster.sh"


def pinned_version(name: str) -> str:
    """The version constraints.txt pins for `name`."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


# --- ray-up.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_up() -> dict:
    return yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())


def test_ray_up_has_the_keys_ray_up_expects(ray_up):
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "file_mounts",
    ):
        assert key in ray_up, f"ray-up.yaml lacks {key!r}"
    assert ray_up["provider"]["type"] == "aws"
    assert ray_up["provider"]["region"]


def test_ray_up_passes_the_launchers_own_validation(ray_up):
    """The same steps `ray up` takes before it talks to the cloud: fill in the provider's
    defaults, then validate against Ray's JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(ray_up))


def test_ray_up_head_is_cpu_only_and_a_worker_type_has_gpus(ray_up):
    types = ray_up["available_node_types"]
    head = types[ray_up["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "no node type advertises a GPU"
    for name, node_type in gpu_types.items():
        assert name != ray_up["head_node_type"]
        assert node_type["resources"]["CPU"] >= 2, f"{name}: a replica and a read need CPUs"
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= ray_up["max_workers"]
        assert node_type["node_config"]["InstanceType"]


def test_ray_up_runs_the_pinned_ray_and_installs_sdfleet_on_every_node(ray_up):
    ray_version = pinned_version("ray")
    image = ray_up["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray_version}-py311"), image
    assert image.endswith("-gpu")
    # setup_commands run on every node; they must use what file_mounts puts there.
    setup = " ".join(ray_up["setup_commands"])
    (target,) = ray_up["file_mounts"]
    assert f"{target}/constraints.txt" in setup
    assert "pip install" in setup and "-c " in setup
    assert "download.pytorch.org/whl/cu" in setup, "GPU nodes need torch's CUDA build"
    assert not ray_up.get("head_setup_commands") and not ray_up.get("worker_setup_commands")


def test_ray_up_start_commands(ray_up):
    head = " ".join(ray_up["head_start_ray_commands"])
    worker = " ".join(ray_up["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker


# --- rayjob.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()) if d]


def only(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rayjob(k8s_docs) -> dict:
    return only(k8s_docs, "RayJob")


def pod_specs(rayjob: dict) -> dict[str, dict]:
    """{'head': pod spec, '<worker group>': pod spec, ...}"""
    cluster = rayjob["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def entrypoint_args(rayjob: dict) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def job_file(k8s_docs, rayjob) -> dict:
    """The sdfleet job the entrypoint runs, read from the ConfigMap it mounts."""
    path = entrypoint_args(rayjob)[2]
    head = pod_specs(rayjob)["head"]
    for mount in head["containers"][0]["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
            config_map = only(k8s_docs, "ConfigMap")
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]
            return yaml.safe_load(config_map["data"][Path(path).name])
    raise AssertionError(f"the head pod mounts nothing at {path}")


def test_rayjob_is_a_ray_io_v1_rayjob_in_k8s_job_mode(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    name = rayjob["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47
    spec = rayjob["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["rayClusterSpec"]["rayVersion"] == pinned_version("ray")


def test_rayjob_retries_and_cleans_up(rayjob):
    spec = rayjob["spec"]
    assert spec["backoffLimit"] >= 1, "a lost driver resumes only through a retry"
    assert spec["activeDeadlineSeconds"] > 0
    # KubeRay rejects a TTL without shutdownAfterJobFinishes.
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0


def test_rayjob_entrypoint_is_one_plain_sdfleet_command(rayjob):
    """KubeRay pastes the entrypoint into a shell line; metacharacters would break it."""
    entrypoint = rayjob["spec"]["entrypoint"]
    assert entrypoint.startswith("sdfleet run ")
    assert not set(entrypoint) & set(";|&$`'\"\\<>\n"), entrypoint
    args = entrypoint_args(rayjob)
    assert "--out" in args


def gpus_requested(pod_spec: dict) -> int:
    return int(pod_spec["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))


def test_rayjob_has_gpu_workers_and_a_cpu_only_head(rayjob):
    specs = pod_specs(rayjob)
    assert gpus_requested(specs.pop("head")) == 0
    gpu_groups = [name for name, spec in specs.items() if gpus_requested(spec) >= 1]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    images = {spec["containers"][0]["image"] for spec in pod_specs(rayjob).values()}
    assert len(images) == 1, f"head and workers must run the same image, got {images}"


def test_rayjob_outputs_live_on_a_volume_every_pod_mounts_at_the_same_path(k8s_docs, rayjob):
    out = option(entrypoint_args(rayjob), "--out")
    assert out.startswith("file:///"), "a shared mount is written as a file:// URI"
    out_path = out.removeprefix("file://")
    claims = set()
    for name, spec in pod_specs(rayjob).items():
        mounts = [
            m
            for m in spec["containers"][0]["volumeMounts"]
            if out_path.startswith(m["mountPath"].rstrip("/") + "/")
        ]
        assert mounts, f"{name} pods do not mount the volume under {out_path}"
        volume = next(v for v in spec["volumes"] if v["name"] == mounts[0]["name"])
        claims.add((mounts[0]["mountPath"], volume["persistentVolumeClaim"]["claimName"]))
    assert len(claims) == 1, f"head and workers must mount the same claim at one path: {claims}"
    ((_, claim_name),) = claims
    pvc = only(k8s_docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim_name
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_job_file_is_valid_and_keeps_everything_on_shared_storage(k8s_docs, rayjob):
    from sdfleet.jobs.spec import BatchJob, validate_model

    job = validate_model(BatchJob, job_file(k8s_docs, rayjob), "rayjob.yaml ConfigMap")
    out = option(entrypoint_args(rayjob), "--out")
    # A multi-machine cluster refuses plain local paths: every location must be a URI.
    for name, location in {
        "manifest": job.manifest,
        "checkpoint": job.ray.checkpoint_path,
        "out": out,
    }.items():
        assert location and "://" in location, f"{name}: {location!r} is not a URI"
    assert job.ray.checkpoint_path.startswith(out.rstrip("/") + "/"), "resume state under --out"
    assert job.executor == "ray"


def test_rayjob_storage_documents_can_be_applied_first(k8s_docs):
    """README step 1 applies `-l app.kubernetes.io/component=storage` before the job."""
    by_kind = {
        d["kind"]: d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        for d in k8s_docs
    }
    assert by_kind["PersistentVolumeClaim"] == "storage"
    assert by_kind["RayJob"] != "storage" and by_kind["ConfigMap"] != "storage"


# --- local_cluster.sh: fast checks --------------------------------------------------------------


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def test_local_cluster_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(SCRIPT, os.X_OK), "cluster/local_cluster.sh should be executable"


def test_local_cluster_script_usage_and_bad_input():
    usage = run_script("--help")
    assert usage.returncode == 0
    for command in ("start", "status", "stop", "--gpus-per-worker"):
        assert command in usage.stdout
    unknown = run_script("launch")
    assert unknown.returncode != 0 and "unknown command" in unknown.stderr
    long_dir = run_script("status", "--dir", "/tmp/" + "x" * 60)
    assert long_dir.returncode != 0 and "at most 40" in long_dir.stderr
    bad_number = run_script("start", "--workers", "two")
    assert bad_number.returncode != 0 and "whole number" in bad_number.stderr


def test_local_cluster_status_without_a_cluster():
    state = tempfile.mkdtemp(prefix="sdfc-", dir="/tmp")
    try:
        result = run_script("status", "--dir", state)
        assert result.returncode == 1 and "no cluster runs" in result.stdout
        assert run_script("stop", "--dir", state).returncode == 0
    finally:
        shutil.rmtree(state, ignore_errors=True)


# --- local_cluster.sh: a real cluster -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


NODES_PROBE = """
import json, logging, os, ray
ray.init(logging_level=logging.ERROR, log_to_driver=False)  # RAY_ADDRESS from the environment

@ray.remote(num_gpus=1, num_cpus=0)
def gpu_ids():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_runtime_context().get_node_id()

nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({
    "nodes": [{"id": n["NodeID"], "head": "node:__internal_head__" in n["Resources"],
               "GPU": n["Resources"].get("GPU", 0)} for n in nodes],
    "gpu_task": ray.get(gpu_ids.remote(), timeout=60),
}))
"""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the script targets Linux")
def test_local_cluster_starts_head_and_fake_gpu_worker_then_stops():
    import json

    # A short, private state dir (Ray's unix sockets live under it) and a port of our own, so
    # this cluster cannot clash with another cluster or test on the machine.
    state = tempfile.mkdtemp(prefix="sdfc-", dir="/tmp")
    port = str(free_port())
    try:
        started = run_script(
            "start",
            "--dir",
            state,
            "--port",
            port,
            "--workers",
            "1",
            "--gpus-per-worker",
            "1",
            "--cpus-per-worker",
            "1",
            timeout=300,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        assert "sdfleet run" in started.stdout and "--address" in started.stdout

        address = run_script("address", "--dir", state).stdout.strip()
        assert address.endswith(f":{port}")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_ADDRESS=address, RAY_AUTH_MODE="disabled")
        probe = subprocess.run(
            [sys.executable, "-c", NODES_PROBE],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert len(seen["nodes"]) == 2
        (head,) = [n for n in seen["nodes"] if n["head"]]
        (worker,) = [n for n in seen["nodes"] if not n["head"]]
        assert head["GPU"] == 0 and worker["GPU"] == 1
        # The fake GPU is pinned: the task ran on the worker with its own CUDA_VISIBLE_DEVICES.
        cuda_visible, node_id = seen["gpu_task"]
        assert node_id == worker["id"] and cuda_visible == "0"

        status = run_script("status", "--dir", state)
        assert status.returncode == 0, status.stderr
        assert "0.0/1.0 GPU" in status.stdout, status.stdout  # `ray status` totals
    finally:
        stopped = run_script("stop", "--dir", state, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    leftovers = subprocess.run(["pgrep", "-f", f"temp-dir={state}/"], capture_output=True)
    assert leftovers.stdout == b"", "processes of the stopped cluster are still running"
