"""The one line Ray's C++ core prints on every successful sdfleet Ray run, kept off the terminal.

Ray Data hands each pool actor its transform as an object-store reference and lets crashed
actors restart (which resume relies on), and the driver's core worker then logs, at ERROR, that
such an actor "has constructor arguments in the object store and max_restarts > 0"
(ray-project/ray#53727). Nothing in Python can quiet it: the C++ logger writes straight to file
descriptor 2, and its only switch (RAY_BACKEND_LOG_LEVEL) hides real errors and prints a line of
its own. So, once Ray runs in this process, fd 2 goes through a pipe whose reader drops exactly
that line and passes every other byte through unchanged, at once (a partial line is held only
while it could still be a Ray C++ log line, which starts with "[").
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

RAY_NOISE = re.compile(
    rb"\[[0-9: ,.-]+ [A-Z] \d+ \d+\] core_worker\.cc:\d+: Actor with class name: .*"
    rb"has constructor arguments in the object store and max_restarts > 0\."
)

_started: list[StderrFilter] = []


def drop_ray_noise(pending: bytes) -> tuple[bytes, bytes]:
    """(what to write now, what to hold) for `pending` bytes read from the pipe."""
    *lines, rest = pending.split(b"\n")
    kept = b"".join(line + b"\n" for line in lines if not RAY_NOISE.match(line))
    if rest and not rest.startswith(b"["):  # a progress bar's \r update, a prompt: at once
        return kept + rest, b""
    return kept, rest


class StderrFilter:
    """fd 2 -> pipe -> `drop_ray_noise` -> the real stderr, until `stop` (at exit at the
    latest, which waits for the reader so the last lines are written)."""

    def __init__(self) -> None:
        self.real = os.dup(2)
        self.read, write = os.pipe()
        self.pipe = os.fstat(write).st_ino
        sys.stderr.flush()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._pump, name="sdfleet-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while chunk := os.read(self.read, 65536):
            now, pending = drop_ray_noise(pending + chunk)
            self._write(now)
        self._write(pending)
        os.close(self.read)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.real, data) :]

    def stop(self) -> None:
        sys.stderr.flush()
        if os.fstat(2).st_ino == self.pipe:  # not replaced since (a test's capture, say)
            os.dup2(self.real, 2)  # the pipe's last writer closes: the reader ends after the rest
        self.thread.join(timeout=5)


def filter_ray_noise() -> None:
    """Start the filter for this process (once); a no-op where fd 2 is not open."""
    if _started:
        return
    try:
        os.fstat(2)
    except OSError:
        return
    _started.append(StderrFilter())
    atexit.register(_started[0].stop)
