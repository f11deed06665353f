"""Faults for the executor tests, injected by subclassing the replica actor: the production
actor (`batch.actor.GenerateBatch`) has no fault hooks and reads no test settings.

    faulty_actor(hooks) -> a GenerateBatch subclass, for `main(argv, actor_class=...)` or the
                           executors' `actor_class=` parameter
    python tests/batch/faults.py HOOKS_JSON run JOB --out OUT ...
                           `sdfleet` with that actor, for tests that kill the driver process

hooks (all optional), applied to each batch before it is generated:
    count_file   append the output name of every request to this file
    kill_on_id   when a request of this row id arrives, the actor process exits (os._exit) ...
    kill_marker  ... once: only while this file does not exist (it is created first)
    sleep_s      sleep this long
    full_disk_on_id  writing the image of this row id fails as a full disk does (the
                 StorageError `OutputDir.write_bytes` raises for ENOSPC) ...
    full_disk_marker ... once: only while this file does not exist (it is created first)
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from sdfleet.batch.actor import GenerateBatch
from sdfleet.batch.errors import StorageError


def faulty_actor(hooks: dict[str, Any]) -> type[GenerateBatch]:
    """A GenerateBatch that applies `hooks` (see the module doc) before every batch.

    Made inside a function, so cloudpickle sends the class by value: Ray's workers do not
    need to import this test module."""

    def once(marker: str | None) -> bool:
        """True the first time (creating `marker`), then False; always True with no marker."""
        if marker is None:
            return True
        if os.path.exists(marker):
            return False
        Path(marker).touch()
        return True

    class FaultyGenerateBatch(GenerateBatch):
        def generate(self, requests):
            if hooks.get("count_file"):
                with open(hooks["count_file"], "a") as handle:
                    handle.writelines(f"{r.output_name}\n" for r in requests)
            if hooks.get("kill_on_id") in {r.row_id for r in requests}:
                marker = hooks.get("kill_marker")
                if marker and not os.path.exists(marker):
                    Path(marker).touch()
                    os._exit(1)  # an actor process crash, once
            if hooks.get("sleep_s"):
                time.sleep(float(hooks["sleep_s"]))
            return super().generate(requests)

        def write_image(self, relative, data):
            target = hooks.get("full_disk_on_id")
            if target and Path(relative).stem.startswith(target):
                if once(hooks.get("full_disk_marker")):
                    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    raise StorageError.writing(self.out.child_uri(relative), full)
            return super().write_image(relative, data)

    return FaultyGenerateBatch


def main(argv: list[str]) -> int:
    """`sdfleet ARGS...` with the faulty actor; argv[0] is the hooks as JSON."""
    from sdfleet.jobs.cli import main as sdfleet_main

    return sdfleet_main(argv[1:], actor_class=faulty_actor(json.loads(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
