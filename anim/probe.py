"""Finding ffmpeg/ffprobe and probing videos (frame count, fps, codec, pixel format, audio).

- `find_ffmpeg`: an explicit path, else `ffmpeg` on PATH, else the binary imageio-ffmpeg ships.
- `probe_video` uses ffprobe where there is one (on PATH or next to ffmpeg), else ffmpeg itself
  (`-c copy -f null`, counting the frames from its `-progress` output). The argv builders and the
  parsers of both outputs are pure functions.

Split from `anim.video` (which re-exports these names), so each module holds one concern.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sdfleet.batch.errors import EncodeError

logger = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2000


def build_probe_argv(ffprobe_exe: str, path: str) -> list[str]:
    """ffprobe argv printing stream and format facts (with a packet count) as JSON."""
    entries = (
        "stream=codec_type,codec_name,pix_fmt,width,height,avg_frame_rate,r_frame_rate,"
        "nb_read_packets:format=duration"
    )
    return [
        ffprobe_exe,
        "-v",
        "error",
        "-count_packets",
        "-show_entries",
        entries,
        "-of",
        "json",
        path,
    ]


def build_count_argv(ffmpeg_exe: str, path: str) -> list[str]:
    """ffmpeg argv that reads the first video stream without decoding; facts come on stderr,
    the frame count as `frame=N` progress lines on stdout."""
    return [
        ffmpeg_exe,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-i",
        path,
        "-map",
        "0:v:0",
        "-c",
        "copy",
        "-progress",
        "pipe:1",
        "-f",
        "null",
        "-",
    ]


def _parse_rate(rate: str) -> float:
    """'24000/1001' -> 23.976...; '0/0' (unknown) -> 0.0."""
    numerator, _, denominator = rate.partition("/")
    divisor = float(denominator or 1)
    return float(numerator) / divisor if divisor else 0.0


def parse_ffprobe_json(text: str) -> dict[str, Any]:
    """ffprobe's JSON (see build_probe_argv) -> the probe_video dict."""
    data = json.loads(text)
    streams = data.get("streams", [])
    video = next(s for s in streams if s.get("codec_type") == "video")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    fps = _parse_rate(video.get("avg_frame_rate", "0/0")) or _parse_rate(video["r_frame_rate"])
    return {
        "frames": int(video["nb_read_packets"]),
        "fps": fps,
        "codec": video["codec_name"],
        "pix_fmt": video.get("pix_fmt"),
        "duration_s": float(data.get("format", {}).get("duration", "nan")),
        "width": int(video["width"]),
        "height": int(video["height"]),
        "audio_codec": audio["codec_name"] if audio else None,
    }


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses: 'yuv420p(tv, progressive)' stays whole."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_ffmpeg_probe(stderr: str, progress: str) -> dict[str, Any]:
    """ffmpeg's banner (stderr) and -progress output (stdout) -> the probe_video dict."""
    input_part = stderr.split("Output #0", 1)[0]
    video = re.search(r"Stream #0:\d+\S*: Video: (.*)", input_part)
    if video is None:
        raise EncodeError(f"no video stream found; ffmpeg said: {tail(stderr)}")
    fields = _split_top_level(video.group(1))
    size = next((m for f in fields[1:] if (m := re.match(r"(\d+)x(\d+)\b", f))), None)
    fps_match = re.search(r"([\d.]+)(k?) (?:fps|tbr)\b", video.group(1))
    duration = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", input_part)
    audio = re.search(r"Stream #0:\d+\S*: Audio: (\w+)", input_part)
    frames = re.findall(r"^frame=\s*(\d+)", progress, flags=re.MULTILINE)
    fps = float(fps_match.group(1)) * (1000 if fps_match.group(2) else 1) if fps_match else 0.0
    hours, minutes, seconds = duration.groups() if duration else ("0", "0", "nan")
    return {
        "frames": int(frames[-1]) if frames else 0,
        "fps": fps,
        "codec": fields[0].split()[0],
        "pix_fmt": fields[1].split("(")[0].strip() if len(fields) > 1 else None,
        "duration_s": int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        "width": int(size.group(1)) if size else 0,
        "height": int(size.group(2)) if size else 0,
        "audio_codec": audio.group(1) if audio else None,
    }


# ---------------------------------------------------------------------------- binaries


def find_ffmpeg(ffmpeg_exe: str | None = None) -> str:
    """The ffmpeg to run: ffmpeg_exe if given, else `ffmpeg` on PATH, else imageio-ffmpeg's."""
    if ffmpeg_exe is not None:
        found = shutil.which(ffmpeg_exe)
        if found is None:
            raise EncodeError(
                f"ffmpeg not found at {ffmpeg_exe!r}: no such executable. "
                "Fix the path, or leave it unset to use ffmpeg on PATH or imageio-ffmpeg's."
            )
        return found
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise EncodeError(
            "ffmpeg not found: there is no 'ffmpeg' on PATH and imageio-ffmpeg has no binary "
            f"({error}). Install ffmpeg (e.g. apt-get install ffmpeg) or "
            "`pip install imageio-ffmpeg`."
        ) from error


def find_ffprobe(ffmpeg_exe: str) -> str | None:
    """ffprobe on PATH, or next to the ffmpeg in use; None if there is none."""
    on_path = shutil.which("ffprobe")
    if on_path is not None:
        return on_path
    sibling = Path(ffmpeg_exe).with_name("ffprobe")
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def tail(text: str, chars: int = STDERR_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= chars else "..." + text[-chars:]


def run_checked(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
    except OSError as error:
        raise EncodeError(f"could not run {argv[0]!r} to {what}: {error}") from error
    if done.returncode != 0:
        raise EncodeError(
            f"{Path(argv[0]).name} failed (exit status {done.returncode}) to {what}: "
            f"{tail(done.stderr)}"
        )
    return done


def probe_video(path: str | os.PathLike[str], *, ffmpeg_exe: str | None = None) -> dict[str, Any]:
    """Facts about a video: frames, fps, codec, pix_fmt, duration_s, width, height, audio_codec."""
    if not Path(path).is_file():
        raise EncodeError(f"cannot probe {str(path)!r}: no such file")
    ffmpeg_found = find_ffmpeg(ffmpeg_exe)
    ffprobe_exe = find_ffprobe(ffmpeg_found)
    if ffprobe_exe is not None:
        done = run_checked(build_probe_argv(ffprobe_exe, str(path)), f"probe {path}")
        return parse_ffprobe_json(done.stdout)
    done = run_checked(build_count_argv(ffmpeg_found, str(path)), f"probe {path}")
    return parse_ffmpeg_probe(done.stderr, done.stdout)
