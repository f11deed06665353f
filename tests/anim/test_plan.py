"""The per-frame plan: records, cadence, walks, the table and JSON Lines."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from sdfleet.anim.plan import (
    FrameRecord,
    compile_plan,
    diffused_frames,
    format_table,
    plan_to_jsonl,
    tween_positions,
)
from sdfleet.anim.spec import AnimationJob, load_animation_job, resolve_clips

EXAMPLES = sorted((Path(__file__).parents[2] / "jobs" / "examples").glob("anim_*.yaml"))
SCHEDULED = [
    "zoom",
    "angle",
    "translation_x",
    "translation_y",
    "transform_center_x",
    "transform_center_y",
    "perspective_flip_theta",
    "perspective_flip_phi",
    "perspective_flip_gamma",
    "perspective_flip_fv",
    "strength",
    "noise",
    "contrast",
    "cfg_scale",
    "steps",
    "amount",
    "kernel",
    "sigma",
    "threshold",
]
REQUIRED = [
    "frame",
    "seed",
    "prompt",
    "negative_prompt",
    "blend_prompt",
    "blend_negative_prompt",
    "blend_weight",
    "diffused",
    "denoise",
    "seed_a",
    "seed_b",
    "seed_t",
    *SCHEDULED,
]


def job(**fields: object) -> AnimationJob:
    return load_animation_job({"W": 64, "H": 64, "prompts": {0: "a"}, **fields}, "t.yaml")


def test_there_are_at_least_three_examples() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"anim_demo.yaml", "anim_deforum.yaml", "anim_walk.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_compiles_to_max_frames_records(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert data["kind"] == "animation"
    example = load_animation_job(data, str(path))
    for clip in [example, *(clip_job for _, clip_job in resolve_clips(example))]:
        records = compile_plan(clip)
        assert [r.frame for r in records] == list(range(clip.max_frames))
        lines = plan_to_jsonl(records).splitlines()
        assert len(lines) == clip.max_frames
        for line, record in zip(lines, records, strict=True):
            row = json.loads(line)
            assert row == record.to_dict()
            assert set(REQUIRED) <= set(row)
            assert row["denoise"] == pytest.approx(1 - row["strength"])
            assert isinstance(row["steps"], int) and isinstance(row["kernel"], int)


def test_demo_is_a_24_frame_64px_cadence_2_clip_on_builtin_shapes() -> None:
    data = yaml.safe_load((EXAMPLES[0].parent / "anim_demo.yaml").read_text())
    demo = load_animation_job(data, "anim_demo.yaml")
    assert (demo.max_frames, demo.width, demo.height) == (24, 64, 64)
    assert (demo.diffusion_cadence, demo.model) == (2, "builtin:shapes")
    records = compile_plan(demo)
    assert [r.frame for r in records if r.diffused] == [*range(0, 24, 2), 23]


def test_records_carry_the_schedules_by_field_name() -> None:
    records = compile_plan(
        job(
            max_frames=5,
            zoom="0:(1), 4:(2)",
            angle="0:(t*2)",
            strength_schedule="0:(0.5), 4:(0.9)",
            steps_schedule="0:(10.9)",
            enable_perspective_flip=True,
            perspective_flip_phi="0:(t%3)",
        )
    )
    assert [r.zoom for r in records] == [1, 1.25, 1.5, 1.75, 2]
    assert [r.angle for r in records] == [0, 2, 4, 6, 8]
    assert [r.strength for r in records] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert [r.denoise for r in records] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    assert {r.steps for r in records} == {10}  # truncated like Deforum's astype(int)
    assert [r.perspective_flip_phi for r in records] == [0, 1, 2, 0, 1]
    assert all(r.perspective_flip for r in records)
    assert records[0].perspective_flip_fv == 53


def test_cadence_keeps_every_frame_and_diffuses_the_last() -> None:
    assert diffused_frames(7, 3) == [True, False, False, True, False, False, True]
    assert diffused_frames(8, 3) == [True, False, False, True, False, False, True, True]
    records = compile_plan(job(max_frames=8, diffusion_cadence=3))
    assert len(records) == 8
    assert [r.mode for r in records] == [
        "txt2img",
        "tween",
        "tween",
        "img2img",
        "tween",
        "tween",
        "img2img",
        "img2img",
    ]
    assert [(r.tween_prev, r.tween_next) for r in records[1:3]] == [(0, 3), (0, 3)]
    assert [r.tween_weight for r in records[4:6]] == pytest.approx([1 / 3, 2 / 3])
    assert records[3].tween_prev is None and records[3].tween_weight is None


def test_tween_positions_need_a_diffused_last_frame() -> None:
    assert tween_positions([True, False, True]) == [
        (None, None, None),
        (0, 2, 0.5),
        (None, None, None),
    ]


def test_init_image_makes_frame_0_img2img() -> None:
    assert compile_plan(job(max_frames=2, init_image="start.png"))[0].mode == "img2img"


def test_cut_and_blend_prompts_in_the_plan() -> None:
    cut = compile_plan(
        job(max_frames=4, prompts={0: "a --neg n", 2: "b"}, animation_prompts_positive="hd")
    )
    assert [(r.prompt, r.negative_prompt) for r in cut] == [
        ("hd, a", "n"),
        ("hd, a", "n"),
        ("hd, b", ""),
        ("hd, b", ""),
    ]
    assert all(r.blend_prompt is None and r.blend_weight == 0 for r in cut)
    blend = compile_plan(job(max_frames=4, prompts={0: "a", 2: "b"}, prompt_transition="blend"))
    assert [(r.blend_prompt, r.blend_weight) for r in blend] == [
        ("b", 0.0),
        ("b", 0.5),
        (None, 0.0),
        (None, 0.0),
    ]


def test_walk_slerps_between_keys_without_duplicate_frames() -> None:
    records = compile_plan(
        job(
            animation_mode="interpolation",
            max_frames=10,
            seed=7,
            prompts={0: "a", 4: "b"},
            diffusion_cadence=3,
        )
    )
    assert all(r.diffused and r.mode == "txt2img" for r in records)  # cadence not used
    # walk keys 0, 4 and the last frame 9 get seeds 7, 8, 9 (iter)
    assert [(r.seed_a, r.seed_b) for r in records] == [(7, 8)] * 4 + [(8, 9)] * 5 + [(9, 9)]
    assert [r.seed_t for r in records] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 0, 0.2, 0.4, 0.6, 0.8, 0]
    )
    positions = [(r.seed_a, r.seed_b, r.seed_t) for r in records]
    assert len(set(positions)) == len(positions)  # no frame repeated at a segment boundary
    assert all(r.seed == r.seed_a for r in records)
    assert [r.blend_weight for r in records[:5]] == [0, 0.25, 0.5, 0.75, 0]  # walks blend
    assert records[1].blend_prompt == "b"


def test_2d_records_have_no_walk_fields() -> None:
    record = compile_plan(job(max_frames=1))[0]
    assert (record.seed_a, record.seed_b, record.seed_t) == (None, None, None)


def test_to_dict_and_jsonl_are_exact() -> None:
    records = compile_plan(job(max_frames=3, prompts={0: "ünïcode"}))
    fields = [f.name for f in dataclasses.fields(FrameRecord) if f.name != "audio"]
    assert list(records[0].to_dict()) == fields  # `audio` only for jobs with audio
    text = plan_to_jsonl(records)
    assert text.endswith("\n") and text.count("\n") == 3
    assert [json.loads(line) for line in text.splitlines()] == [r.to_dict() for r in records]
    assert "ünïcode" in text


def test_table_is_aligned_and_readable() -> None:
    records = compile_plan(
        job(
            max_frames=12,
            diffusion_cadence=2,
            zoom="0:(1.0025)",
            prompts={0: "a lighthouse", 6: "a storm"},
            prompt_transition="blend",
        )
    )
    lines = format_table(records).splitlines()
    assert len(lines) == 2 + 12
    header = lines[0].split()
    assert header[:4] == ["frame", "mode", "seed", "strength"] and header[-1] == "prompt"
    prompt_column = lines[0].index("prompt")
    assert all(line[prompt_column - 2 : prompt_column] == "  " for line in lines[2:])
    assert lines[2].split()[:5] == ["0", "txt2img", "42", "0.65", "0.35"]
    assert "1.0025" in lines[2]
    assert "a lighthouse -> a storm @0.50" in lines[5]
    assert lines[8].split()[1] == "img2img" and lines[8].endswith("a storm")


def test_walk_table_shows_seed_positions() -> None:
    records = compile_plan(job(animation_mode="interpolation", max_frames=4))
    header = format_table(records).splitlines()[0].split()
    assert header[2:5] == ["seed", "seed_b", "seed_t"]


def test_plans_repeat_exactly() -> None:
    first = compile_plan(job(max_frames=20, seed_behavior="random", diffusion_cadence=2))
    second = compile_plan(job(max_frames=20, seed_behavior="random", diffusion_cadence=2))
    assert first == second
    assert len({r.seed for r in first}) == 11  # frames 0, 2, ..., 18 and 19


def test_default_zoom_through_the_plan() -> None:
    records = compile_plan(job(max_frames=31))
    assert records[30].zoom == pytest.approx(1.0025 + 0.002 * math.sin(1.25 * 3.14))
