"""Deforum settings files through the command line: validate/plan/run take them as they are,
import-deforum writes the equivalent job file (jobs/deforum_cli.py).

The real files are in tests/data/deforum (SOURCES.md). Renders use a copy of a shared settings
file made small (3 frames at 64x64, 2 steps) so they take seconds on builtin:tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sdfleet.anim.deforum import load_deforum_job
from sdfleet.anim.plan import compile_plan, plan_to_jsonl
from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_OK

DATA = Path(__file__).resolve().parents[1] / "data" / "deforum"
REFUSED = {
    "default_settings.txt": ["animation_mode", "sd_model_name", "noise_multiplier_schedule"],
    "a1111_deforum_settings.txt": ["restore_faces", "r_upscale_video", "sampler"],
    "eudk_deforum_settings.txt": ["animation_mode", "sampler"],
    "parkermedlin_deforum_settings.txt": ["sd_model_name", "noise_multiplier_schedule"],
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_validate_lists_the_refused_keys_then_passes_once_accepted(name, capsys):
    path = DATA / name
    assert main(["validate", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "cannot be honoured by sdfleet" in err and "--accept-deforum-differences" in err
    assert all(f"  - {key} = " in err for key in REFUSED[name])
    status = main(["validate", str(path), "--accept-deforum-differences"])
    out, err = capsys.readouterr()
    if name == "eudk_deforum_settings.txt":  # its init image is a path on the author's PC
        assert status == EXIT_CONFIG and "picturename.png; fix the path" in err
    else:
        frames = json.loads(path.read_text())["max_frames"]
        assert status == EXIT_OK and f"ok (animation, {frames} frames)" in out


def test_deforums_own_test_settings_validate_as_they_are(capsys):
    assert main(["validate", str(DATA / "simple.input_settings.txt")]) == EXIT_OK
    assert "ok (animation, 10 frames)" in capsys.readouterr().out


def test_plan_shows_the_settings_files_frames(capsys):
    path = DATA / "default_settings.txt"
    assert main(["plan", str(path), "--accept-deforum-differences", "--json"]) == EXIT_OK
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 120 and records[0]["zoom"] == pytest.approx(1.0025)
    assert [r["mode"] for r in records[:3]] == ["txt2img", "tween", "img2img"]  # cadence 2


@pytest.fixture
def small_settings(tmp_path) -> Path:
    """ParkerMedlin's shared 2D file, made small; its checkpoint is given with --model."""
    settings = json.loads((DATA / "parkermedlin_deforum_settings.txt").read_text())
    settings.update(W=64, H=64, max_frames=3, steps=2, enable_noise_multiplier_scheduling=False)
    path = tmp_path / "settings.txt"
    path.write_text(json.dumps(settings, indent=4))
    return path


def test_run_takes_a_settings_file_and_resumes_with_the_seed_it_drew(
    tiny_dir, small_settings, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["run", str(small_settings), "--out", str(out), "--no-progress"]
    assert main([*argv, "--model", "builtin:tiny"]) == EXIT_OK
    assert "seed -1 (random): seed" in capsys.readouterr().err
    record = yaml.safe_load((out / "job.yaml").read_text())
    assert record["scheduler"] == "dpmpp_2m_karras" and record["width"] == 64
    assert sorted(p.name for p in (out / "frames").iterdir())[-1] == "frame_000002.png"
    # the same command again: the recorded seed, so the finished clip is recognised
    assert main([*argv, "--model", "builtin:tiny"]) == EXIT_OK
    assert "job.yaml recorded is used again" in capsys.readouterr().err
    assert yaml.safe_load((out / "job.yaml").read_text())["seed"] == record["seed"]


def test_import_deforum_writes_the_equivalent_job_file(small_settings, tmp_path, capsys):
    target = tmp_path / "jobs" / "clip.yaml"
    target.parent.mkdir()
    argv = ["import-deforum", str(small_settings), "-o", str(target), "--seed", "7"]
    assert main(argv) == EXIT_CONFIG  # the checkpoint it names is not here
    assert "sd_model_name = 'absolutereality.safetensors'" in capsys.readouterr().err
    assert not target.exists()
    assert main([*argv, "--accept-deforum-differences"]) == EXIT_OK
    assert f"{target}: animation job, 3 frames" in capsys.readouterr().out
    text = target.read_text()
    assert "# accepted difference: sd_model_name" in text and "seed 7 given" in text
    expected, _ = load_deforum_job(small_settings, accept=True, seed=7)
    assert main(["plan", str(target), "--json"]) == EXIT_OK
    assert capsys.readouterr().out == plan_to_jsonl(compile_plan(expected))


def test_model_is_only_for_settings_files(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("kind: animation\nmax_frames: 2\n")
    assert main(["plan", str(job), "--model", "x.safetensors"]) == EXIT_CONFIG
    assert "--model is for Deforum settings files" in capsys.readouterr().err


def test_a_broken_settings_file_is_an_error_with_its_line(tmp_path, capsys):
    path = tmp_path / "settings.txt"
    path.write_text('{\n    "W": 512,\n    "H": 512\n    "max_frames": 3\n}')
    assert main(["validate", str(path)]) == EXIT_CONFIG
    assert "not a valid Deforum settings file: Expecting ',' delimiter at line 4" in (
        capsys.readouterr().err
    )


def test_a_clip_driven_by_its_sound_renders_with_the_sound_muxed(tiny_dir, tmp_path, capsys):
    import numpy as np
    import soundfile

    from sdfleet.anim.video import probe_video

    rate = 22050
    t = np.arange(2 * rate) / rate
    soundfile.write(tmp_path / "beat.wav", (0.5 * np.sin(880 * t) * (t % 1 < 0.5)), rate)
    job = {
        "kind": "animation",
        "W": 64,
        "H": 64,
        "fps": 4,
        "max_frames": 8,
        "steps_schedule": "0:(2)",
        "audio": "beat.wav",
        "zoom": "0:(1 + 0.2*rms)",
        "prompts": {"0": "a drum", "1s": "a bell"},
        "video": {"preset": "veryfast"},
    }
    (tmp_path / "clip.yaml").write_text(yaml.safe_dump(job))
    out = tmp_path / "out"
    assert main(["plan", str(tmp_path / "clip.yaml")]) == EXIT_OK
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[-7:] == [
        "rms",
        "onset",
        "bass",
        "mid",
        "treble",
        "beat",
        "prompt",
    ]
    assert main(["run", str(tmp_path / "clip.yaml"), "--out", str(out), "--no-progress"]) == 0
    facts = probe_video(out / "clip.mp4")
    assert facts["frames"] == 8 and facts["audio_codec"]
    plan = [json.loads(line) for line in (out / "plan.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in plan] == ["a drum"] * 4 + ["a bell"] * 4
    assert plan[1]["zoom"] > 1.15 and plan[3]["zoom"] < 1.05  # sound on, then off
