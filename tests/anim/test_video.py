"""ffmpeg argv, encoding, probing, failures and memory; plus the contact sheet.

Uses whichever ffmpeg `find_ffmpeg` finds (PATH or imageio-ffmpeg's); every encode is a few
64x64 frames, so each test takes well under a second.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdfleet.anim.contact_sheet import make_contact_sheet
from sdfleet.anim.video import (
    EncodeOptions,
    VideoEncoder,
    build_encode_argv,
    encode_frame_dir,
    encode_frames,
    find_ffmpeg,
    list_frame_files,
    parse_ffmpeg_probe,
    parse_ffprobe_json,
    probe_video,
)
from sdfleet.batch.errors import ConfigError, EncodeError

REPO_ROOT = Path(__file__).resolve().parents[2]


def synthetic_frames(count: int, height: int = 64, width: int = 64) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames, each a different brightness with a moving bar."""
    for index in range(count):
        frame = np.full((height, width, 3), (index * 9) % 200 + 20, dtype=np.uint8)
        frame[:, index % width, 1] = 255
        yield frame


def decode_means(path: Path) -> list[float]:
    """Mean brightness of every decoded frame (64x64 videos only)."""
    argv = [
        find_ffmpeg(),
        "-v",
        "error",
        "-i",
        str(path),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "gray",
        "-",
    ]
    raw = subprocess.run(argv, capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 64 * 64)
    return frames.mean(axis=1).tolist()


def write_sine_wav(path: Path, seconds: float, rate: int = 22050) -> Path:
    with wave.open(str(path), "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        samples = (
            int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))
        )
        sound.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


def fake_ffmpeg(tmp_path: Path, message: str) -> str:
    """An 'ffmpeg' that prints message to stderr and exits 1 without reading its input."""
    script = tmp_path / "ffmpeg"
    script.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


# ---------------------------------------------------------------------------- pure argv


def test_mp4_argv() -> None:
    argv = build_encode_argv(
        "ffmpeg", "out.mp4", 64, 48, EncodeOptions(fps=12, crf=20, preset="slow")
    )
    joined = " ".join(argv)
    assert argv[0] == "ffmpeg" and argv[-1] == "out.mp4"
    assert "-f rawvideo -framerate 12 -pix_fmt rgb24 -s 64x48 -i pipe:" in joined
    for part in [
        "-vcodec libx264",
        "-pix_fmt yuv420p",
        "-crf 20",
        "-preset slow",
        "-r 12",
        "-f mp4",
    ]:
        assert part in joined
    assert "-shortest" not in argv and "pad" not in joined


def test_webm_gif_and_odd_size_argv() -> None:
    webm = " ".join(build_encode_argv("ff", "o.webm", 64, 64, EncodeOptions(format="webm")))
    assert "-vcodec libvpx-vp9" in webm and "-b:v 0" in webm and "-pix_fmt yuv420p" in webm
    gif = build_encode_argv("ff", "o.gif", 64, 64, EncodeOptions(format="gif"))
    graph = gif[gif.index("-filter_complex") + 1]
    assert "split" in graph and "palettegen" in graph and "paletteuse" in graph
    odd = " ".join(build_encode_argv("ff", "o.mp4", 33, 31, EncodeOptions()))
    assert "pad=ceil(iw/2)*2:ceil(ih/2)*2" in odd


def test_soundtrack_argv_pads_and_cuts() -> None:
    options = EncodeOptions(fps=24, soundtrack="song.wav")
    argv = build_encode_argv("ff", "o.mp4", 64, 64, options, frame_count=36)
    joined = " ".join(argv)
    assert "-i song.wav" in joined and "apad" in joined and "-shortest" in argv
    assert "-acodec aac" in joined and argv[argv.index("-t") + 1] == "1.5"
    assert "-t" not in build_encode_argv("ff", "o.mp4", 64, 64, options)


def test_argv_builder_imports_no_torch() -> None:
    code = "import sys, anim.video; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "veryfst"}, "did you mean 'veryfast'"),
        ({"format": "mkv"}, "mkv"),
        ({"fps": 0}, "fps"),
        ({"crf": 60}, "crf"),
        ({"format": "gif", "soundtrack": "a.wav"}, "gif cannot carry a soundtrack"),
    ],
)
def test_bad_options_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EncodeOptions(**kwargs)


