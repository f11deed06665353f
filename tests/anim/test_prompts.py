"""Prompt keyframes: --neg split, global texts, expression keys, cut and blend transitions."""

from __future__ import annotations

import pytest

from sdfleet.anim.prompts import (
    FramePrompt,
    frame_prompts,
    plan_prompts,
    resolve_prompt_keys,
    split_negative,
)
from sdfleet.batch.errors import ConfigError, ScheduleError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat --neg blurry, dark", ("a cat", "blurry, dark")),
        ("a cat", ("a cat", "")),
        ("--neg ugly", ("", "ugly")),
        ("a cat --neg a --neg b", ("a cat", "a b")),  # Deforum drops further markers
        ("a cat --negative-space art", ("a cat --negative-space art", "")),
    ],
)
def test_split_negative(text: str, expected: tuple[str, str]) -> None:
    assert split_negative(text) == expected


def test_cut_holds_each_prompt_until_the_next_key() -> None:
    frames = plan_prompts({0: "a --neg x", 3: "b"}, 5)
    assert [f.prompt for f in frames] == ["a", "a", "a", "b", "b"]
    assert [f.negative_prompt for f in frames] == ["x", "x", "x", "", ""]
    assert all(f.blend_prompt is None and f.blend_weight == 0.0 for f in frames)


def test_blend_records_the_partner_and_a_linear_weight() -> None:
    frames = plan_prompts({"0": "a --neg x", "4": "b --neg y"}, 6, transition="blend")
    assert frames[0] == FramePrompt("a", "x", "b", "y", 0.0)
    assert frames[1] == FramePrompt("a", "x", "b", "y", 0.25)
    assert frames[3].blend_weight == 0.75
    assert frames[4] == FramePrompt("b", "y")  # at and after the last key: no partner
    assert frames[5] == FramePrompt("b", "y")


def test_global_texts_go_where_deforum_puts_them() -> None:
    # positive before the key's text (CLIP's 77 tokens cut the end), negative after
    frames = plan_prompts({0: "a cat --neg blurry", 2: "a dog"}, 3, positive="4k", negative="text")
    assert (frames[0].prompt, frames[0].negative_prompt) == ("4k, a cat", "blurry, text")
    assert (frames[2].prompt, frames[2].negative_prompt) == ("4k, a dog", "text")


def test_neg_markers_never_reach_the_text_encoder() -> None:
    frames = plan_prompts(
        {0: "a cat --neg blurry"}, 1, positive="cinematic --neg ugly", negative="--neg watermark"
    )
    assert (frames[0].prompt, frames[0].negative_prompt) == (
        "cinematic, a cat",
        "blurry, ugly, watermark",
    )


def test_expression_keys_and_keys_past_the_end() -> None:
    keys = resolve_prompt_keys({0: "a", "max_f-2": "b", '"max_f"': "c", 50: "d"}, 10)
    assert [(k.frame, k.prompt) for k in keys] == [(0, "a"), (7, "b"), (9, "c")]


def test_no_zero_key_holds_the_first_prompt_backwards() -> None:
    frames = plan_prompts({3: "a", 5: "b"}, 7, transition="blend")
    assert [f.prompt for f in frames] == ["a", "a", "a", "a", "a", "b", "b"]
    assert [f.blend_weight for f in frames[:3]] == [0.0, 0.0, 0.0]
    assert frames[4].blend_weight == 0.5


def test_later_key_on_the_same_frame_wins() -> None:
    keys = resolve_prompt_keys({9: "a", "max_f": "b"}, 10)
    assert [(k.frame, k.prompt) for k in keys] == [(9, "b")]


def test_no_key_inside_the_clip_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"prompts: no prompt key falls inside frames 0..4"):
        resolve_prompt_keys({10: "a"}, 5)


def test_bad_key_expression_names_the_key() -> None:
    with pytest.raises(ScheduleError, match=r"prompts\['t-1'\]: 't' cannot be used here"):
        resolve_prompt_keys({"t-1": "a"}, 5)


def test_unknown_transition_is_an_error() -> None:
    keys = resolve_prompt_keys({0: "a"}, 2)
    with pytest.raises(ConfigError, match="expected one of cut, blend"):
        frame_prompts(keys, 2, "fade")
