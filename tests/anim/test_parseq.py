"""Parseq documents (anim.parseq): what their rendered_frames set, and what is refused.

`tests/data/deforum/parseq.json` is Deforum's own Parseq test document (11 frames: seed, angle
and its deltas, deforum_prompt, a subseed strength ramp); the rest are made here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sdfleet.anim.parseq import ParseqSpec, load_parseq
from sdfleet.batch.errors import ConfigError

PARSEQ = Path(__file__).resolve().parents[1] / "data" / "deforum" / "parseq.json"
DOCUMENT = json.loads(PARSEQ.read_text())
ACCEPT = ("subseed_strength",)


def spec(**fields) -> ParseqSpec:
    return ParseqSpec(**{"file": str(PARSEQ), "accept_differences": ACCEPT, **fields})


def inline(document: dict, **fields) -> ParseqSpec:
    return ParseqSpec(**{"manifest": document, "accept_differences": ACCEPT, **fields})


def test_rendered_frames_give_the_values_deforum_takes():
    frames = load_parseq(spec(), max_frames=11, fps=20)
    rows = DOCUMENT["rendered_frames"]
    assert frames.series == {"angle": tuple(row["angle_delta"] for row in rows)}
    assert frames.seeds == tuple(row["seed"] for row in rows)
    assert frames.prompts == ("Parseq prompt! --neg neg parseq prompt!",) * 11
    assert frames.fps == 20


def test_absolute_motion_values_without_deltas():
    frames = load_parseq(spec(use_deltas=False), 11)
    assert frames.series["angle"] == tuple(row["angle"] for row in DOCUMENT["rendered_frames"])


def test_schedules_under_parseq_names_map_to_the_job_fields():
    rows = [
        {"frame": i, "scale": 7 + i, "strength": 0.5, "antiblur_kernel": 3, "zoom_delta": 1.01}
        for i in range(3)
    ]
    frames = load_parseq(inline({"rendered_frames": rows}), 3)
    assert frames.series == {
        "cfg_scale_schedule": (7.0, 8.0, 9.0),
        "strength_schedule": (0.5,) * 3,
        "kernel_schedule": (3.0,) * 3,
        "zoom": (1.01,) * 3,
    }
    assert frames.seeds is None and frames.prompts is None


def test_fields_deforum_cannot_take_are_refused_by_name_unless_accepted():
    with pytest.raises(ConfigError, match=r"parseq.json: .*subseed_strength \(variation seeds"):
        load_parseq(spec(accept_differences=()), 11)
    rows = [{"frame": i, "sampler_schedule": "Euler a", "subseed_strength": 0} for i in range(2)]
    with pytest.raises(ConfigError, match="sampler_schedule") as err:
        load_parseq(inline({"rendered_frames": rows}, accept_differences=()), 2)
    assert "subseed_strength" not in str(err.value)  # 0 everywhere changes nothing


def test_3d_and_unknown_fields_are_ignored():
    rows = [{"frame": i, "translation_z": 5, "fov": 40, "prompt_weight_1": 1} for i in range(2)]
    frames = load_parseq(inline({"rendered_frames": rows}), 2)
    assert frames.series == {}


@pytest.mark.parametrize(
    ("max_frames", "message"),
    [
        (
            120,
            r"holds frames 0\.\.10 \(11 frames\) but the clip has max_frames 120.*"
            r"set max_frames: 11",
        ),
        (5, r"holds frames 0\.\.10 \(11 frames\) but the clip has max_frames 5;"),
    ],
)
def test_a_document_for_another_frame_count_is_refused(max_frames, message):
    with pytest.raises(ConfigError, match=message):
        load_parseq(spec(), max_frames)


def test_duplicate_or_missing_frames_are_refused():
    twice = copy.deepcopy(DOCUMENT)
    twice["rendered_frames"][3]["frame"] = 2
    with pytest.raises(ConfigError, match=r"frame\(s\) \[2\] more than once"):
        load_parseq(inline(twice), 11)
    gap = copy.deepcopy(DOCUMENT)
    del gap["rendered_frames"][4]
    with pytest.raises(ConfigError, match="holds frames 0..10 .10 frames."):
        load_parseq(inline(gap), 11)


def test_a_field_defined_at_frame_0_must_be_a_number_in_every_frame():
    broken = copy.deepcopy(DOCUMENT)
    broken["rendered_frames"][6]["angle_delta"] = "fast"
    with pytest.raises(ConfigError, match="frame 6: angle_delta is 'fast'"):
        load_parseq(inline(broken), 11)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not a Parseq document: .* line 1, column 2"),
        ("[1, 2]", "is not a Parseq document: a JSON list, not an object"),
        ('{"options": {}}', "no 'rendered_frames' list"),
        ('{"rendered_frames": [{"angle": 1}]}', r"rendered_frames\[0\] has no whole 'frame'"),
    ],
)
def test_bad_documents_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_parseq(ParseqSpec(file=str(path)), 1)
    assert str(path) in str(err.value)


def test_the_field_takes_a_file_or_a_document_once():
    assert ParseqSpec.model_validate("p.json").file == "p.json"
    with pytest.raises(ValueError, match="file: .* or manifest:, once"):
        ParseqSpec(file="p.json", manifest={"rendered_frames": []})
    with pytest.raises(ConfigError, match="is not a Parseq document: cannot read it"):
        load_parseq(ParseqSpec(file="nowhere.json"), 1)


# -- in a job -----------------------------------------------------------------------------------


def parseq_job(**fields):
    from sdfleet.anim.spec import load_animation_job

    data = {"kind": "animation", "max_frames": 11, "diffusion_cadence": 1, **fields}
    return load_animation_job(data, source=str(PARSEQ.parent / "job.yaml"))


def test_the_plan_takes_parseqs_values_and_keeps_the_rest():
    from sdfleet.anim.plan import compile_plan

    rows = DOCUMENT["rendered_frames"]
    job = parseq_job(
        parseq={"file": "parseq.json", "accept_differences": ["subseed_strength"]},
        zoom="0:(1.01)",
        seed_behavior="fixed",
    )
    plan = compile_plan(job)
    assert [r.angle for r in plan] == pytest.approx([row["angle_delta"] for row in rows])
    assert [r.seed for r in plan] == [int(row["seed"]) for row in rows]  # 55, 55, ..., 56
    assert {r.zoom for r in plan} == {1.01}  # not in the document: the job's schedule
    assert plan[0].prompt == "Parseq prompt!" and plan[0].negative_prompt == "neg parseq prompt!"


def test_parseq_values_are_checked_like_schedules():
    rows = [{"frame": i, "strength": 1.5} for i in range(2)]
    with pytest.raises(ConfigError, match="strength_schedule: gives 1.5 at frame 0"):
        parseq_job(max_frames=2, parseq={"manifest": {"rendered_frames": rows}})


def test_a_parseq_document_for_another_clip_length_is_refused_at_load():
    with pytest.raises(ConfigError, match="parseq.json: rendered_frames holds frames 0..10"):
        parseq_job(max_frames=30, parseq={"file": "parseq.json", "accept_differences": ACCEPT})
    with pytest.raises(ConfigError, match="drives 2D clips"):
        parseq_job(animation_mode="interpolation", parseq={"file": "parseq.json"})
