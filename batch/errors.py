"""One error hierarchy for sdfleet. Messages carry file, row/field, value and the fix.

The contract, by name:

- ``check_x(...)`` raises (an `SdfleetError` subclass) when x is bad and otherwise returns
  None, or the value it checked.
- ``x_problems(...)`` returns a list of problems, empty when x is fine, so a caller can report
  every problem at once (a manifest's rows, an animation job's schedules).
- Nothing returns ``str | None`` to mean "bad", and nothing reports through a callback.
- Every failure a user can cause is an `SdfleetError` subclass: the CLI prints it in one line
  and exits 2 (`PipelineError`: 1). `ValueError` and friends are for the caller's bugs (a
  subclass may also be a ValueError, so pydantic validators report it as a field error).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SdfleetError(Exception):
    """Base of every error sdfleet raises on purpose."""


class ConfigError(SdfleetError):
    """A job file or CLI flag is wrong; found before any model loads."""


class ManifestError(SdfleetError):
    """One or more manifest rows are wrong; found before any model loads."""


class ModelError(SdfleetError):
    """A model cannot be found, loaded or trusted."""


class GenerationError(SdfleetError):
    """One row could not be generated (becomes a result with status=error)."""


class PipelineError(SdfleetError):
    """A run stopped part-way (stalled, could not start its replicas); what it committed is
    kept and running the same command again resumes."""


class StorageError(PipelineError):
    """OUT could not be written (disk full, read-only, quota, a lost mount). The write was
    not committed: a rerun makes it once the cause is fixed."""

    @classmethod
    def writing(cls, where: str, exc: OSError) -> StorageError:
        reason = exc.strerror or str(exc)
        return cls(
            f"cannot write {where}: {reason} (errno {exc.errno}). What was committed is kept "
            "and nothing half-written is; free space (or fix the folder) and run the same "
            "command again to resume."
        )


class EncodeError(SdfleetError):
    """ffmpeg is missing or failed; the message quotes ffmpeg."""


class ScheduleError(ConfigError):
    """A schedule string or expression is malformed or unsafe."""


def suggest_name(name: str, known: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest known name, or '' if none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
