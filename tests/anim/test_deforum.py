"""Deforum settings files -> animation jobs (anim.deforum), on real files (tests/data/deforum).

The per-frame values of each file are computed here from its own schedule text the way
Deforum's FrameInterpolater does (split on commas; a numeric key is a keyframe interpolated
linearly; an expression is evaluated at every frame from its key until the next numeric key,
with t, max_f and s; the first and last frames are pinned to the first and last values), with
Python's eval over numpy, not through sdfleet's parser, and compared with sdfleet's plan.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from sdfleet.anim.deforum import (
    DeforumDifferences,
    check_differences,
    import_settings,
    job_yaml,
    load_deforum_job,
    pin_first_frame,
    read_settings,
)
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.schedule import evaluate_schedule
from sdfleet.anim.spec import load_animation_job
from sdfleet.batch.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data" / "deforum"
FILES = sorted(path.name for path in DATA.glob("*.txt"))
# Deforum schedule -> plan field, and whether Deforum truncates it to a whole number
FIELDS = {
    "angle": ("angle", False),
    "zoom": ("zoom", False),
    "translation_x": ("translation_x", False),
    "translation_y": ("translation_y", False),
    "transform_center_x": ("transform_center_x", False),
    "transform_center_y": ("transform_center_y", False),
    "perspective_flip_theta": ("perspective_flip_theta", False),
    "perspective_flip_phi": ("perspective_flip_phi", False),
    "perspective_flip_gamma": ("perspective_flip_gamma", False),
    "perspective_flip_fv": ("perspective_flip_fv", False),
    "noise_schedule": ("noise", False),
    "strength_schedule": ("strength", False),
    "contrast_schedule": ("contrast", False),
    "cfg_scale_schedule": ("cfg_scale", False),
    "amount_schedule": ("amount", False),
    "kernel_schedule": ("kernel", True),
    "sigma_schedule": ("sigma", False),
    "threshold_schedule": ("threshold", False),
}
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def deforum_series(text: str, max_frames: int, seed: int) -> list[float]:
    """Deforum's parse_key_frames + get_inbetweens (linear), re-stated for these files."""
    max_f = max_frames - 1
    names = {"sin": np.sin, "cos": np.cos, "tan": np.tan, "max_f": max_f, "s": seed}

    def clean(value: str) -> str:
        return value.replace("'", "").replace('"', "").replace("(", "").replace(")", "")

    keys: dict[int, str] = {}
    for part in text.split(","):
        key, value = part.split(":")[:2]
        key = clean(key).strip()
        frame = int(key) if NUMBER.match(key) else int(eval(key, {"__builtins__": {}}, names))
        keys[frame] = value.strip()
    series = np.full(max_frames, np.nan)
    is_number = True
    value = ""
    for i in range(max_frames):
        if i in keys:
            value = keys[i]
            is_number = bool(NUMBER.match(clean(value).strip()))
            if is_number:
                series[i] = float(clean(value))
        if not is_number:
            series[i] = eval(value, {"__builtins__": {}}, {**names, "t": i})
    known = np.flatnonzero(~np.isnan(series))
    series[0], series[-1] = series[known[0]], series[known[-1]]
    known = np.flatnonzero(~np.isnan(series))
    return list(np.interp(np.arange(max_frames), known, series[known]))


def imported(name: str, seed: int = 1234):
    path = DATA / name
    settings = read_settings(path)
    result = import_settings(settings, str(path), seed=seed, base_dir=DATA)
    return settings, result, load_animation_job(result.job, source=str(path))


@pytest.mark.parametrize("name", FILES)
def test_the_plan_has_deforums_schedule_values(name):
    settings, _, job = imported(name)
    plan = compile_plan(job)
    n = settings["max_frames"]
    assert len(plan) == n
    seed = job.seed
    for key, (attribute, whole) in FIELDS.items():
        expected = deforum_series(settings[key], n, seed)
        if key == "strength_schedule" and settings.get("use_init"):
            expected[0] = settings["strength"]  # Deforum's first frame with an init image
        if whole:
            expected = [int(v) for v in expected]
        got = [getattr(record, attribute) for record in plan]
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), key
    steps = settings["steps"]
    assert all(record.steps == steps for record in plan)


