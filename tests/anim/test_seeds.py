"""Seed sequences per seed_behavior, as Deforum's next_seed advances them per diffused frame."""

from __future__ import annotations

import hashlib

import pytest

from sdfleet.anim.plan import compile_plan, diffused_frames
from sdfleet.anim.seeds import (
    SEED_MAX,
    derive_seed,
    frame_seeds,
    scheduled_seed,
    seed_sequence,
    seeds_at,
)
from sdfleet.anim.spec import load_animation_job
from sdfleet.batch.errors import ConfigError, ScheduleError


def hashed_seed(text: str) -> int:
    """blake2b of the labels joined by \\x1f, as batch.seeds.derive_seed (one seed function)."""
    key = text.replace(":", "\x1f").encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & 0xFFFFFFFF


# (behavior, seed_iter_N, seeds of the first 8 diffused frames from job seed 10), by hand from
# Deforum's next_seed: iter adds 1 when its counter % N == 0 (so the first advance is +1).
SEQUENCES = [
    ("iter", 1, [10, 11, 12, 13, 14, 15, 16, 17]),
    ("iter", 3, [10, 11, 11, 11, 12, 12, 12, 13]),
    ("fixed", 1, [10] * 8),
    ("fixed", 3, [10] * 8),
    ("ladder", 1, [10, 12, 11, 13, 12, 14, 13, 15]),
    ("ladder", 3, [10, 12, 11, 13, 12, 14, 13, 15]),
    ("alternate", 1, [10, 11, 10, 11, 10, 11, 10, 11]),
    ("alternate", 3, [10, 11, 10, 11, 10, 11, 10, 11]),
    ("random", 1, [10] + [hashed_seed(f"10:random:{k}") for k in range(1, 8)]),
    ("random", 3, [10] + [hashed_seed(f"10:random:{k}") for k in range(1, 8)]),
]


@pytest.mark.parametrize(("behavior", "iter_n", "expected"), SEQUENCES)
def test_seed_sequences(behavior: str, iter_n: int, expected: list[int]) -> None:
    assert seed_sequence(behavior, 10, 8, iter_n) == expected


# With cadence 2 over 7 frames, frames 0, 2, 4, 6 are diffused; tweens carry the previous seed.
CADENCE_2 = [
    ("iter", 1, [10, 10, 11, 11, 12, 12, 13]),
    ("iter", 3, [10, 10, 11, 11, 11, 11, 11]),
    ("fixed", 1, [10] * 7),
    ("ladder", 1, [10, 10, 12, 12, 11, 11, 13]),
    ("alternate", 1, [10, 10, 11, 11, 10, 10, 11]),
    (
        "random",
        1,
        [10, 10]
        + [hashed_seed("10:random:1")] * 2
        + [hashed_seed("10:random:2")] * 2
        + [hashed_seed("10:random:3")],
    ),
]


@pytest.mark.parametrize(("behavior", "iter_n", "expected"), CADENCE_2)
def test_cadence_2_advances_only_on_diffused_frames(
    behavior: str, iter_n: int, expected: list[int]
) -> None:
    assert frame_seeds(behavior, 10, diffused_frames(7, 2), iter_n) == expected


@pytest.mark.parametrize(("behavior", "iter_n", "expected"), CADENCE_2[:2])
def test_plan_carries_the_same_seeds(behavior: str, iter_n: int, expected: list[int]) -> None:
    job = load_animation_job(
        {
            "max_frames": 7,
            "seed": 10,
            "seed_behavior": behavior,
            "seed_iter_N": iter_n,
            "diffusion_cadence": 2,
            "W": 64,
            "H": 64,
        }
    )
    assert [record.seed for record in compile_plan(job)] == expected


def test_schedule_behaviour_uses_the_schedule_and_derives_minus_one() -> None:
    schedule = [10.0, -1.0, 7.9, -1.0, 5.0]
    seeds = seeds_at("schedule", 3, [0, 1, 2, 3, 4], schedule=schedule)
    assert seeds == [10, hashed_seed("3:schedule:1"), 7, hashed_seed("3:schedule:3"), 5]
    # with cadence 2 only frames 0, 2, 4 read the schedule; tweens repeat the previous seed
    assert frame_seeds("schedule", 3, diffused_frames(5, 2), schedule=schedule) == [10, 10, 7, 7, 5]


def test_deforum_default_seed_schedule_through_a_job() -> None:
    job = load_animation_job(
        {"max_frames": 6, "seed": 100, "seed_behavior": "schedule", "W": 64, "H": 64}
    )
    seeds = [record.seed for record in compile_plan(job)]
    assert seeds[0] == 100 and seeds[4:] == [100, 100]
    assert seeds[1:4] == [hashed_seed(f"100:schedule:{frame}") for frame in (1, 2, 3)]


def test_seeds_stay_unsigned_32_bit() -> None:
    assert seed_sequence("iter", SEED_MAX, 3) == [SEED_MAX, 0, 1]
    assert seed_sequence("ladder", SEED_MAX - 1, 3) == [SEED_MAX - 1, 0, SEED_MAX]
    assert seed_sequence("alternate", SEED_MAX, 3) == [SEED_MAX, 0, SEED_MAX]
    assert all(0 <= s <= SEED_MAX for s in seed_sequence("random", 1, 200))


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed(42, "random", 1) == hashed_seed("42:random:1")
    assert derive_seed(42, "random", 1) != derive_seed(42, "random", 2)
    assert derive_seed(42, "random", 1) != derive_seed(43, "random", 1)


@pytest.mark.parametrize("value", [-2.0, 2.0**32, -100.0])
def test_scheduled_seeds_out_of_range_are_errors(value: float) -> None:
    with pytest.raises(ScheduleError, match="expected -1 .* or a seed 0..4294967295"):
        scheduled_seed(value, 1, 4)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown value 'iterate'"):
        seed_sequence("iterate", 1, 3)
    with pytest.raises(ConfigError, match="seed_iter_N"):
        seed_sequence("iter", 1, 3, 0)
    with pytest.raises(ConfigError, match="needs seed_schedule"):
        seeds_at("schedule", 1, [0])
