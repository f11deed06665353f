"""Sizing the replica pool from the cluster's resources (pure; no ray import).

One replica per GPU by default (or `replicas_per_gpu` per GPU, fractional GPUs); with no GPU,
one replica per machine. Either way some CPUs stay free for Ray Data's own tasks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.paths import is_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeResources:
    node_id: str
    address: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class PoolPlan:
    replicas: int
    num_gpus: float  # per replica
    num_cpus: float  # per replica, always explicit


def holds_gpu(device: str | None) -> bool:
    """Whether a replica with this `device` setting takes a GPU (auto does where there is one)."""
    return device in (None, "auto") or device.startswith("cuda")


def plan_pool(
    nodes: list[NodeResources],
    replicas: int | None = None,
    replicas_per_gpu: float = 1,
    num_cpus_per_replica: float = 1,
    allow_fewer: bool = False,
    reserved_cpus: int = 1,
    use_gpus: bool = True,
) -> PoolPlan:
    """Choose (N, gpus, cpus) per replica; over-asking fails now, naming what exists.

    Default N: one replica per GPU (times `replicas_per_gpu`); on a CPU-only cluster, or for a
    job whose device is the CPU (`use_gpus` false: it holds no GPU), one per machine, since
    one torch process already uses every core of its machine.
    """
    has_gpus = use_gpus and sum(n.gpus for n in nodes) > 0
    gpus_each = 1 / replicas_per_gpu if has_gpus else 0.0
    capacity = pool_capacity(nodes, gpus_each, num_cpus_per_replica, reserved_cpus)
    if replicas is not None:
        wanted = replicas
    elif gpus_each:
        wanted = capacity
    else:
        wanted = min(capacity, len({n.address for n in nodes if n.cpus >= num_cpus_per_replica}))
    if wanted > capacity or capacity == 0:
        if not allow_fewer or capacity == 0:
            message = _over_ask_message(
                nodes, wanted, gpus_each, num_cpus_per_replica, capacity, reserved_cpus
            )
            raise ConfigError(message)
        logger.warning("asked for %d replicas, running %d (allow_fewer_replicas)", wanted, capacity)
        wanted = capacity
    return PoolPlan(replicas=wanted, num_gpus=gpus_each, num_cpus=num_cpus_per_replica)


def pool_capacity(
    nodes: list[NodeResources], gpus_each: float, cpus_each: float, reserved_cpus: int = 1
) -> int:
    """Replicas that fit node by node while `reserved_cpus` CPUs stay free for Ray Data's
    own tasks: reading, writing and (when resuming) the checkpoint filter, which holds a CPU
    for the whole run. An actor pool that takes every CPU starves them and hangs."""
    per_node = 0
    for node in nodes:
        by_cpu = math.floor(node.cpus / cpus_each + 1e-9)
        by_gpu = math.floor(node.gpus / gpus_each + 1e-9) if gpus_each else by_cpu
        per_node += min(by_cpu, by_gpu)
    spare = sum(n.cpus for n in nodes) - reserved_cpus
    return max(0, min(per_node, math.floor(spare / cpus_each + 1e-9)))


def _over_ask_message(nodes, wanted, gpus_each, cpus_each, capacity, reserved_cpus) -> str:
    per_node = ", ".join(f"{n.address}: {n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes)
    asked = f"{wanted} replica(s) x ({gpus_each:g} GPU, {cpus_each:g} CPU)"
    return (
        f"ray: asked for {asked}, but the cluster fits {capacity} ({reserved_cpus} CPU kept "
        f"for reading, writing and resuming); cluster: {per_node or 'no nodes'}. Lower "
        "`ray.replicas` or "
        "`ray.num_cpus_per_replica`, add nodes, or set `ray.allow_fewer_replicas: true` to run "
        "on what exists."
    )


SHARED_STORAGE_FIX = (
    "Use shared storage every node reads and writes: an s3://, gs:// or abfs:// URI, or - for a "
    "network mount at the same place on every node - the path written as file:///mnt/..."
)


def check_shared_storage(
    nodes: list[NodeResources], paths: dict[str, str], fix: str = SHARED_STORAGE_FIX
) -> None:
    """On a cluster spanning machines, every node must see the manifest, outputs and checkpoint
    (a path written as a URI, file:///... included, is taken as shared)."""
    hosts = {n.address for n in nodes}
    if len(hosts) <= 1:
        return
    local = {name: p for name, p in paths.items() if p and not is_uri(p)}
    if local:
        shown = ", ".join(f"{k}={v!r}" for k, v in local.items())
        raise ConfigError(
            f"the Ray cluster spans {len(hosts)} machines ({', '.join(sorted(hosts))}), but "
            f"{shown} is a local path that the other machines cannot see. {fix}"
        )