@pytest.mark.parametrize("name", FILES)
def test_seeds_iterate_per_diffused_frame_as_in_deforum(name):
    settings, _, job = imported(name, seed=1000)
    plan = compile_plan(job)
    cadence = settings["diffusion_cadence"]
    first = settings["seed"] if settings["seed"] != -1 else 1000
    diffused = range(0, settings["max_frames"] - 1, cadence)  # Deforum's diffused frames
    assert [plan[frame].seed for frame in diffused] == [first + k for k in range(len(diffused))]


def split_deforum(text: str) -> tuple[str, str]:
    positive, _, negative = text.partition("--neg")
    return positive.strip(), negative.replace("--neg", "").strip()


@pytest.mark.parametrize("name", FILES)
def test_prompts_are_joined_as_deforum_joins_them(name):
    settings, _, job = imported(name)
    plan = compile_plan(job)
    for key, text in settings["prompts"].items():
        if int(key) >= settings["max_frames"]:
            continue
        if "animation_prompts_positive" in settings:  # saved from the UI: Deforum joins them
            pos, neg = (
                settings["animation_prompts_positive"],
                settings["animation_prompts_negative"],
            )
            text = f"{pos} {text} {'' if '--neg' in text else '--neg'} {neg}"
        record = plan[int(key)]
        assert (record.prompt, record.negative_prompt) == split_deforum(text)
    if "negative_prompts" in settings:  # written beside a render: already joined, not again
        assert plan[0].negative_prompt == "nsfw, nude"


def test_refused_keys_are_listed_by_name_with_the_reason():
    expected = {
        "default_settings.txt": {"animation_mode", "sd_model_name", "noise_multiplier_schedule"},
        "a1111_deforum_settings.txt": {
            *("animation_mode", "sd_model_name", "noise_multiplier_schedule", "sampler"),
            *("restore_faces", "r_upscale_video"),
        },
        "eudk_deforum_settings.txt": {
            *("animation_mode", "sd_model_name", "noise_multiplier_schedule", "sampler"),
        },
        "parkermedlin_deforum_settings.txt": {"sd_model_name", "noise_multiplier_schedule"},
        "simple.input_settings.txt": set(),
    }
    assert sorted(expected) == FILES
    for name, keys in expected.items():
        _, result, _ = imported(name)
        assert {d.key for d in result.differences} == keys, name
        if keys:
            with pytest.raises(DeforumDifferences) as err:
                check_differences(result, accept=False)
            assert all(f"  - {key} = " in str(err.value) for key in keys)
            assert "--accept-deforum-differences" in str(err.value)
        check_differences(result, accept=True)


def test_a_file_without_refused_keys_loads_as_it_is():
    job, result = load_deforum_job(DATA / "simple.input_settings.txt")
    assert (job.max_frames, job.fps, job.width, job.height) == (10, 20, 512, 512)
    assert (job.scheduler, job.seed, job.diffusion_cadence) == ("euler_a", 1, 1)
    assert job.steps_schedule == "0:(1)" and job.noise_schedule == "0: (0.04)"
    assert job.model == "builtin:tiny" and "names no model" in result.notes[0]


def test_refused_keys_stop_the_load_until_accepted():
    with pytest.raises(DeforumDifferences, match="animation_mode = '3D': 3D mode needs a depth"):
        load_deforum_job(DATA / "default_settings.txt")
    job, _ = load_deforum_job(DATA / "default_settings.txt", accept=True, seed=5)
    assert (job.animation_mode, job.seed, job.diffusion_cadence) == ("2D", 5, 2)


def test_seed_minus_one_draws_a_seed_and_records_it():
    settings = read_settings(DATA / "parkermedlin_deforum_settings.txt")
    drawn = {import_settings(settings, "s").job["seed"] for _ in range(3)}
    assert len(drawn) > 1 and all(0 <= seed < 2**32 for seed in drawn)
    result = import_settings(settings, "s", seed=99)
    assert result.job["seed"] == 99 and "seed 99 given and recorded" in result.notes[0]
    assert yaml.safe_load(job_yaml(result))["seed"] == 99


