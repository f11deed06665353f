"""Sizing the replica pool from the cluster's resources (pure; no ray import).

One replica per GPU by default (or `replicas_per_gpu` per GPU, fractional GPUs); with no GPU, as
many CPU replicas as fit while one CPU stays free for the read and write tasks (an actor pool
that takes every CPU starves the reads and hangs).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from batch.errors import ConfigError

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


def plan_pool(
    nodes: list[NodeResources],
    replicas: int | None = None,
    replicas_per_gpu: float = 1,
    num_cpus_per_replica: float = 1,
    allow_fewer: bool = False,
) -> PoolPlan:
    """Choose (N, gpus, cpus) per replica; over-asking fails now, naming what exists."""
    total_gpus = sum(n.gpus for n in nodes)
    gpus_each = 1 / replicas_per_gpu if total_gpus > 0 else 0.0
    capacity = pool_capacity(nodes, gpus_each, num_cpus_per_replica)
    wanted = replicas if replicas is not None else capacity
    if wanted > capacity or capacity == 0:
        if not allow_fewer or capacity == 0:
            message = _over_ask_message(nodes, wanted, gpus_each, num_cpus_per_replica, capacity)
            raise ConfigError(message)
        logger.warning("asked for %d replicas, running %d (allow_fewer_replicas)", wanted, capacity)
        wanted = capacity
    return PoolPlan(replicas=max(1, wanted), num_gpus=gpus_each, num_cpus=num_cpus_per_replica)


def pool_capacity(nodes: list[NodeResources], gpus_each: float, cpus_each: float) -> int:
    """How many replicas fit, node by node, keeping one CPU of the cluster for reads/writes."""
    spare_cpu_kept = False
    fits = 0
    for node in sorted(nodes, key=lambda n: -n.cpus):
        cpus = node.cpus
        if not spare_cpu_kept and cpus >= 1 + cpus_each:
            cpus -= 1
            spare_cpu_kept = True
        by_cpu = math.floor(cpus / cpus_each + 1e-9)
        by_gpu = math.floor(node.gpus / gpus_each + 1e-9) if gpus_each else by_cpu
        fits += min(by_cpu, by_gpu)
    if not spare_cpu_kept:
        fits = max(0, fits - 1) if fits > 1 else fits  # tiny clusters: reads share a CPU
    return fits


def _over_ask_message(nodes, wanted, gpus_each, cpus_each, capacity) -> str:
    per_node = ", ".join(f"{n.address}: {n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes)
    asked = f"{wanted} replica(s) x ({gpus_each:g} GPU, {cpus_each:g} CPU)"
    return (
        f"ray: asked for {asked}, but the cluster fits {capacity} (one CPU is kept for reading "
        f"and writing); cluster: {per_node or 'no nodes'}. Lower `ray.replicas` or "
        "`ray.num_cpus_per_replica`, add nodes, or set `ray.allow_fewer_replicas: true` to run "
        "on what exists."
    )


def check_shared_storage(nodes: list[NodeResources], paths: dict[str, str]) -> None:
    """On a cluster spanning machines, every node must see the manifest, outputs and checkpoint."""
    hosts = {n.address for n in nodes}
    if len(hosts) <= 1:
        return
    local = {name: p for name, p in paths.items() if p and "://" not in p}
    if local:
        shown = ", ".join(f"{k}={v!r}" for k, v in local.items())
        raise ConfigError(
            f"the Ray cluster spans {len(hosts)} machines ({', '.join(sorted(hosts))}), but "
            f"{shown} is a local path that the other machines cannot see. Use shared storage "
            "every node reads and writes: an s3://, gs:// or abfs:// URI, or - for a network "
            "mount at the same place on every node - the path written as file:///mnt/..."
        )
