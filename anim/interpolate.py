"""Frame interpolation by optical flow: a post stage between the rendered frames and the video.

``video: {interpolate: 2}`` puts one frame between every two rendered frames (4: three), and
plays the result at ``fps * factor``, so the clip lasts as long as before and moves more
smoothly. No model weights: dense optical flow (OpenCV's Farneback) both ways between frames a
and b, then, for t = k / factor,

    I_t(x) = (1 - t) * a(x - t * F_ab(x)) + t * b(x - (1 - t) * F_ba(x))

(each side moved by its share of the motion, bilinear sampling, borders replicated, blended by
closeness), rounded to 8 bits. Where a pixel is the same in a and b the flow is taken as zero
(Farneback drifts a little even on still images). The last rendered frame is held for the
frames after it, so N frames become exactly N * factor (the clip's duration is kept). Two
identical frames have no motion between them, and what comes between them is that frame.

The stage resumes: each in-between frame is written (atomically) to ``interpolated_x<factor>/``
and read back instead of computed when the video is encoded again. The rendered frames are never
changed; the factor is an output setting, so changing it encodes again without rendering.

API:
    interpolate_pair(a, b, factor) -> list[np.ndarray]    (the factor - 1 frames between)
    interpolated_frames(frames, factor, folder) -> Iterator[np.ndarray]   (all N * factor)
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from sdfleet.batch.paths import write_atomic

logger = logging.getLogger(__name__)

# Farneback: pyramid scale, levels, window, iterations, poly_n, poly_sigma (OpenCV's example)
FARNEBACK = (0.5, 4, 21, 3, 5, 1.1)


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 flow from a to b: a(x) ~ b(x + flow(x))."""
    import cv2

    grey_a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    grey_b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(grey_a, grey_b, None, *FARNEBACK, 0)


def moved_by_flow(image: np.ndarray, flow: np.ndarray, share: float) -> np.ndarray:
    """`image` sampled at x - share * flow(x), as float32 (H, W, 3)."""
    import cv2

    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x = xs - share * flow[..., 0]
    map_y = ys - share * flow[..., 1]
    moved = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return moved.astype(np.float32)


def interpolate_pair(a: np.ndarray, b: np.ndarray, factor: int) -> list[np.ndarray]:
    """The `factor - 1` uint8 (H, W, 3) frames between frames `a` and `b`."""
    if a.shape != b.shape or a.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 of one shape, got {a.shape} and {b.shape}")
    forward, backward = optical_flow(a, b), optical_flow(b, a)
    # Where a pixel is the same in both frames, nothing moved there: zero flow. Farneback
    # leaves small drifts (~0.02 px on noise) that would soften still parts; and so two
    # identical frames give exactly that frame between them.
    still = np.all(a == b, axis=-1)
    forward[still] = 0.0
    backward[still] = 0.0
    between = []
    for step in range(1, factor):
        t = step / factor
        blend = (1 - t) * moved_by_flow(a, forward, t) + t * moved_by_flow(b, backward, 1 - t)
        between.append(np.clip(np.rint(blend), 0, 255).astype(np.uint8))
    return between


def interpolated_frames(
    frames: Iterable[np.ndarray], factor: int, folder: Path
) -> Iterator[np.ndarray]:
    """Every rendered frame followed by the frames between it and the next (the last one
    held), reading in-betweens already in `folder` and writing the new ones there."""
    folder.mkdir(parents=True, exist_ok=True)
    previous: np.ndarray | None = None
    index = 0
    for frame in frames:
        if previous is not None:
            yield previous
            yield from _between(previous, frame, factor, folder, index - 1)
        previous, index = frame, index + 1
    if previous is not None:
        for _ in range(factor):
            yield previous


def _between(
    a: np.ndarray, b: np.ndarray, factor: int, folder: Path, index: int
) -> list[np.ndarray]:
    paths = [folder / f"between_{index:06d}_{step}.png" for step in range(1, factor)]
    if all(path.is_file() for path in paths):
        return [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    between = interpolate_pair(a, b, factor)
    for path, image in zip(paths, between, strict=True):
        data = io.BytesIO()
        Image.fromarray(image).save(data, format="PNG")
        write_atomic(path, data.getvalue())
    return between