@pytest.mark.parametrize(
    ("sampler", "scheduler", "refused"),
    [
        ("Euler a", "euler_a", False),
        ("Euler", "euler", False),
        ("DDIM", "ddim", False),
        ("PLMS", "pndm", False),
        ("DPM++ 2M Karras", "dpmpp_2m_karras", False),
        ("DPM++ 2M SDE", "dpmpp_sde_2m", False),
        ("euler_ancestral", "euler_a", False),  # the old notebook's name
        ("DPM++ SDE Karras", "dpmpp_sde_2m", True),
        ("LMS", "euler", True),
        ("Some Sampler", "euler_a", True),
    ],
)
def test_samplers_map_to_schedulers(sampler, scheduler, refused):
    result = import_settings({"sampler": sampler, "enable_noise_multiplier_scheduling": False}, "s")
    assert result.job["scheduler"] == scheduler
    assert [d.key for d in result.differences] == (["sampler"] if refused else [])


def test_keys_left_out_take_deforums_defaults():
    result = import_settings({"prompts": {"0": "a cat"}}, "s", seed=3)
    job = result.job
    assert (job["diffusion_cadence"], job["max_frames"], job["fps"]) == (2, 120, 15)
    assert job["zoom"] == "0: (1.0025+0.002*sin(1.25*3.14*t/30))"
    assert job["perspective_flip_phi"] == "0: (0)"  # Deforum's, not sdfleet's t%15
    # Deforum's default turns the noise multiplier on (1.05): refused like any other value
    assert [d.key for d in result.differences] == ["noise_multiplier_schedule"]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"tiling": True}, "tiling"),
        ({"use_mask": True}, "use_mask"),
        ({"cn_2_enabled": True}, "cn_2_enabled"),
        ({"hybrid_motion": "Optical Flow"}, "hybrid_motion"),
        ({"optical_flow_cadence": "DIS Fine"}, "optical_flow_cadence"),
        ({"color_coherence": "Video Input"}, "color_coherence"),
        (
            {"enable_subseed_scheduling": True, "subseed_strength_schedule": "0:(0.3)"},
            "subseed_strength_schedule",
        ),
        ({"W": 500}, "W"),
        ({"zzz_new_setting": 1}, "zzz_new_setting"),
        ({"add_soundtrack": "File", "soundtrack_path": "https://x/a.mp3"}, "soundtrack_path"),
        ({"use_init": True, "init_image": "https://x/i.png"}, "init_image"),
        ({"animation_mode": "Video Input"}, "animation_mode"),
    ],
)
def test_settings_that_change_the_picture_are_refused(settings, key):
    result = import_settings({"enable_noise_multiplier_scheduling": False, **settings}, "s")
    assert [d.key for d in result.differences] == [key]


@pytest.mark.parametrize(
    "settings",
    [
        {"tiling": False, "cn_1_enabled": False, "hybrid_motion": "None", "use_mask": False},
        {"show_info_on_ui": True, "batch_name": "x", "mask_file": "m.png", "cn_1_model": "m"},
        {"translation_z": "0:(9)", "depth_algorithm": "Zoe", "fov_schedule": "0:(40)"},  # 2D
        {"enable_noise_multiplier_scheduling": True, "noise_multiplier_schedule": "0:(1)"},
        {"enable_subseed_scheduling": False, "subseed_strength_schedule": "0:(0.5)"},
    ],
)
def test_ui_state_and_switched_off_settings_are_ignored_quietly(settings):
    result = import_settings({"enable_noise_multiplier_scheduling": False, **settings}, "s")
    assert result.differences == []


def test_a_frame_size_off_the_8_pixel_grid_is_rounded_down_once_accepted():
    result = import_settings({"W": 500, "H": 300, "enable_noise_multiplier_scheduling": 0}, "s")
    assert (result.job["W"], result.job["H"]) == (496, 296)
    assert result.differences[0].line() == "W = 500: not a multiple of 8; rendered at 496"


