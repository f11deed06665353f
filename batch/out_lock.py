"""One OUT belongs to one run of one job: `hold_out` takes OUT's lock before anything is
written there and keeps it until the run ends, so two runs never commit into one OUT at once.

- A local OUT (a path, or ``file://`` on a mount) gets ``OUT/.sdfleet.lock``, locked with
  ``fcntl.flock`` (exclusive, not waiting). The kernel drops the lock when its process dies,
  however it dies, so a killed run never blocks the next one; the file names the holder (host,
  pid, start time, command) for the run that is refused, and a run that finds the name of a
  holder that did not end cleanly says that it takes over.
- An object-store OUT (``s3://``, ``gs://``, ...) has no locks: the same file is a claim,
  written when none is there and read back after a moment to see that this run's token won.
  A claim of a dead process on this host is taken over; any other one is removed by hand when
  no run is going (the message says so). It is cooperative: it keeps ``sdfleet`` runs apart.
- Once held, OUT must hold this job kind's outputs (or none): a batch run never writes into an
  animation's OUT, nor the reverse (`out_kind`).
- `check_out_folder` (used by `validate` too) refuses an OUT that is a file or cannot be
  written, before any model loads.

Pure: the standard library (pyarrow only where an object store is passed in).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.paths import is_local, local_path, write_atomic

logger = logging.getLogger(__name__)

LOCK_NAME = ".sdfleet.lock"
CLAIM_SETTLE_S = 1.0  # an object-store claim is read back after this long
# What each job kind leaves directly in its OUT; any one of them tells whose OUT it is.
KIND_MARKERS = {
    "batch": ("results", "images", "_checkpoint"),
    "animation": ("status.json", "frames", "state", "plan.jsonl"),
}


@dataclass(frozen=True)
class Holder:
    """Who holds an OUT: written into the lock file, shown to a run that is refused."""

    host: str
    pid: int
    started: str
    kind: str
    command: str
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    @classmethod
    def this_process(cls, kind: str) -> Holder:
        command = " ".join(["sdfleet", *sys.argv[1:]])[:300]
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return cls(socket.gethostname(), os.getpid(), started, kind, command)

    def __str__(self) -> str:
        return (
            f"pid {self.pid} on {self.host}, {_a(self.kind)} run started {self.started} "
            f"({self.command})"
        )

    def is_dead_here(self) -> bool:
        """True when this holder ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def parse_holder(data: bytes) -> Holder | None:
    """The holder a lock file names, or None for an empty (released) or unreadable one."""
    try:
        fields = json.loads(data.decode())
        return Holder(**fields)
    except (ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------- checks


def check_out_folder(uri: str) -> None:
    """A local OUT must be a folder (or not exist yet) that this user can write: refused with
    the reason before any model loads. URIs are checked by the filesystem they name."""
    if not is_local(uri):
        return
    path = Path(local_path(uri)).expanduser()
    if path.is_file():
        raise ConfigError(f"--out {uri!r} is a file; give a folder (new, or an earlier run's)")
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise ConfigError(f"--out {uri!r}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only filesystem" if _read_only_mount(existing) else "no write permission"
        raise ConfigError(
            f"--out {uri!r}: {existing} cannot be written ({why}); give a folder this user "
            "can write"
        )


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def out_kind(filesystem: Any, root: str) -> str | None:
    """Which job kind's outputs OUT holds ("batch", "animation"), or None (new or empty).
    A summary.json alone tells too: an animation's lists its clips."""
    from pyarrow import fs

    for kind, names in KIND_MARKERS.items():
        infos = filesystem.get_file_info([posixpath.join(root, n) for n in names])
        if any(info.type != fs.FileType.NotFound for info in infos):
            return kind
    try:
        with filesystem.open_input_stream(posixpath.join(root, "summary.json")) as stream:
            summary = json.loads(stream.read(1 << 20))
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and "clips" in summary:
        return "animation"
    return "batch" if isinstance(summary, dict) and "expected_outputs" in summary else None


def check_out_kind(filesystem: Any, root: str, uri: str, kind: str) -> None:
    """ConfigError when OUT holds another job kind's outputs (their job.yaml and summary.json
    would be written over)."""
    found = out_kind(filesystem, root)
    if found not in (None, kind):
        raise ConfigError(
            f"--out {uri!r} holds the outputs of {_a(found)} job; {_a(kind)} run there would "
            "write over its job.yaml and summary.json. Use another --out."
        )


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


# ---------------------------------------------------------------------------- holding OUT


@contextmanager
def hold_out(uri: str, kind: str, store: tuple[Any, str] | None = None) -> Iterator[Holder]:
    """Hold OUT for this run of a `kind` job while the block runs (see the module doc).
    `store`: (pyarrow filesystem, root) of an object-store OUT; None: built from `uri`.
    ConfigError when another run holds OUT, when it cannot be written, or when it holds
    another kind's outputs."""
    from pyarrow import fs

    me = Holder.this_process(kind)
    if store is None and is_local(uri):
        check_out_folder(uri)
        root = os.path.abspath(local_path(uri))
        lock: _FileLock | _Claim = _FileLock(Path(root), uri)
        filesystem = fs.LocalFileSystem()
    else:
        filesystem, root = store or fs.FileSystem.from_uri(uri)
        lock = _Claim(filesystem, root, uri)
    lock.acquire(me)
    try:
        check_out_kind(filesystem, root, uri, kind)
        yield me
    finally:
        lock.release(me)


def _busy(uri: str, holder: Holder | None) -> ConfigError:
    who = str(holder) if holder else "a run that is starting"
    return ConfigError(
        f"--out {uri!r} is in use by another run: {who}. Wait for it to finish (then run "
        "again to resume), or use another --out."
    )


class _FileLock:
    """``flock`` on OUT/.sdfleet.lock; the file names the holder and is emptied on release."""

    def __init__(self, root: Path, uri: str) -> None:
        self.root, self.uri, self.fd = root, uri, -1

    def acquire(self, me: Holder) -> None:
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"--out {self.uri!r}: cannot write there ({exc.strerror}); give a folder "
                "this user can write"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = parse_holder(self._read())
            os.close(self.fd)
            raise _busy(self.uri, holder) from None
        except OSError as exc:  # a filesystem without locks (ENOLCK): a claim instead
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self._claim_unlocked(me)
        left = parse_holder(self._read())
        if left is not None and left.token != me.token:
            logger.warning(
                "%s: taking over from %s, which ended without releasing it", self.uri, left
            )
        self._write(json.dumps(asdict(me)).encode())

    def _claim_unlocked(self, me: Holder) -> None:
        left = parse_holder(self._read())
        if left is not None and not left.is_dead_here():
            os.close(self.fd)
            raise _busy(self.uri, left)

    def release(self, me: Holder) -> None:
        if self.fd < 0:
            return
        try:
            self._write(b"")
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    def _read(self) -> bytes:
        return os.pread(self.fd, 1 << 16, 0)

    def _write(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)


class _Claim:
    """A claim object OUT/.sdfleet.lock on an object store (see the module doc)."""

    def __init__(self, filesystem: Any, root: str, uri: str) -> None:
        self.filesystem, self.path, self.uri = filesystem, posixpath.join(root, LOCK_NAME), uri

    def acquire(self, me: Holder) -> None:
        left = self._read()
        if left is not None:
            if not left.is_dead_here():
                raise ConfigError(
                    f"{_busy(self.uri, left)} If no run is going, delete {self.uri}/{LOCK_NAME}."
                )
            logger.warning("%s: taking over from %s, which is no longer running", self.uri, left)
        write_atomic(self.path, json.dumps(asdict(me)).encode(), self.filesystem)
        time.sleep(CLAIM_SETTLE_S)  # another run's claim written meanwhile wins: last write
        now = self._read()
        if now is None or now.token != me.token:
            raise _busy(self.uri, now)

    def release(self, me: Holder) -> None:
        now = self._read()
        if now is not None and now.token == me.token:
            self.filesystem.delete_file(self.path)

    def _read(self) -> Holder | None:
        try:
            with self.filesystem.open_input_stream(self.path) as stream:
                return parse_holder(stream.read(1 << 16))
        except FileNotFoundError:
            return None
