"""Colour coherence: histogram matching in LAB / HSV / RGB, and the colour reference it matches to.

Images are float torch tensors (3, H, W), RGB in [0, 1] (see `anim.motion`). The work is done in
float32 numpy, one row per channel, and the result comes back on the input's device and dtype.

- `match_histograms` is Deforum's `maintain_colors`: convert both pictures to the colour space,
  match each channel's cumulative histogram to the reference's (`skimage.exposure.
  match_histograms`), convert back. Deforum does this on 8-bit OpenCV LAB/HSV; we use float sRGB
  (D65) -> CIE LAB and float HSV, so nothing is quantised twice.
- `ColourReference` keeps what frames are matched to: "first" (frame 0, Deforum's behaviour, which
  freezes the palette) or "window" (the pooled pixels of the last `window` frames, so colour
  changes asked for by the prompt are followed while frame-to-frame drift is still damped). Its
  state is a few numpy arrays (or bytes) so a resumed render matches exactly what it would have.
"""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Iterable

import numpy as np
import torch

from sdfleet.batch.errors import suggest_name

logger = logging.getLogger(__name__)

COLOUR_MODES = ("LAB", "HSV", "RGB")
REFERENCE_MODES = ("first", "window")

# sRGB (D65) linear RGB -> CIE XYZ, and the D65 white point.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


# ---------------------------------------------------------------------------- pixel formats


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded (what PNG and ffmpeg take)."""
    scaled = image.detach().clamp(0, 1).mul(255).round().to(torch.uint8)  # (3, H, W)
    return scaled.permute(1, 2, 0).cpu().numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255.0


def _channel_rows(image: torch.Tensor) -> np.ndarray:
    """(3, ...) tensor -> (3, N) float32 numpy, one contiguous row per channel."""
    return image.detach().cpu().float().reshape(3, -1).numpy()


# ---------------------------------------------------------------------------- colour spaces
# Channel first, (3, ...) arrays, computed in the input's float dtype: images are float32 (a
# row per channel keeps numpy on contiguous, vectorised loops: 4x faster than channel-last
# float64), tests may pass float64.


def _mix(matrix: np.ndarray, values: np.ndarray) -> np.ndarray:
    """3x3 matrix applied to every pixel of a (3, ...) array.

    Written out row by row, not `matrix @ values`: no BLAS call, so numpy's BLAS thread pool
    stays out of the frame loop and the cores are left to the model's own threads.
    """
    weights = matrix.astype(values.dtype)
    mixed = np.empty_like(values)
    for row in range(3):
        np.multiply(values[0], weights[row, 0], out=mixed[row])
        mixed[row] += weights[row, 1] * values[1]
        mixed[row] += weights[row, 2] * values[2]
    return mixed


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(3, ...) sRGB in [0, 1] -> CIE LAB (D65): L in [0, 100], a and b about [-128, 127]."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _mix(_RGB_TO_XYZ / _WHITE_D65[:, None], linear)
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    lab = np.empty_like(f)
    lab[0] = 116.0 * f[1] - 16.0
    lab[1] = 500.0 * (f[0] - f[1])
    lab[2] = 200.0 * (f[1] - f[2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(3, ...) CIE LAB (D65) -> sRGB, clipped to [0, 1] (matched colours may leave the gamut)."""
    f = np.empty_like(lab)
    f[1] = (lab[0] + 16.0) / 116.0
    f[0] = f[1] + lab[1] / 500.0
    f[2] = f[1] - lab[2] / 200.0
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    linear = np.clip(_mix(_XYZ_TO_RGB * _WHITE_D65, xyz), 0.0, 1.0)
    rgb = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(rgb, 0.0, 1.0)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(3, ...) RGB in [0, 1] -> HSV with hue, saturation and value all in [0, 1]."""
    high = rgb.max(axis=0)
    chroma = high - rgb.min(axis=0)
    safe = np.where(chroma > 0, chroma, 1.0)
    r, g, b = rgb[0], rgb[1], rgb[2]
    hue = np.select(
        [chroma == 0, high == r, high == g],
        [0.0, ((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        default=(r - g) / safe + 4.0,
    )
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    return np.stack([hue / 6.0, saturation, high]).astype(rgb.dtype, copy=False)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(3, ...) HSV in [0, 1] (hue wraps) -> RGB in [0, 1]."""
    h6 = (hsv[0] % 1.0) * 6.0
    s, v = hsv[1], hsv[2]
    sector = np.floor(h6).astype(int) % 6
    frac = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    channels = [np.choose(sector, [c[i] for c in choices]) for i in range(3)]
    return np.clip(np.stack(channels), 0.0, 1.0).astype(hsv.dtype, copy=False)


