"""`batch.ray_stderr`: Ray's one harmless C++ ERROR line is dropped, every other byte kept."""

from __future__ import annotations

import os
import subprocess
import sys

from sdfleet.batch.ray_stderr import drop_ray_noise

NOISE = (
    b"[2026-12-02 05:14:42,170 E 25637 25637] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(GenerateBatch))' and ID: 'd5e92e667b1ea7a64544f6fe01000000' has "
    b"constructor arguments in the object store and max_restarts > 0. If the arguments in the "
    b"object store go out of scope or are lost, the actor restart will fail. See "
    b"https://github.com/ray-project/ray/issues/53727 for more details."
)


def test_the_actor_constructor_line_is_dropped_and_its_neighbours_kept():
    now, held = drop_ray_noise(b"3/30 (10%)\n" + NOISE + b"\n6/30 (20%)\n")
    assert (now, held) == (b"3/30 (10%)\n6/30 (20%)\n", b"")


def test_other_ray_errors_pass():
    other = b"[2026-12-02 05:14:42,170 E 1 1] core_worker.cc:99: Failed to connect to GCS.\n"
    assert drop_ray_noise(other) == (other, b"")


def test_a_partial_line_waits_only_while_it_could_be_a_ray_line():
    assert drop_ray_noise(b"\r 40%|####") == (b"\r 40%|####", b"")
    now, held = drop_ray_noise(NOISE[:50])
    assert (now, held) == (b"", NOISE[:50])
    assert drop_ray_noise(held + NOISE[50:] + b"\nnext") == (b"next", b"")


def test_the_filter_passes_a_process_stderr_through_to_the_end(tmp_path):
    """Started in a real process: Python's and C-level writes to fd 2 arrive in order, the
    noise does not, and the last line written before exit is not lost."""
    noise_line = NOISE + b"\n"
    script = (
        "import os, sys\n"
        "from sdfleet.batch.ray_stderr import filter_ray_noise\n"
        "filter_ray_noise()\n"
        "print('first', file=sys.stderr)\n"
        f"os.write(2, {noise_line!r})\n"
        "os.write(2, b'second\\n')\n"
        "print('last', file=sys.stderr, end='')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, env=os.environ
    )
    assert done.returncode == 0 and done.stderr == b"first\nsecond\nlast"
