"""Video encoding: frames streamed to ffmpeg (rawvideo rgb24 on stdin), checked, probed.

- `build_encode_argv` is pure: an ffmpeg-python graph compiled to an argv (mp4 = H.264 yuv420p
  with crf/preset, webm = VP9 yuv420p, gif = palettegen/paletteuse in one pass), optionally with a
  soundtrack muxed in the same pass: the audio is padded with silence (`apad`) and cut with
  `-shortest` and, when the frame count is known, `-t frames/fps`, so the video is exactly as
  long as the frames whether the audio is shorter or longer.
- `VideoEncoder` writes one frame at a time to ffmpeg's stdin (memory does not grow with clip
  length; ffmpeg's stderr goes to a temporary file, so no pipe can fill up), checks the exit
  status and raises `EncodeError` quoting ffmpeg's message. The video is written to a `.partial`
  name and renamed when ffmpeg succeeded, then probed: the frame count must match.
- Finding ffmpeg and probing (`find_ffmpeg`, `probe_video`, the probe argv builders and parsers)
  live in `anim.probe`; they are re-exported here so `from anim.video import probe_video` works.

Frames are numpy uint8 arrays (H, W, 3), RGB (`anim.colour.to_uint8` converts the (3, H, W)
float tensors of the render chain).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import ffmpeg
import numpy as np
from PIL import Image

from sdfleet.anim.probe import (  # re-exported: the public names of this module before the split
    STDERR_TAIL_CHARS,
    build_count_argv,
    build_probe_argv,
    find_ffmpeg,
    find_ffprobe,
    parse_ffmpeg_probe,
    parse_ffprobe_json,
    probe_video,
    tail,
)
from sdfleet.batch.errors import ConfigError, EncodeError, suggest_name

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "X264_PRESETS",
    "EncodeOptions",
    "VideoEncoder",
    "build_count_argv",
    "build_encode_argv",
    "build_probe_argv",
    "encode_frame_dir",
    "encode_frames",
    "find_ffmpeg",
    "find_ffprobe",
    "format_from_path",
    "list_frame_files",
    "parse_ffmpeg_probe",
    "parse_ffprobe_json",
    "probe_video",
]

FORMATS = ("mp4", "webm", "gif")
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
# VP9 has no presets: map x264's names to (deadline, cpu-used), fastest first.
_VP9_SPEED = {p: ("realtime", "8") for p in X264_PRESETS[:4]}
_VP9_SPEED |= {"fast": ("good", "4"), "medium": ("good", "2")}
_VP9_SPEED |= {p: ("good", "1") for p in X264_PRESETS[6:]}
_AUDIO_CODEC = {"mp4": "aac", "webm": "libopus"}
_CRF_MAX = {"mp4": 51, "webm": 63, "gif": 63}


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode. Defaults follow Deforum (crf 17, 15 fps) with a faster preset."""

    fps: float = 15.0
    format: str = "mp4"  # mp4 | webm | gif
    crf: int = 17  # quality, lower is better: 0..51 for H.264, 0..63 for VP9; unused for gif
    preset: str = "veryfast"  # x264 preset name (mapped to VP9 speed settings for webm)
    soundtrack: str | None = None  # audio file muxed in; the video keeps the frames' length

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ConfigError(f"fps={self.fps!r} must be > 0 (e.g. 15 or 24)")
        if self.format not in FORMATS:
            hint = suggest_name(self.format, FORMATS)
            raise ConfigError(f"video format {self.format!r} is not one of {FORMATS}{hint}")
        if not 0 <= self.crf <= _CRF_MAX[self.format]:
            raise ConfigError(
                f"crf={self.crf!r} is out of range for {self.format}: "
                f"use 0..{_CRF_MAX[self.format]} (Deforum uses 17)"
            )
        if self.preset not in X264_PRESETS:
            hint = suggest_name(self.preset, X264_PRESETS)
            raise ConfigError(f"preset {self.preset!r} is not an x264 preset{hint}")
        if self.soundtrack is not None and self.format == "gif":
            raise ConfigError("a gif cannot carry a soundtrack: drop soundtrack or use mp4/webm")


