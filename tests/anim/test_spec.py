"""The animation job model and its loader: Deforum names and defaults, readable errors."""

from __future__ import annotations

import pydantic
import pytest
import yaml

from sdfleet.anim.plan import compile_plan
from sdfleet.anim.spec import AnimationJob, load_animation_job, resolve_clips
from sdfleet.batch.errors import ConfigError

SMALL = {"W": 64, "H": 64, "max_frames": 8}


def load(**fields: object) -> AnimationJob:
    return load_animation_job({**SMALL, **fields}, "jobs/clip.yaml")


def problems(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load_animation_job(data, "jobs/clip.yaml")
    return str(caught.value)


def test_defaults_are_deforums() -> None:
    job = AnimationJob()
    assert job.kind == "animation"
    assert (job.max_frames, job.fps, job.width, job.height) == (120, 15, 512, 512)
    assert job.zoom == "0:(1.0025+0.002*sin(1.25*3.14*t/30))"
    assert job.strength_schedule == "0:(0.65)"
    assert job.noise_schedule == "0:(0.065)"
    assert job.cfg_scale_schedule == "0:(7)"
    assert job.angle == job.translation_x == job.translation_y == "0:(0)"
    assert job.seed_schedule == '0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)'
    assert (job.seed_behavior, job.seed_iter_N, job.border) == ("iter", 1, "replicate")
    assert (job.color_coherence, job.noise_type, job.animation_mode) == ("LAB", "perlin", "2D")
    assert (job.model, job.scheduler, job.transition) == ("builtin:tiny", "euler", "cut")
    assert (job.video.format, job.video.crf) == ("mp4", 17)


def test_builtin_shapes_gets_the_size_and_guidance_it_was_made_for_where_unset() -> None:
    job = load_animation_job({"model": "builtin:shapes"}, "x.yaml")
    assert (job.width, job.height, job.cfg_scale_schedule) == (64, 64, "0:(3)")
    data = {"model": "builtin:shapes", "W": 128, "cfg_scale_schedule": "0:(5)"}
    job = load_animation_job(data, "x.yaml")  # the job's own values win
    assert (job.width, job.height, job.cfg_scale_schedule) == (128, 64, "0:(5)")
    job = load_animation_job({"model": "builtin:shapes", "height": 96}, "x.yaml")
    assert (job.width, job.height) == (64, 96)
    assert load_animation_job({"model": "builtin:tiny"}, "x.yaml").cfg_scale_schedule == "0:(7)"


def test_w_h_or_width_height() -> None:
    assert (load().width, load().height) == (64, 64)
    job = load_animation_job({"width": 128, "height": 64}, "x.yaml")
    assert (job.width, job.height) == (128, 64)


def test_numbers_become_held_schedules_and_names_are_normalised() -> None:
    job = load(
        strength_schedule=0.5,
        color_coherence="Match Frame 0 HSV",
        dtype="fp16",
        animation_mode="Interpolation",
    )
    assert job.strength_schedule == "0:(0.5)"
    assert (job.color_coherence, job.dtype, job.animation_mode) == (
        "HSV",
        "float16",
        "interpolation",
    )
    assert job.transition == "blend"  # walks blend unless told otherwise
    assert load(color_coherence=None).color_coherence == "None"


def test_prompts_accept_int_keys_and_deforum_json_text() -> None:
    assert load(prompts={0: "a", 30: "b"}).prompts == {"0": "a", "30": "b"}
    assert load(prompts='{"0": "a", "max_f": "b"}').prompts == {"0": "a", "max_f": "b"}
    assert "not valid JSON" in problems({**SMALL, "prompts": '{"0": "a",}'})


def test_the_job_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        load().max_frames = 3  # type: ignore[misc]


def test_unknown_fields_suggest_the_nearest_name() -> None:
    message = problems({**SMALL, "max_framez": 10, "video": {"formt": "gif"}})
    assert "jobs/clip.yaml: max_framez: unknown field (did you mean 'max_frames'?)" in message
    assert "video.formt: unknown field (did you mean 'format'?)" in message
    assert "(got 10)" in message


def test_every_problem_is_listed_with_file_field_value_and_fix() -> None:
    message = problems(
        {**SMALL, "W": 65, "seed_behavior": "iterate", "zoom": "0:(foo)", "seed": -5}
    )
    assert message.startswith("jobs/clip.yaml: 4 problem(s) in the animation job:")
    assert "jobs/clip.yaml: W: 65 is not a multiple of 8" in message and "use 64 or 72" in message
    assert "seed_behavior: Input should be 'iter'" in message and "(got 'iterate')" in message
    assert "zoom: unknown name 'foo'" in message and "column 4" in message
    assert "seed: Input should be greater than or equal to 0 (got -5)" in message


def test_schedule_syntax_errors_fail_at_load_with_a_caret() -> None:
    message = problems({**SMALL, "angle": "0:(0), 4:(where(t>2, 1, 0)"})
    lines = message.splitlines()
    assert "angle: '(' is never closed at column 10" in lines[1]
    assert lines[-2].strip() == "0:(0), 4:(where(t>2, 1, 0)"
    assert lines[-1].index("^") - lines[-2].index("0:(0)") == 9


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"strength_schedule": "0:(0.5), 7:(1.5)"}, "strength_schedule: gives 1.07143 at frame 4"),
        ({"kernel_schedule": "0:(-2)"}, "kernel_schedule: gives -1 at frame 0; expected a whole"),
        ({"steps_schedule": "0:(0.5)"}, "steps_schedule: gives 0 at frame 0"),
        ({"zoom": "0:(1), 4:(0)"}, "zoom: gives 0.25 at frame 3; expected a value >= 0.5 and <= 2"),
        ({"zoom": "0:(-1)"}, "zoom: gives -1 at frame 0"),
        ({"zoom": "0:(1e9)"}, "zoom: gives 1e+09 at frame 0"),
        ({"zoom": "0:(1), 7:(2.7)"}, "zoom: gives 2.21429 at frame 5"),
        (
            {"cfg_scale_schedule": "0:(1e30)"},
            "cfg_scale_schedule: gives 1e+30 at frame 0; expected",
        ),
        ({"amount_schedule": "0:(1e30)"}, "amount_schedule: gives 1e+30 at frame 0; expected"),
        ({"strength_schedule": "0:(-0.1)"}, "strength_schedule: gives -0.1 at frame 0"),
        ({"noise_schedule": "0:(2)"}, "noise_schedule: gives 2 at frame 0"),
        ({"perspective_flip_fv": 180}, "perspective_flip_fv: gives 180"),
        ({"zoom": "0:(1/(t-3))"}, "zoom: '1/(t-3)' cannot be evaluated at t=3"),
        ({"seed_behavior": "schedule", "seed_schedule": "0:(-3)"}, "seed_schedule: gives -3"),
        ({"prompts": {"max_f+5": "x"}}, "prompts: no prompt key falls inside frames 0..7"),
        ({"translation_x": "0:(0), 50:(1)", "zoom": "20:(1)"}, "zoom: no key"),
    ],
)
def test_values_are_checked_over_the_whole_clip(fields: dict, needle: str) -> None:
    assert needle in problems({**SMALL, **fields})


