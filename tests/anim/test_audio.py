"""Audio series (anim.audio) and keys written as times (anim.schedule.KeyClock).

The sounds are made here with numpy and written with soundfile: a 440 Hz tone that pulses once a
second (on for 0.5 s, off for 0.5 s), and tones in known bands. librosa's first call in a fresh
environment compiles its numba kernels (~20 s, cached afterwards), so the analyses are shared
per module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile

from sdfleet.anim.audio import AudioSpec, analyse_audio
from sdfleet.anim.schedule import KeyClock, parse_schedule
from sdfleet.batch.errors import ConfigError, ScheduleError

RATE = 22050


def tone(seconds: float, hz: float = 440.0, pulse_hz: float | None = 1.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    gate = ((t * pulse_hz) % 1.0 < 0.5) if pulse_hz else np.ones_like(t)
    return (0.5 * np.sin(2 * np.pi * hz * t) * gate).astype(np.float32)


@pytest.fixture(scope="module")
def pulse_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "pulse.wav"
    soundfile.write(path, tone(6.0), RATE)
    return path


def on_off_frames(fps: int, seconds: int) -> tuple[list[int], list[int]]:
    """Frames wholly inside the tone's on halves, and wholly inside its off halves (one frame
    of margin for librosa's 2048-sample window)."""
    on, off = [], []
    for frame in range(fps * seconds):
        phase = (frame % fps) / fps
        if 0.1 <= phase and phase + 1 / fps <= 0.4:
            on.append(frame)
        elif 0.6 <= phase and phase + 1 / fps <= 0.9:
            off.append(frame)
    return on, off


def test_loudness_follows_the_pulses(pulse_wav):
    series = analyse_audio(AudioSpec(file=str(pulse_wav)), fps=10, max_frames=60)
    rms = series.values["rms"]
    on, off = on_off_frames(10, 6)
    assert len(rms) == 60 and max(rms) == pytest.approx(1.0)
    assert min(rms[i] for i in on) > 0.8
    assert max(rms[i] for i in off) < 0.05
    assert min(series.values["onset"][i] for i in off) >= 0.0


def test_zoom_expression_reads_the_loudness(pulse_wav):
    series = analyse_audio(AudioSpec(file=str(pulse_wav)), fps=10, max_frames=60)
    schedule = parse_schedule("0:(1 + 0.05*rms)", "zoom", variables=("t", "max_f", "s", "rms"))
    zoom = schedule.evaluate(60, series=series.values, clock=series.clock())
    on, off = on_off_frames(10, 6)
    assert all(zoom[i] > 1.04 for i in on)
    assert all(zoom[i] < 1.0025 for i in off)
    assert zoom == pytest.approx([1 + 0.05 * v for v in series.values["rms"]])


def test_keys_in_beats_stay_on_the_beat_when_fps_changes(pulse_wav):
    spec = AudioSpec(file=str(pulse_wav))
    schedule = parse_schedule("0:(0), 4b:(1), 6b:(0)", "zoom")
    for fps in (10, 24):
        series = analyse_audio(spec, fps=fps, max_frames=6 * fps)
        values = schedule.evaluate(6 * fps, interpolation="step", clock=series.clock())
        key_frame = values.index(1.0)
        beat_4 = series.beat_times_s[4]
        assert key_frame == math.floor(beat_4 * fps + 0.5)
        assert abs(key_frame / fps - beat_4) <= 0.5 / fps
        assert series.values["beat"][key_frame] == 1.0  # the beat series marks the same frame
    # the tracker locks onto the pulses: a beat a second, or (its tempo prior is near 120 bpm)
    # one every half second
    interval = float(np.median(np.diff(series.beat_times_s)))
    assert min(abs(interval - 1.0), abs(interval - 0.5)) < 0.05


def test_a_bpm_grid_places_beats_without_tracking(pulse_wav):
    spec = AudioSpec(file=str(pulse_wav), bpm=120, beat_offset_s=0.25)
    for fps in (10, 20):
        series = analyse_audio(spec, fps=fps, max_frames=5 * fps)
        assert series.beat_times_s[:3] == pytest.approx((0.25, 0.75, 1.25))
        assert series.beat_seconds(4) == pytest.approx(2.25)
        assert series.beat_seconds(2.5) == pytest.approx(1.5)  # between beats: linear
        values = parse_schedule("0:(0), 4b:(1)", "x").evaluate(
            5 * fps, interpolation="step", clock=series.clock()
        )
        assert values.index(1.0) == math.floor(2.25 * fps + 0.5)


def test_keys_in_seconds_need_only_fps():
    schedule = parse_schedule("0:(0), 2s:(1), 2.5s:(2)", "angle")
    assert schedule.evaluate(60, interpolation="step", clock=KeyClock(15)).index(1.0) == 30
    values = schedule.evaluate(120, interpolation="step", clock=KeyClock(30))
    assert (values.index(1.0), values.index(2.0)) == (60, 75)


def test_keys_in_beats_without_audio_are_an_error():
    schedule = parse_schedule("0:(1), 4b:(2)", "zoom")
    with pytest.raises(ScheduleError, match=r"zoom: key '4b' is in beats.*add `audio"):
        schedule.evaluate(30, clock=KeyClock(15))
    with pytest.raises(ScheduleError, match="needs the clip's fps"):
        schedule.evaluate(30)


