"""Music-driven schedules: a sound file -> per-frame series that schedule expressions can read.

``audio: song.wav`` (or ``audio: {file: song.wav, bpm: 120, mux: false}``) in an animation job
makes these names usable in every schedule expression, one value per frame:

- ``rms``: loudness (RMS envelope), ``onset``: onset strength (how much new sound starts),
  ``bass`` (20-250 Hz), ``mid`` (250-4000 Hz), ``treble`` (4000 Hz up): band magnitudes. Each
  is scaled to 0..1 by its largest value over the clip, so ``zoom: "0:(1 + 0.05*rms)"`` keeps
  its size whatever the recording level.
- ``beat``: 1 on the frame nearest each beat (the frame a key ``4b`` lands on), else 0.

Frame i is the sound that plays while it is shown, ``[i/fps, (i+1)/fps)``: the series are
librosa's (hop 512 samples), averaged over the feature frames whose times fall in that span
(the nearest one when none does). Frames past the end of the sound are silence (0), with a
warning.

Beats: librosa's beat tracker, or, with ``bpm``, a fixed grid from ``beat_offset_s``. Beat 0
is the first beat; a key ``4b`` is at beat 4, between beats linearly, past the last one
extrapolated at the median beat interval (`AudioSeries.beat_seconds`). So keys in beats stay
on the music when fps changes; keys in seconds (``2s``) need no audio.

The sound is read with soundfile (WAV, FLAC, OGG, MP3 ...). An unreadable file, one with no
samples, or a silent one (peak below -80 dBFS) is a `ConfigError` naming the file. By default
the file is also the video's soundtrack (``mux: false`` to leave it out).

API:
    AUDIO_SERIES                       (the names expressions may read)
    AudioSpec                          (the job's ``audio:`` field)
    analyse_audio(spec, fps, max_frames) -> AudioSeries    (cached per file, fps and length)
    AudioSeries.values / .beat_seconds(beat) / .clock()
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from sdfleet.anim.job_files import FileField
from sdfleet.anim.schedule import KeyClock
from sdfleet.batch.errors import ConfigError

logger = logging.getLogger(__name__)

AUDIO_SERIES = ("rms", "onset", "beat", "bass", "mid", "treble")
BANDS_HZ = {"bass": (20.0, 250.0), "mid": (250.0, 4000.0), "treble": (4000.0, math.inf)}
HOP = 512  # librosa's default hop: 11.6 ms at 44.1 kHz, finer than any video frame
N_FFT = 2048
SILENT_PEAK = 1e-4  # -80 dBFS


class AudioSpec(FileField):
    """The job's ``audio:`` field; a plain string is the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str = Field(min_length=1, description="sound file, relative to the job file")
    mux: bool = Field(True, description="also the video's soundtrack")
    bpm: float | None = Field(None, gt=0, le=1000, description="fixed beat grid, no tracking")
    beat_offset_s: float = Field(0.0, ge=0, description="time of beat 0 on the bpm grid")

    @model_validator(mode="after")
    def _offset_needs_bpm(self) -> AudioSpec:
        if self.beat_offset_s and self.bpm is None:
            raise ValueError(
                f"beat_offset_s {self.beat_offset_s:g} places a fixed beat grid; give its tempo "
                "as bpm (without bpm, beats are tracked from the sound)"
            )
        return self


@dataclass(frozen=True)
class AudioSeries:
    """The analysed sound, per video frame."""

    file: str
    fps: float
    duration_s: float
    tempo_bpm: float
    beat_times_s: tuple[float, ...]
    values: dict[str, tuple[float, ...]]  # AUDIO_SERIES name -> one value per frame

    def beat_seconds(self, beat: float) -> float:
        """Seconds of beat position `beat` (0 = the first beat; see the module doc)."""
        times = self.beat_times_s
        if not times:
            raise ConfigError(
                f"audio {self.file}: no beats were found, so keys in beats have no place; "
                "give the tempo as audio.bpm (a fixed grid), or write the keys in seconds"
            )
        step = float(np.median(np.diff(times))) if len(times) > 1 else 60.0 / self.tempo_bpm
        if beat <= 0 or beat >= len(times) - 1:
            anchor = 0 if beat <= 0 else len(times) - 1
            return times[anchor] + (beat - anchor) * step
        whole = math.floor(beat)
        return times[whole] + (beat - whole) * (times[whole + 1] - times[whole])

    def clock(self) -> KeyClock:
        return KeyClock(self.fps, self.beat_seconds)


def analyse_audio(spec: AudioSpec, fps: float, max_frames: int) -> AudioSeries:
    """The per-frame series of `spec`'s file for a clip of `max_frames` at `fps` (cached while
    the file is unchanged)."""
    path = Path(spec.file)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(
            f"audio: cannot read {spec.file!r} ({exc.strerror}); fix the path (relative "
            "paths are from the job file's folder)"
        ) from None
    key = (str(path), stat.st_mtime_ns, stat.st_size, fps, max_frames, spec.bpm, spec.beat_offset_s)
    return _analyse_cached(*key)


