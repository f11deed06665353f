"""Ray Data's checkpoint for an execution whose input already leaves out every committed id.

A run in passes (`batch.ray_runner.ManifestPasses`) copies into each pass only rows that no
committed checkpoint file names, so Ray's checkpoint filter would drop nothing. Ray Data still
loads the whole checkpoint for it before every execution, on the driver: an execution of its
own (read every file, repartition to one block, a sort task) and then a filter actor holding
every id, work and driver memory that grow with the rows already done. `CleanOnlyCheckpoint`
keeps the part of that load exactly-once needs, Ray's clean-up of a crashed write's pending
checkpoint files and of the result files they name, and loads nothing, so Ray plans no filter.
Imported only where Ray is (it subclasses Ray's own manager).
"""

from __future__ import annotations

from typing import Any

from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager


class CleanOnlyCheckpoint(IdColumnCheckpointManager):
    """Clean up pending checkpoints, load no ids: Ray then adds no filter to the plan."""

    def load_checkpoint(
        self, data_file_dir: str | None = None, data_file_filesystem: Any = None
    ) -> tuple[None, int]:
        if data_file_dir is not None:
            self._clean_pending_checkpoints(data_file_dir, data_file_filesystem)
        return None, 0