_CONVERSIONS = {
    "LAB": (rgb_to_lab, lab_to_rgb),
    "HSV": (rgb_to_hsv, hsv_to_rgb),
    "RGB": (lambda x: x, lambda x: np.clip(x, 0.0, 1.0)),
}


# ---------------------------------------------------------------------------- matching
# Histograms over fixed bins, not sorted pixel values: a reference is then a (3, BINS) array of
# counts (the window reference is the sum of its frames' counts), and matching is O(pixels),
# about 2x faster than sorting at 256 px. Within a bin, pixels are taken as evenly spread, so
# the source CDF and the reference's inverse CDF are piecewise linear; with 2048 bins a bin is
# 0.05 L or 0.125 a/b units (one 8-bit sRGB step is about 0.4 L), and an image matched to itself
# comes back unchanged (to float rounding). Values outside a channel's range count in its end
# bins.

BINS = 2048
CHANNEL_RANGES = {
    "LAB": ((0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0)),
    "HSV": ((0.0, 1.0), (0.0, 1.0), (0.0, 1.0)),
    "RGB": ((0.0, 1.0), (0.0, 1.0), (0.0, 1.0)),
}


def _bin_positions(values: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Each value's bin (0..BINS-1) and its place inside that bin (0..1)."""
    scaled = np.clip((values - low) * (BINS / (high - low)), 0.0, BINS)
    index = np.minimum(scaled.astype(np.int32), BINS - 1)
    return index, scaled - index


def channel_histogram(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(BINS,) float64 pixel counts of one channel over [low, high]."""
    index, _ = _bin_positions(values, low, high)
    return np.bincount(index, minlength=BINS).astype(np.float64)


def match_channel(values: np.ndarray, low: float, high: float, reference: np.ndarray) -> np.ndarray:
    """Map values (N,) so that their histogram follows `reference` (BINS counts), keeping order."""
    index, inside = _bin_positions(values, low, high)
    counts = np.bincount(index, minlength=BINS)
    source_cdf = np.concatenate([[0.0], np.cumsum(counts) / values.size])  # at the BINS+1 edges
    reference_cdf = np.concatenate([[0.0], np.cumsum(reference) / reference.sum()])
    edges = np.linspace(low, high, BINS + 1)
    # each source bin's edges through the reference's inverse CDF; where the reference has no
    # pixels the inverse is flat, so the left edge takes its last edge and the right its first
    at_left = np.interp(source_cdf[:-1], reference_cdf, edges)
    at_right = np.interp(-source_cdf[1:], -reference_cdf[::-1], edges[::-1])
    low_value, span = at_left[index], (at_right - at_left)[index]
    return (low_value + inside * span).astype(values.dtype, copy=False)


def histograms(image: torch.Tensor, mode: str) -> np.ndarray:
    """(3, BINS) per-channel counts of an image (3, ...) in the colour space of mode."""
    forward, _ = _CONVERSIONS[mode]
    values = forward(_channel_rows(image))  # (3, N)
    return np.stack([channel_histogram(values[c], *CHANNEL_RANGES[mode][c]) for c in range(3)])


def match_to_histograms(image: torch.Tensor, reference: np.ndarray, mode: str) -> torch.Tensor:
    """Match image (3, H, W) or (B, 3, H, W) channel by channel to (3, BINS) reference counts."""
    if image.dim() == 4:
        return torch.stack([match_to_histograms(one, reference, mode) for one in image])
    forward, backward = _CONVERSIONS[mode]
    source = forward(_channel_rows(image))  # (3, N)
    matched = np.stack(
        [match_channel(source[c], *CHANNEL_RANGES[mode][c], reference[c]) for c in range(3)]
    )
    result = torch.from_numpy(backward(matched)).reshape(image.shape)
    return result.to(device=image.device, dtype=image.dtype)


def normalise_colour_mode(mode: str | None) -> str | None:
    """'lab' / 'LAB' -> 'LAB'; None, 'none' or 'None' -> None (no matching)."""
    if mode is None or mode.lower() == "none":
        return None
    if mode.upper() not in COLOUR_MODES:
        raise ValueError(
            f"colour mode {mode!r} is not one of {', '.join(COLOUR_MODES)} or None"
            f"{suggest_name(mode.upper(), COLOUR_MODES)}"
        )
    return mode.upper()


def match_histograms(
    image: torch.Tensor, reference: torch.Tensor, mode: str | None = "LAB"
) -> torch.Tensor:
    """Match each channel's histogram of image (3, H, W) to reference (3, ...) in a colour space.

    The reference may have any spatial shape (e.g. several frames side by side); only its pixel
    distribution matters. A batch (B, 3, H, W) is matched image by image to the same reference.
    mode None returns the image unchanged.
    """
    colour_mode = normalise_colour_mode(mode)
    if colour_mode is None:
        return image
    return match_to_histograms(image, histograms(reference, colour_mode), colour_mode)


# ---------------------------------------------------------------------------- the reference


class ColourReference:
    """What frames are colour-matched to, kept across a render and saved with its state.

    mode "first": the first frame given to `update` (Deforum). mode "window": the pooled pixel
    distribution of the last `window` frames (a histogram blend: matching to it is matching to the
    mixture of those frames' histograms). Frames are stored as float32 (3, H, W) copies on CPU;
    each frame's histograms are computed once per colour mode and summed for the reference.
    """

    def __init__(self, mode: str = "first", window: int = 8) -> None:
        if mode not in REFERENCE_MODES:
            raise ValueError(
                f"colour reference mode {mode!r} is not one of {', '.join(REFERENCE_MODES)}"
                f"{suggest_name(mode, REFERENCE_MODES)}"
            )
        if window < 1:
            raise ValueError(f"colour reference window={window!r} must be at least 1 frame")
        self.mode = mode
        self.window = window if mode == "window" else 1
        self._frames: deque[np.ndarray] = deque(maxlen=self.window)
        # per kept frame, its (3, BINS) histograms by colour mode, filled when first matched to
        self._histograms: deque[dict[str, np.ndarray]] = deque(maxlen=self.window)

    def update(self, frame: torch.Tensor) -> None:
        """Record a finished frame (3, H, W); "first" keeps only the first one ever given."""
        if self.mode == "first" and self._frames:
            return
        self._frames.append(frame.detach().cpu().float().numpy().copy())
        self._histograms.append({})

    @property
    def reference(self) -> torch.Tensor | None:
        """(3, H, W * k) float32: the k kept frames side by side, or None before any frame."""
        if not self._frames:
            return None
        return torch.from_numpy(np.concatenate(list(self._frames), axis=-1))

    def match(self, image: torch.Tensor, mode: str | None = "LAB") -> torch.Tensor:
        """Colour-match image to the reference; unchanged while there is no reference yet."""
        colour_mode = normalise_colour_mode(mode)
        if colour_mode is None or not self._frames:
            return image
        return match_to_histograms(image, self.histograms(colour_mode), colour_mode)

    def histograms(self, mode: str) -> np.ndarray:
        """(3, BINS) pixel counts of the kept frames together, in colour space mode."""
        for frame, known in zip(self._frames, self._histograms, strict=True):
            if mode not in known:
                known[mode] = histograms(torch.from_numpy(frame), mode)
        return np.sum([known[mode] for known in self._histograms], axis=0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume: mode, window and the kept frames (k, 3, H, W) float32."""
        frames = np.stack(list(self._frames)) if self._frames else np.zeros((0, 3, 0, 0), "f4")
        return {
            "mode": np.array(self.mode),
            "window": np.array(self.window),
            "frames": frames,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> ColourReference:
        keeper = cls(str(state["mode"]), int(state["window"]))
        keeper._extend(state["frames"])
        return keeper

    def to_bytes(self) -> bytes:
        """The state as one .npz blob (no pickle)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.state_dict())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> ColourReference:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            return cls.from_state_dict({key: archive[key] for key in archive.files})

    def _extend(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self._frames.append(np.asarray(frame, dtype=np.float32).copy())
            self._histograms.append({})
