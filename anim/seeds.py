"""Per-frame seeds for Deforum's ``seed_behavior`` values, reproducible from the job seed.

The seed advances once per *diffused* frame, exactly as Deforum's ``next_seed`` does after
each generated frame (its first frame uses the job seed as given):

- ``iter``: +1 on the 1st, (N+1)th, (2N+1)th ... advance (``seed_iter_N`` = N), so with N=3
  the seeds are s, s+1, s+1, s+1, s+2, ... (Deforum's counter quirk, kept on purpose).
- ``fixed``: always the job seed.
- ``random``: frame 0 uses the job seed; each later diffused frame k gets
  ``derive_seed(seed, "random", k)`` (Deforum draws from Python's global RNG, which no one can
  repeat; ours repeats).
- ``ladder``: +2, -1, +2, -1, ...   ``alternate``: +1, -1, +1, ...
- ``schedule``: the ``seed_schedule`` value at the frame (truncated like Deforum's ``int()``);
  ``-1`` means ``derive_seed(seed, "schedule", frame)``.

Arithmetic is modulo 2**32, so every seed is an unsigned 32-bit value.

Cadence tweens are not diffused: they carry the seed of the latest diffused frame before them
(the frame whose content they start from); the renderer does not draw noise for them.

API:
    derive_seed(job_seed, *parts) -> int       (batch.seeds', shared with batch rows)
    seed_sequence(behavior, seed, count, seed_iter_N=1) -> list[int]     (one per advance)
    scheduled_seed(value, seed, frame) -> int
    seeds_at(behavior, seed, frames, seed_iter_N=1, schedule=None) -> list[int]
    frame_seeds(behavior, seed, diffused, seed_iter_N=1, schedule=None) -> list[int]
"""

from __future__ import annotations

from collections.abc import Sequence

from sdfleet.batch.errors import ConfigError, ScheduleError
from sdfleet.batch.seeds import derive_seed

SEED_BEHAVIORS = ("iter", "fixed", "random", "ladder", "alternate", "schedule")
SEED_MODULUS = 2**32
SEED_MAX = SEED_MODULUS - 1
RANDOM_SEED = -1  # in seed_schedule: "derive a random seed for this frame"


def seed_sequence(behavior: str, seed: int, count: int, seed_iter_N: int = 1) -> list[int]:
    """Seeds for `count` successive diffused frames (not for ``schedule``, see `seeds_at`)."""
    _check(behavior, seed, seed_iter_N)
    if behavior == "schedule":
        raise ConfigError("seed_behavior 'schedule' needs the seed_schedule; use seeds_at()")
    seeds, current, internal = [], seed, 0
    for index in range(count):
        seeds.append(current)
        current, internal = _advance(behavior, current, internal, seed, seed_iter_N, index + 1)
    return seeds


def _advance(
    behavior: str, current: int, internal: int, job_seed: int, iter_n: int, index: int
) -> tuple[int, int]:
    """Deforum's next_seed: (new seed, new internal counter)."""
    if behavior == "iter":
        step = 1 if internal % iter_n == 0 else 0
        return (current + step) % SEED_MODULUS, internal + 1
    if behavior in ("ladder", "alternate"):
        up = 2 if behavior == "ladder" else 1
        step = up if internal == 0 else -1
        return (current + step) % SEED_MODULUS, 1 - internal
    if behavior == "random":
        return derive_seed(job_seed, "random", index), internal
    return current, internal  # fixed


def scheduled_seed(value: float, seed: int, frame: int, field: str = "seed_schedule") -> int:
    """The seed a ``seed_schedule`` value gives at `frame`: -1 = derived random seed."""
    whole = int(value)  # Deforum truncates: int(keys.seed_schedule_series[frame])
    if whole == RANDOM_SEED:
        return derive_seed(seed, "schedule", frame)
    if not 0 <= whole <= SEED_MAX:
        raise ScheduleError(
            f"{field}: gives {value:g} at frame {frame}; expected -1 (a random seed) or a seed "
            f"0..{SEED_MAX}"
        )
    return whole


def seeds_at(
    behavior: str,
    seed: int,
    frames: Sequence[int],
    seed_iter_N: int = 1,
    schedule: Sequence[float] | None = None,
) -> list[int]:
    """Seeds for the frames where the seed advances (diffused frames, or walk keys), in order.

    `schedule` holds the per-frame ``seed_schedule`` values; it is needed for ``schedule``.
    """
    if behavior != "schedule":
        return seed_sequence(behavior, seed, len(frames), seed_iter_N)
    if schedule is None:
        raise ConfigError("seed_behavior 'schedule' needs seed_schedule values")
    _check(behavior, seed, seed_iter_N)
    return [scheduled_seed(schedule[frame], seed, frame) for frame in frames]


def frame_seeds(
    behavior: str,
    seed: int,
    diffused: Sequence[bool],
    seed_iter_N: int = 1,
    schedule: Sequence[float] | None = None,
) -> list[int]:
    """One seed per frame; tweens carry the seed of the latest diffused frame before them."""
    if diffused and not diffused[0]:
        raise ValueError("frame 0 must be diffused")
    keys = [frame for frame, is_diffused in enumerate(diffused) if is_diffused]
    by_key = dict(zip(keys, seeds_at(behavior, seed, keys, seed_iter_N, schedule), strict=True))
    seeds, current = [], seed
    for frame in range(len(diffused)):
        current = by_key.get(frame, current)
        seeds.append(current)
    return seeds


def _check(behavior: str, seed: int, seed_iter_N: int) -> None:
    if behavior not in SEED_BEHAVIORS:
        known = ", ".join(SEED_BEHAVIORS)
        raise ConfigError(f"seed_behavior: unknown value {behavior!r}; expected one of {known}")
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed: {seed} is out of range; expected 0..{SEED_MAX}")
    if seed_iter_N < 1:
        raise ConfigError(f"seed_iter_N: {seed_iter_N} is out of range; expected 1 or more")