def test_kernel_sizes_are_made_odd_where_deforum_crashes() -> None:
    plan = compile_plan(load(max_frames=9, kernel_schedule="0:(5), 8:(9)"))
    assert [record.kernel for record in plan] == [5, 5, 7, 7, 7, 7, 9, 9, 9]
    assert {record.kernel for record in compile_plan(load(kernel_schedule=4))} == {5}


def test_numbers_written_as_text_are_held_for_the_whole_clip() -> None:
    # YAML reads 1e-3 as a string; "1.01" is one
    job = load(noise_schedule="1e-3", zoom=" 1.01 ", contrast_schedule="(1.5)")
    assert (job.noise_schedule, job.zoom, job.contrast_schedule) == (
        "0:(1e-3)",
        "0:(1.01)",
        "0:((1.5))",
    )
    assert yaml.safe_load("noise_schedule: 1e-3")["noise_schedule"] == "1e-3"
    assert {record.noise for record in compile_plan(job)} == {0.001}


def test_clips_and_a_clips_manifest_are_not_both_set() -> None:
    message = problems({**SMALL, "clips": [{"id": "a"}], "clips_manifest": "shots.parquet"})
    assert "clips (1 entries) and clips_manifest ('shots.parquet') are both set" in message


def test_deforum_random_seed_gets_the_fix() -> None:
    assert "seed: -1 (Deforum's 'pick a random seed') is not used" in problems(
        {**SMALL, "seed": -1}
    )