def test_soundtrack_gif_and_model_map(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    settings = {
        "add_soundtrack": "File",
        "soundtrack_path": "song.mp3",
        "make_gif": False,
        "sd_model_name": "model.safetensors",
        "enable_noise_multiplier_scheduling": False,
    }
    result = import_settings(settings, "s", base_dir=tmp_path)
    assert result.job["video"] == {"soundtrack": "song.mp3"}
    assert result.job["model"] == "model.safetensors" and result.differences == []
    gif = import_settings({**settings, "make_gif": True, "add_soundtrack": "None"}, "s")
    assert gif.job["video"] == {"format": "gif"}
    both = import_settings({**settings, "make_gif": True}, "s", base_dir=tmp_path)
    assert both.job["video"] == {"soundtrack": "song.mp3"}  # a gif has no sound: the MP4
    assert "a gif has no sound" in both.notes[-1]
    assert import_settings(settings, "s", model="other/model").job["model"] == "other/model"
    rife = import_settings(
        {**settings, "frame_interpolation_engine": "RIFE v4.6", "frame_interpolation_x_amount": 3},
        "s",
        base_dir=tmp_path,
    )
    assert rife.job["video"]["interpolate"] == 3
    assert [d.key for d in rife.differences] == ["frame_interpolation_engine"]


def test_an_init_image_keeps_deforums_strength_on_frame_0():
    settings, result, job = imported("eudk_deforum_settings.txt")
    assert job.init_image == "C:\\Users\\username\\Desktop\\picturename.png"
    plan = compile_plan(job)
    assert plan[0].mode == "img2img" and plan[0].strength == 0.8
    assert plan[1].strength == pytest.approx(0.65 - 0.1 / 25)
    assert "frame 0 keeps 0.8 of init_image" in " ".join(result.notes)


@pytest.mark.parametrize(
    "schedule",
    [
        "0: (0.65), 25: (0.55)",
        "0:(0.5)",
        "0:(0.3+0.1*sin(t)), 10:(0.2)",
        "0:(0.2), 1:(0.9), 5:(0.1)",
        "5:(0.4), 9:(0.6)",
        '0:(0.1), "max_f-2":(0.7)',
    ],
)
def test_pinning_frame_0_leaves_every_other_frame_as_it_was(schedule):
    before = evaluate_schedule(schedule, 12)
    after = evaluate_schedule(pin_first_frame(schedule, 0.8, 12, 0), 12)
    assert after[0] == 0.8
    assert after[1:] == pytest.approx(before[1:], rel=1e-12, abs=1e-15)


def test_a_parseq_manifest_inside_the_settings_drives_the_plan():
    document = json.loads((DATA / "parseq.json").read_text())
    settings = read_settings(DATA / "simple.input_settings.txt")
    settings = {**settings, "max_frames": 11, "parseq_manifest": json.dumps(document)}
    result = import_settings(settings, "s")
    assert [d.key for d in result.differences] == ["parseq_manifest.subseed_strength"]
    plan = compile_plan(load_animation_job(result.job))
    rows = document["rendered_frames"]
    assert [r.angle for r in plan] == pytest.approx([row["angle_delta"] for row in rows])
    diffused = [r.seed for r in plan]  # cadence 1: every frame takes Parseq's seed, truncated
    assert diffused == [math.trunc(row["seed"]) for row in rows]
    assert plan[3].prompt == "Parseq prompt!" and plan[3].negative_prompt == "neg parseq prompt!"


def test_the_job_file_written_is_the_same_job():
    settings, result, job = imported("eudk_deforum_settings.txt")
    text = job_yaml(result)
    assert text.startswith("# imported from the Deforum settings file")
    assert "# accepted difference: animation_mode = '3D'" in text
    again = load_animation_job(yaml.safe_load(text))
    assert compile_plan(again) == compile_plan(job)


def test_broken_settings_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "settings.txt"
    path.write_text('{"W": 512,\n "H": 512\n "seed": 1}')
    with pytest.raises(
        ConfigError,
        match=r"settings.txt: not a valid Deforum settings file: "
        r"Expecting ',' delimiter at line 3, column 2",
    ):
        read_settings(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="Deforum settings file: a JSON list, not an object"):
        read_settings(path)
    with pytest.raises(ConfigError, match="prompts is not valid JSON"):
        import_settings({"prompts": "{0: 'a'"}, "s")
