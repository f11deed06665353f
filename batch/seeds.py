"""Stable seeds: a row without a seed gets one derived from (job seed, row id, variant); an
animation's `random` frames get one from (job seed, "random", frame) the same way."""

from __future__ import annotations

import hashlib

SEED_MAX = 2**32 - 1


def derive_seed(job_seed: int, *parts: str | int) -> int:
    """A 32-bit seed from a stable hash (blake2b) of the job seed and labels, never Python's
    salted `hash()`. Batch rows: `derive_seed(job_seed, row_id, variant)`."""
    key = "\x1f".join(str(part) for part in (job_seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & SEED_MAX