def test_bands_follow_the_pitch(tmp_path):
    low_then_high = np.concatenate([tone(2.0, hz=100, pulse_hz=None), tone(2.0, 6000, None)])
    path = tmp_path / "bands.flac"
    soundfile.write(path, low_then_high, RATE)
    values = analyse_audio(AudioSpec(file=str(path)), fps=5, max_frames=20).values
    first, second = slice(1, 9), slice(11, 19)
    assert min(values["bass"][first]) > 0.9 > 0.1 > max(values["bass"][second])
    assert min(values["treble"][second]) > 0.9 > 0.1 > max(values["treble"][first])


def test_frames_after_the_sound_are_silence(pulse_wav, caplog):
    series = analyse_audio(AudioSpec(file=str(pulse_wav)), fps=5, max_frames=40)  # 8 s, 6 s
    assert all(value == 0.0 for value in series.values["rms"][30:])
    assert "its last frames get silence" in caplog.text


def test_analysis_is_cached_per_file_and_clip(pulse_wav):
    spec = AudioSpec(file=str(pulse_wav))
    assert analyse_audio(spec, 10, 60) is analyse_audio(spec, 10, 60)
    assert analyse_audio(spec, 12, 60) is not analyse_audio(spec, 10, 60)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a sound file", "cannot read .* as sound"),
        (None, "is silent"),
        ("empty", "holds no samples"),
    ],
)
def test_bad_sound_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "song.wav"
    if content is None:
        soundfile.write(path, np.zeros(RATE, dtype=np.float32), RATE)
    elif content == "empty":
        soundfile.write(path, np.zeros(0, dtype=np.float32), RATE)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        analyse_audio(AudioSpec(file=str(path)), 10, 10)
    assert str(path) in str(err.value)


def test_a_missing_sound_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="audio: cannot read .*missing.wav.*fix the path"):
        analyse_audio(AudioSpec(file=str(tmp_path / "missing.wav")), 10, 10)


def test_the_audio_field_takes_a_path_or_a_mapping():
    assert AudioSpec.model_validate("song.wav") == AudioSpec(file="song.wav", mux=True)
    with pytest.raises(ValueError, match="give its tempo as bpm"):
        AudioSpec(file="a.wav", beat_offset_s=0.5)


# -- in a job: validated when it loads, the plan follows the sound ----------------------------


def audio_job(folder, **fields):
    from sdfleet.anim.spec import load_animation_job

    data = {"kind": "animation", "max_frames": 60, "fps": 10, "prompts": {0: "a drum"}, **fields}
    return load_animation_job(data, source=str(folder / "job.yaml"))


def test_a_clips_zoom_follows_the_pulses_of_its_sound(pulse_wav):
    from sdfleet.anim.plan import compile_plan, format_table

    job = audio_job(pulse_wav.parent, audio="pulse.wav", zoom="0:(1 + 0.05*rms)")
    assert job.audio.file == str(pulse_wav)  # relative to the job file's folder
    assert job.video.soundtrack == str(pulse_wav)  # muxed by default
    plan = compile_plan(job)
    on, off = on_off_frames(10, 6)
    assert all(plan[i].zoom > 1.04 for i in on) and all(plan[i].zoom < 1.0025 for i in off)
    assert plan[12].audio["rms"] == pytest.approx((plan[12].zoom - 1) / 0.05)
    assert "rms" in plan[0].to_dict()["audio"] and " treble " in format_table(plan[:3])


def test_keys_in_beats_move_with_the_beats_when_fps_changes(pulse_wav):
    from sdfleet.anim.plan import compile_plan

    frames = {}
    for fps in (10, 20):
        job = audio_job(
            pulse_wav.parent,
            audio={"file": "pulse.wav", "bpm": 60, "mux": False},
            fps=fps,
            max_frames=6 * fps,
            angle="0:(0), 3b:(30), 4b:(30)",
            prompts={"0": "a", "2b": "b"},
        )
        assert job.video.soundtrack is None
        plan = compile_plan(job)
        frames[fps] = (
            next(r.frame for r in plan if r.angle == 30),
            next(r.frame for r in plan if r.prompt == "b"),
        )
    assert frames == {10: (30, 20), 20: (60, 40)}  # beats 3 and 2 at 60 bpm: 3 s and 2 s


def test_bad_audio_input_is_refused_when_the_job_loads(tmp_path):
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(RATE, dtype=np.float32), RATE)
    with pytest.raises(ConfigError, match="silent.wav' is silent"):
        audio_job(tmp_path, audio="silent.wav", zoom="0:(1 + rms)")
    with pytest.raises(ConfigError, match="zoom: key '4b' is in beats.*add `audio"):
        audio_job(tmp_path, zoom="0:(1), 4b:(1.1)")
    with pytest.raises(ConfigError, match="reads the audio series bass, rms.*add `audio"):
        audio_job(tmp_path, angle="0:(rms + bass)")
    with pytest.raises(ConfigError, match=r"prompts\['8b'\]: key '8b' is in beats"):
        audio_job(tmp_path, prompts={"0": "a", "8b": "b"})
    with pytest.raises(ConfigError, match=r"unknown name 'rmss' \(did you mean 'rms'\?\)"):
        audio_job(tmp_path, zoom="0:(1 + rmss)")


def test_a_relative_job_path_gives_absolute_sound_paths(pulse_wav, monkeypatch):
    from sdfleet.anim.spec import load_animation_job

    monkeypatch.chdir(pulse_wav.parent.parent)
    job = load_animation_job(
        {"kind": "animation", "max_frames": 4, "audio": "pulse.wav"},
        source=f"{pulse_wav.parent.name}/job.yaml",
    )
    assert job.audio.file == str(pulse_wav) == job.video.soundtrack
