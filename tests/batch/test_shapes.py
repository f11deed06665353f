"""builtin:shapes: the world and the judge (pure), then what the committed model draws."""

from __future__ import annotations

import numpy as np
import pytest

from sdfleet.batch.shapes import world
from sdfleet.batch.shapes.judge import adherence, expected_from_prompt, judge, mismatches

# ---------------------------------------------------------------------------- world and judge


def test_world_is_deterministic_and_never_draws_held_out_pairs() -> None:
    a_images, a_scenes, a_captions = world.sample_batch(7, 200)
    b_images, _, b_captions = world.sample_batch(7, 200)
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert not {(s.colour, s.kind) for s in a_scenes} & world.HELD_OUT
    assert all(s.colour != s.background for s in a_scenes)


def test_judge_reads_every_ground_truth_scene() -> None:
    """All 1680 combinations (held-out ones too), with jitter: every attribute read right."""
    rng = np.random.default_rng(3)
    wrong = []
    for scene in world.all_scenes(held_out=None):
        jitter = rng.integers(-world.JITTER_PX, world.JITTER_PX + 1, size=3)
        scene = world.Scene(
            *[getattr(scene, f) for f in ("kind", "colour", "background")],
            scene.size,
            scene.position,
            *map(int, jitter),
        )
        problems = mismatches(judge(world.render_array(scene)), world.caption(scene))
        if problems:
            wrong.append((scene, problems))
    assert not wrong, wrong[:5]


def test_judge_says_what_is_wrong() -> None:
    scene = world.Scene("circle", "red", "blue", "small", "top left")
    image = world.render_array(scene)
    assert mismatches(judge(image), "a small red circle on a blue background, top left") == []
    assert mismatches(judge(image), "a large green square, bottom right") == [
        "size: wanted large, saw small",
        "kind: wanted square, saw circle",
        "colour: wanted green, saw red",
        "position: wanted bottom right, saw top left",
    ]
    blank = np.zeros((64, 64, 3), np.uint8)
    assert judge(blank).kind is None and mismatches(judge(blank), "a circle") != []
    assert adherence([image, blank], ["a red circle", "a red circle"]) == 0.5


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle", {"kind": "circle", "colour": "red"}),
        (
            "a large white triangle in the center",
            {"size": "large", "kind": "triangle", "colour": "white", "position": "center"},
        ),
        (
            "on a black background, a square, bottom left",
            {"background": "black", "kind": "square", "position": "bottom left"},
        ),
    ],
)
def test_expected_from_prompt(prompt: str, expected: dict) -> None:
    assert expected_from_prompt(prompt) == expected
