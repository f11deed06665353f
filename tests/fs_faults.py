"""Filesystems that fail, for the fault tests: a read-only folder and a small disk.

As root (CI containers, this machine) they are real tmpfs mounts, since permissions do not
stop root; otherwise a folder without write permission stands in for the read-only one, and
the small disk is skipped (tests that need it also have a variant that needs no mount).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount_tmpfs(where: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    return done.returncode == 0


def _unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@contextmanager
def read_only_folder(where: Path) -> Iterator[Path]:
    """`where` (made here) as a folder this process cannot write."""
    where.mkdir(parents=True, exist_ok=True)
    if _mount_tmpfs(where, "ro,size=1m"):
        try:
            yield where
        finally:
            _unmount(where)
        return
    if os.geteuid() == 0:
        pytest.skip("root without mount: no folder is read-only to it")
    where.chmod(0o555)
    try:
        yield where
    finally:
        where.chmod(0o755)


@contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    """`where` (made here) as a filesystem of `size` (tmpfs); skipped where none can be made."""
    where.mkdir(parents=True, exist_ok=True)
    if not _mount_tmpfs(where, f"size={size}"):
        pytest.skip("a small tmpfs needs root and mount")
    try:
        yield where
    finally:
        _unmount(where)