@functools.lru_cache(maxsize=16)
def _analyse_cached(
    file: str,
    _mtime_ns: int,
    _size: int,
    fps: float,
    max_frames: int,
    bpm: float | None,
    beat_offset_s: float,
) -> AudioSeries:
    # 1. the samples, mono
    samples, rate = read_audio(file)
    duration_s = len(samples) / rate
    # 2. librosa's features at its own hop, then per video frame
    features, feature_times = audio_features(samples, rate)
    starts = np.arange(max_frames) / fps
    if starts[-1] + 1 / fps > duration_s + 1e-9:
        logger.warning(
            "audio %s lasts %.2f s; the clip lasts %.2f s: its last frames get silence",
            file,
            duration_s,
            max_frames / fps,
        )
    values = {
        name: scaled(per_frame(series, feature_times, fps, max_frames, duration_s))
        for name, series in features.items()
    }
    # 3. beats, tracked or on a fixed grid
    tempo, beats = beat_times(samples, rate, duration_s, bpm, beat_offset_s)
    values["beat"] = beat_frames(beats, fps, max_frames)
    return AudioSeries(file, fps, duration_s, tempo, beats, values)


def read_audio(file: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate; ConfigError for unreadable or silent sound."""
    import soundfile

    try:
        data, rate = soundfile.read(file, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        raise ConfigError(
            f"audio: cannot read {file!r} as sound ({exc}); give a WAV, FLAC, OGG or MP3 file"
        ) from None
    samples = data.mean(axis=1)
    if samples.size == 0:
        raise ConfigError(f"audio: {file!r} holds no samples; give a sound file with sound in it")
    peak = float(np.abs(samples).max())
    if not peak >= SILENT_PEAK:  # also catches NaN
        raise ConfigError(
            f"audio: {file!r} is silent (peak {20 * math.log10(peak + 1e-30):.0f} dBFS, below "
            "-80 dBFS): every audio series would be flat; give the sound file meant"
        )
    return samples, int(rate)


def audio_features(samples: np.ndarray, rate: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """librosa's RMS, onset strength and band magnitudes, each at hop `HOP`, and their times."""
    import librosa

    rms = librosa.feature.rms(y=samples, frame_length=N_FFT, hop_length=HOP)[0]
    onset = librosa.onset.onset_strength(y=samples, sr=rate, hop_length=HOP)
    magnitude = np.abs(librosa.stft(samples, n_fft=N_FFT, hop_length=HOP))  # (bins, frames)
    freqs = librosa.fft_frequencies(sr=rate, n_fft=N_FFT)
    features = {"rms": rms, "onset": onset}
    for name, (low, high) in BANDS_HZ.items():
        rows = magnitude[(freqs >= low) & (freqs < high)]
        features[name] = np.sqrt((rows**2).mean(axis=0)) if len(rows) else np.zeros(rms.shape)
    count = min(len(series) for series in features.values())
    times = librosa.frames_to_time(np.arange(count), sr=rate, hop_length=HOP)
    return {name: series[:count] for name, series in features.items()}, times


def per_frame(
    series: np.ndarray, times: np.ndarray, fps: float, max_frames: int, duration_s: float
) -> np.ndarray:
    """Mean of the feature values in each video frame's span; the nearest value where a span
    holds none; 0 for frames that start after the sound ends."""
    index = np.floor(times * fps + 1e-9).astype(np.int64)
    inside = index < max_frames
    sums = np.bincount(index[inside], weights=series[inside], minlength=max_frames)
    counts = np.bincount(index[inside], minlength=max_frames)
    centres = (np.arange(max_frames) + 0.5) / fps
    nearest = np.interp(centres, times, series)
    out = np.where(counts > 0, sums / np.maximum(counts, 1), nearest)
    out[np.arange(max_frames) / fps >= duration_s] = 0.0
    return out


def scaled(values: np.ndarray) -> tuple[float, ...]:
    """0..1 by the largest value (all zeros stay zeros)."""
    top = float(values.max()) if values.size else 0.0
    return tuple(float(v) for v in (values / top if top > 0 else values))


def beat_times(
    samples: np.ndarray, rate: int, duration_s: float, bpm: float | None, offset_s: float
) -> tuple[float, tuple[float, ...]]:
    """(tempo in bpm, beat times in seconds): the grid for `bpm`, else librosa's tracker."""
    if bpm is not None:
        count = max(0, math.floor((duration_s - offset_s) * bpm / 60.0) + 1)
        return bpm, tuple(offset_s + k * 60.0 / bpm for k in range(count))
    import librosa

    tempo, beats = librosa.beat.beat_track(y=samples, sr=rate, hop_length=HOP, units="time")
    return float(np.atleast_1d(tempo)[0]), tuple(float(t) for t in beats)


def beat_frames(beats: tuple[float, ...], fps: float, max_frames: int) -> tuple[float, ...]:
    """1.0 on the frame nearest each beat (as `KeyClock` places a key in beats), else 0.0."""
    marks = [0.0] * max_frames
    for time in beats:
        frame = math.floor(time * fps + 0.5)
        if 0 <= frame < max_frames:
            marks[frame] = 1.0
    return tuple(marks)