def test_parse_ffmpeg_probe_output() -> None:
    stderr = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':
  Duration: 00:00:01.42, start: 0.000000, bitrate: 49 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, progressive), \
64x48 [SAR 1:1 DAR 4:3], 30 kb/s, 12 fps, 12 tbr, 12288 tbn (default)
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 22050 Hz, mono, fltp, 61 kb/s
Output #0, null, to 'pipe:':
  Stream #0:0(und): Video: h264 (High), yuv444p, 8x8, 99 fps
"""
    facts = parse_ffmpeg_probe(stderr, "frame=5\nprogress=continue\nframe=17\nprogress=end\n")
    assert facts == {
        "frames": 17,
        "fps": 12.0,
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "duration_s": 1.42,
        "width": 64,
        "height": 48,
        "audio_codec": "aac",
    }


def test_parse_ffprobe_json() -> None:
    text = """{"streams": [
        {"codec_type": "video", "codec_name": "h264", "pix_fmt": "yuv420p", "width": 64,
         "height": 64, "avg_frame_rate": "24000/1001", "r_frame_rate": "24000/1001",
         "nb_read_packets": "30"},
        {"codec_type": "audio", "codec_name": "aac"}],
      "format": {"duration": "1.251"}}"""
    facts = parse_ffprobe_json(text)
    assert facts["frames"] == 30 and facts["fps"] == pytest.approx(23.976, abs=1e-3)
    assert (facts["codec"], facts["audio_codec"], facts["duration_s"]) == ("h264", "aac", 1.251)


# ---------------------------------------------------------------------------- encoding


def test_mp4_has_exactly_the_frames_fps_codec(tmp_path: Path) -> None:
    out = encode_frames(synthetic_frames(17), tmp_path / "clip.mp4", EncodeOptions(fps=12))
    facts = probe_video(out)
    assert (facts["frames"], facts["fps"], facts["codec"], facts["pix_fmt"]) == (
        17,
        12.0,
        "h264",
        "yuv420p",
    )
    assert (facts["width"], facts["height"]) == (64, 64)
    assert facts["duration_s"] == pytest.approx(17 / 12, abs=0.02)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no .partial left


@pytest.mark.parametrize(("fmt", "codec"), [("webm", "vp9"), ("gif", "gif")])
def test_webm_and_gif_have_the_right_frame_count(tmp_path: Path, fmt: str, codec: str) -> None:
    out = encode_frames(synthetic_frames(13), tmp_path / f"clip.{fmt}", EncodeOptions(10, fmt))
    facts = probe_video(out)
    assert (facts["frames"], facts["codec"]) == (13, codec)


def test_odd_sizes_are_padded_to_even(tmp_path: Path) -> None:
    out = encode_frames(synthetic_frames(5, 33, 31), tmp_path / "odd.mp4")
    facts = probe_video(out)
    assert (facts["frames"], facts["width"], facts["height"]) == (5, 32, 34)


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
@pytest.mark.parametrize("audio_s", [0.3, 3.0])
def test_soundtrack_keeps_the_clip_length(tmp_path: Path, fmt: str, audio_s: float) -> None:
    song = write_sine_wav(tmp_path / "song.wav", audio_s)
    frames = list(synthetic_frames(24))  # 1 s at 24 fps; a list: its length cuts the audio
    out = tmp_path / f"clip.{fmt}"
    encode_frames(frames, out, EncodeOptions(fps=24, format=fmt, soundtrack=str(song)))
    facts = probe_video(out)
    assert facts["frames"] == 24 and facts["audio_codec"] in ("aac", "opus")
    assert facts["duration_s"] == pytest.approx(1.0, abs=0.03)


def test_frame_dir_is_encoded_in_frame_order(tmp_path: Path) -> None:
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for index, frame in enumerate(synthetic_frames(12)):
        Image.fromarray(frame).save(frames_dir / f"frame_{index}.png")  # unpadded: 10 after 9
    assert [p.name for p in list_frame_files(frames_dir)][9:11] == ["frame_9.png", "frame_10.png"]
    out = encode_frame_dir(frames_dir, tmp_path / "clip.mp4", EncodeOptions(fps=6, crf=0))
    means = decode_means(out)
    expected = [float(frame.mean(axis=2).mean()) for frame in synthetic_frames(12)]
    assert len(means) == 12
    assert np.argsort(means).tolist() == np.argsort(expected).tolist()


def test_memory_does_not_grow_with_clip_length(tmp_path: Path) -> None:
    script = (
        "import resource, sys, numpy as np\n"
        "from anim.video import EncodeOptions, encode_frames\n"
        "count = int(sys.argv[1])\n"
        "frames = (np.full((256, 256, 3), i % 256, np.uint8) for i in range(count))\n"
        "encode_frames(frames, sys.argv[2], EncodeOptions(fps=24, preset='ultrafast'))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )

    def peak_rss_kb(count: int) -> int:
        argv = [sys.executable, "-c", script, str(count), str(tmp_path / f"{count}.mp4")]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    small, large = peak_rss_kb(100), peak_rss_kb(1000)
    assert large - small < 20 * 1024, f"peak RSS {small} kB for 100 frames, {large} kB for 1000"
    assert probe_video(tmp_path / "1000.mp4")["frames"] == 1000


# ---------------------------------------------------------------------------- failures


def test_missing_ffmpeg_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imageio_ffmpeg

    def no_binary() -> str:
        raise RuntimeError("No ffmpeg exe could be found")

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_binary)
    with pytest.raises(EncodeError, match="no 'ffmpeg' on PATH and imageio-ffmpeg has no binary"):
        find_ffmpeg()
    with pytest.raises(EncodeError, match="ffmpeg not found"):
        encode_frames(synthetic_frames(3), tmp_path / "clip.mp4")


def test_explicit_missing_ffmpeg_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "ffmpeg")
    with pytest.raises(EncodeError, match="ffmpeg not found at .*nowhere"):
        encode_frames(synthetic_frames(3), tmp_path / "clip.mp4", ffmpeg_exe=missing)


def test_failing_ffmpeg_is_quoted(tmp_path: Path) -> None:
    not_audio = tmp_path / "song.wav"
    not_audio.write_text("this is not a sound file\n")
    options = EncodeOptions(fps=12, soundtrack=str(not_audio))
    with pytest.raises(EncodeError, match="ffmpeg said: .*Invalid data found"):
        encode_frames(synthetic_frames(5), tmp_path / "clip.mp4", options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]  # nothing half-written


def test_ffmpeg_dying_mid_stream_is_quoted(tmp_path: Path) -> None:
    ffmpeg_exe = fake_ffmpeg(tmp_path, "Unknown encoder libx264: boom")
    with pytest.raises(EncodeError, match="ffmpeg said: Unknown encoder libx264: boom"):
        encode_frames(synthetic_frames(200), tmp_path / "clip.mp4", ffmpeg_exe=ffmpeg_exe)
    assert not (tmp_path / "clip.mp4").exists()


def test_wrong_frames_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"uint8 \(64, 64, 3\)"):
        with VideoEncoder(tmp_path / "clip.mp4", 64, 64) as video:
            video.write(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(EncodeError, match="3 frames were given .* expected 5"):
        encode_frames(synthetic_frames(3), tmp_path / "clip.mp4", frame_count=5)
    with pytest.raises(EncodeError, match="no frames"):
        encode_frames([], tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EncodeError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")


def test_name_and_format_must_agree(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="named .webm but the format is 'mp4'"):
        encode_frames(synthetic_frames(2), tmp_path / "clip.webm", EncodeOptions())


# ---------------------------------------------------------------------------- contact sheet


def test_contact_sheet_grid(tmp_path: Path) -> None:
    colours = [(i * 25, 255 - i * 25, 100) for i in range(10)]
    paths = []
    for index, colour in enumerate(colours):
        paths.append(tmp_path / f"{index:04d}.png")
        Image.new("RGB", (16, 12), colour).save(paths[-1])
    out = make_contact_sheet(paths, 3, tmp_path / "sheet.png", label=False)
    with Image.open(out) as sheet:
        assert sheet.size == (2 * (16 + 2) + 2, 2 * (12 + 2) + 2)  # frames 0, 3, 6, 9 in 2x2
        assert sheet.getpixel((2 + 8, 2 + 6)) == colours[0]
        assert sheet.getpixel((2 + 18 + 8, 2 + 6)) == colours[3]
        assert sheet.getpixel((2 + 18 + 8, 2 + 14 + 6)) == colours[9]
    wide = make_contact_sheet(paths, 1, tmp_path / "wide.png", columns=5, max_thumb_px=8)
    with Image.open(wide) as sheet:
        assert sheet.size == (5 * (8 + 2) + 2, 2 * (6 + 2) + 2)
