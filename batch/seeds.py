"""Stable seeds: a row without a seed gets one derived from (job seed, row id, variant)."""

from __future__ import annotations

import hashlib

SEED_MAX = 2**32 - 1


def derive_seed(job_seed: int, row_id: str, variant: int = 0) -> int:
    """A 32-bit seed from a stable hash (blake2b), never Python's salted `hash()`."""
    key = f"{job_seed}\x1f{row_id}\x1f{variant}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & SEED_MAX