def format_from_path(path: str | os.PathLike[str]) -> str:
    """'clip.mp4' -> 'mp4'; raises ConfigError for a suffix we cannot write."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ConfigError(f"cannot tell the video format of {str(path)!r}: name it .mp4/.webm/.gif")
    return suffix


# ---------------------------------------------------------------------------- pure argv builders


def _video_codec_args(options: EncodeOptions) -> dict[str, Any]:
    if options.format == "mp4":
        return {
            "vcodec": "libx264",
            "pix_fmt": "yuv420p",
            "crf": options.crf,
            "preset": options.preset,
            "movflags": "+faststart",
        }
    if options.format == "webm":
        deadline, cpu_used = _VP9_SPEED[options.preset]
        return {
            "vcodec": "libvpx-vp9",
            "pix_fmt": "yuv420p",
            "crf": options.crf,
            "b:v": 0,
            "deadline": deadline,
            "cpu-used": cpu_used,
            "row-mt": 1,
        }
    return {"loop": 0}  # gif: loop forever


def _video_stream(frames: Any, width: int, height: int, video_format: str) -> Any:
    """The video branch of the graph: palette filters for gif, even sides for yuv420p."""
    video = frames.video
    if video_format == "gif":
        # one pass: split the stream, build a palette from one copy, apply it to the other
        copies = video.split()
        palette = copies.stream(0).filter("palettegen")
        return ffmpeg.filter([copies.stream(1), palette], "paletteuse")
    if width % 2 or height % 2:
        # yuv420p needs even sides: pad one column/row of edge pixels rather than fail
        return video.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
    return video


def build_encode_argv(
    ffmpeg_exe: str,
    out_path: str,
    width: int,
    height: int,
    options: EncodeOptions,
    frame_count: int | None = None,
) -> list[str]:
    """ffmpeg argv reading rawvideo rgb24 (width x height) frames on stdin and writing out_path.

    With a soundtrack the audio is padded with silence (`apad`) and the output stops with the
    video (`-shortest`); when frame_count is known the output is also cut at exactly
    frame_count / fps seconds (`-t`), because `-shortest` alone may let a fraction of a second
    of buffered audio through.
    """
    frames = ffmpeg.input(
        "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=options.fps
    )
    streams = [_video_stream(frames, width, height, options.format)]
    audio_args: dict[str, Any] = {}
    if options.soundtrack is not None:
        streams.append(ffmpeg.input(options.soundtrack).audio.filter("apad"))
        audio_args = {"acodec": _AUDIO_CODEC[options.format], "shortest": None}
        if frame_count is not None:
            audio_args["t"] = repr(frame_count / options.fps)
    output = ffmpeg.output(
        *streams,
        out_path,
        f=options.format,
        r=options.fps,
        **_video_codec_args(options),
        **audio_args,
    )
    compiled = output.compile(cmd=ffmpeg_exe)
    return [compiled[0], "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *compiled[1:]]


# ---------------------------------------------------------------------------- the encoder


class VideoEncoder:
    """Stream frames to ffmpeg one at a time; use as a context manager.

    with VideoEncoder("clip.mp4", 512, 512, EncodeOptions(fps=15)) as video:
        for frame in frames:            # (H, W, 3) uint8
            video.write(frame)
    # on leaving: ffmpeg's status checked, file renamed from .partial, frame count verified
    """

    def __init__(
        self,
        out_path: str | os.PathLike[str],
        width: int,
        height: int,
        options: EncodeOptions | None = None,
        *,
        ffmpeg_exe: str | None = None,
        frame_count: int | None = None,
        verify: bool = True,
    ) -> None:
        self.out_path = Path(out_path)
        self.frame_count = frame_count  # when known: checked, and cuts the soundtrack exactly
        self.width, self.height = width, height
        self.options = options or EncodeOptions(format=format_from_path(out_path))
        suffix = self.out_path.suffix.lower().lstrip(".")
        if suffix in FORMATS and suffix != self.options.format:
            raise ConfigError(
                f"{str(out_path)!r} is named .{suffix} but the format is {self.options.format!r}: "
                "make the name and the format agree"
            )
        self.verify = verify
        self.frames_written = 0
        self._ffmpeg_exe = ffmpeg_exe
        partial_name = f"{self.out_path.stem}.partial{self.out_path.suffix}"
        self._partial = self.out_path.with_name(partial_name)
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._running = False

    def __enter__(self) -> VideoEncoder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def start(self) -> None:
        """Check the inputs and start ffmpeg."""
        soundtrack = self.options.soundtrack
        if soundtrack is not None and not Path(soundtrack).is_file():
            raise ConfigError(f"soundtrack {soundtrack!r} not found: fix the path or drop it")
        if not self.out_path.parent.is_dir():
            raise ConfigError(f"cannot write {str(self.out_path)!r}: its folder does not exist")
        if soundtrack is not None and self.frame_count is None:
            logger.warning("soundtrack without a frame count: the end is cut by -shortest only")
        ffmpeg_exe = find_ffmpeg(self._ffmpeg_exe)
        argv = build_encode_argv(
            ffmpeg_exe, str(self._partial), self.width, self.height, self.options, self.frame_count
        )
        logger.debug("starting ffmpeg: %s", " ".join(argv))
        self._stderr = tempfile.TemporaryFile()
        try:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as error:
            self._stderr.close()
            raise EncodeError(f"could not start ffmpeg {argv[0]!r}: {error}") from error
        self._running = True

    def write(self, frame: np.ndarray) -> None:
        """Send one (H, W, 3) uint8 RGB frame."""
        if not self._running or self._process is None or self._process.stdin is None:
            raise RuntimeError("VideoEncoder.write called before start() or after close()")
        self._check_frame(frame)
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).tobytes())
        except (BrokenPipeError, OSError) as error:
            self._fail(error)
        self.frames_written += 1

    def _check_frame(self, frame: np.ndarray) -> None:
        expected = (self.height, self.width, 3)
        if frame.shape != expected or frame.dtype != np.uint8:
            self.abort()
            raise ValueError(
                f"frame {self.frames_written} is {frame.dtype} {frame.shape}; the video takes "
                f"uint8 {expected} (convert with anim.colour.to_uint8)"
            )
        if self.frame_count is not None and self.frames_written >= self.frame_count:
            self.abort()
            raise ValueError(f"more frames than frame_count={self.frame_count} were written")

    def close(self) -> Path:
        """Finish: wait for ffmpeg, check its status, rename the file, verify the frame count."""
        if not self._running or self._process is None:
            raise RuntimeError("VideoEncoder.close called before start() or twice")
        try:
            if self._process.stdin is not None:
                self._process.stdin.close()
        except (BrokenPipeError, OSError) as error:
            self._fail(error)
        if self._process.wait() != 0:
            self._fail()
        self._cleanup()
        short = self.frame_count is not None and self.frames_written != self.frame_count
        if self.frames_written == 0 or short:
            self._partial.unlink(missing_ok=True)
            raise EncodeError(
                f"{self.frames_written} frames were given for {str(self.out_path)!r}"
                + (f", expected {self.frame_count}" if self.frame_count else "")
            )
        os.replace(self._partial, self.out_path)
        if self.verify:
            self._verify()
        return self.out_path

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file (after an error)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._cleanup()
        self._partial.unlink(missing_ok=True)

    def _fail(self, cause: BaseException | None = None) -> None:
        """Raise EncodeError quoting ffmpeg, after a broken pipe or a non-zero exit status."""
        assert self._process is not None
        try:
            status = self._process.wait(timeout=10)  # a broken pipe means it is exiting
        except subprocess.TimeoutExpired:
            self._process.kill()
            status = self._process.wait()
        said = self._read_stderr()
        self.abort()
        raise EncodeError(
            f"ffmpeg failed (exit status {status}) after {self.frames_written} frames while "
            f"encoding {str(self.out_path)!r}; ffmpeg said: {said}"
        ) from cause

    def _read_stderr(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return "(nothing)"
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 4 * STDERR_TAIL_CHARS))
        return tail(self._stderr.read().decode(errors="replace")) or "(nothing)"

    def _cleanup(self) -> None:
        stdin = self._process.stdin if self._process is not None else None
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):  # a dead ffmpeg: the buffered bytes cannot go
                stdin.close()
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.close()
        self._running = False

    def _verify(self) -> None:
        facts = probe_video(self.out_path, ffmpeg_exe=self._ffmpeg_exe)
        if facts["frames"] != self.frames_written:
            raise EncodeError(
                f"{str(self.out_path)!r} holds {facts['frames']} frames but "
                f"{self.frames_written} were written"
            )


def encode_frames(
    frames: Iterable[np.ndarray],
    out_path: str | os.PathLike[str],
    options: EncodeOptions | None = None,
    *,
    ffmpeg_exe: str | None = None,
    frame_count: int | None = None,
    verify: bool = True,
) -> Path:
    """Encode (H, W, 3) uint8 frames from any iterable (a generator keeps memory flat).

    frame_count defaults to len(frames) when frames has a length; see VideoEncoder.
    """
    if frame_count is None and isinstance(frames, Sized):
        frame_count = len(frames)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise EncodeError(f"no frames were given for {str(out_path)!r}")
    height, width = first.shape[:2]
    encoder = VideoEncoder(
        out_path,
        width,
        height,
        options,
        ffmpeg_exe=ffmpeg_exe,
        frame_count=frame_count,
        verify=verify,
    )
    with encoder:
        encoder.write(first)
        for frame in iterator:
            encoder.write(frame)
    return Path(out_path)


def list_frame_files(frames_dir: str | os.PathLike[str], pattern: str = "*.png") -> list[Path]:
    """Frame files in order: by the number in their name (frame_2 before frame_10), then name."""
    files = [p for p in Path(frames_dir).glob(pattern) if p.is_file()]

    def key(path: Path) -> tuple[int, str]:
        numbers = re.findall(r"\d+", path.stem)
        return (int(numbers[-1]) if numbers else -1, path.name)

    return sorted(files, key=key)


def encode_frame_dir(
    frames_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: EncodeOptions | None = None,
    *,
    pattern: str = "*.png",
    ffmpeg_exe: str | None = None,
    verify: bool = True,
) -> Path:
    """Encode the image files of a folder in frame order, reading one file at a time."""
    files = list_frame_files(frames_dir, pattern)
    if not files:
        raise EncodeError(f"no frames matching {pattern!r} in {str(frames_dir)!r}")
    frames = (read_rgb(path) for path in files)
    return encode_frames(
        frames, out_path, options, ffmpeg_exe=ffmpeg_exe, frame_count=len(files), verify=verify
    )


def read_rgb(path: Path) -> np.ndarray:
    """A frame file as uint8 (H, W, 3)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