def test_a_frame_key_that_fails_names_max_f_not_t() -> None:
    message = problems({**SMALL, "zoom": '"1/(max_f-7)":(1), 0:(0)'})
    assert "zoom: '1/(max_f-7)' cannot be evaluated with max_f=7: float division by zero" in message


def test_range_errors_say_the_fix() -> None:
    message = problems({**SMALL, "strength_schedule": 1.2})
    assert "expected a value >= 0 and <= 1" in message
    assert "img2img gets 1 - strength" in message


def test_video_settings() -> None:
    job = load(video={"format": "webm", "crf": 40, "preset": "veryfast", "soundtrack": "a.mp3"})
    assert (job.video.format, job.video.crf, job.video.soundtrack) == ("webm", 40, "a.mp3")
    assert "crf 60 is too high for mp4" in problems({**SMALL, "video": {"crf": 60}})
    assert "video.preset" in problems({**SMALL, "video": {"preset": "warp"}})


def test_schedule_interpolation_names_schedule_fields() -> None:
    job = load(schedule_interpolation={"zoom": "cubic", "strength": "step"})
    assert job.interpolation_for("strength_schedule") == "step"
    assert job.interpolation_for("zoom") == "cubic"
    assert job.interpolation_for("angle") == "linear"
    assert "did you mean 'zoom'" in problems({**SMALL, "schedule_interpolation": {"zom": "step"}})


def test_clips_override_the_base_and_are_validated() -> None:
    job = load(clips=[{"id": "a", "zoom": 1.05, "W": 128}, {"id": "b", "max_frames": 4}])
    clips = dict(resolve_clips(job))
    assert (clips["a"].zoom, clips["a"].width, clips["a"].max_frames) == ("0:(1.05)", 128, 8)
    assert (clips["b"].zoom, clips["b"].max_frames) == (job.zoom, 4)
    assert clips["a"].clips is None


@pytest.mark.parametrize(
    ("clips", "needle"),
    [
        (
            [{"id": "a", "strengh_schedule": 0.4}],
            "clips[0]: clip 'a': unknown field 'strengh_schedule' "
            "(did you mean 'strength_schedule'?)",
        ),
        ([{"zoom": 1}], "clips[0]: a clip needs an 'id'"),
        ([{"id": "a"}, {"id": "a"}], "clip id(s) a used more than once"),
        ([{"id": "a", "zoom": "0:(1"}], "clips[0] (a).zoom: '(' is never closed"),
        ([{"id": "a", "strength_schedule": 2}], "clips[0] (a).strength_schedule: gives 2"),
        ([{"id": "x/y"}], "letters, digits, - or _"),
    ],
)
def test_bad_clips_are_reported_with_their_path(clips: list, needle: str) -> None:
    assert needle in problems({**SMALL, "clips": clips})


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="x.yaml: expected a mapping of job fields, got list"):
        load_animation_job(["zoom"], "x.yaml")  # type: ignore[arg-type]


def test_kind_must_be_animation() -> None:
    assert "kind: Input should be 'animation'" in problems({"kind": "batch"})
