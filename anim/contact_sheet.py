"""A contact sheet: every k-th frame of a clip in one grid PNG, for a quick look."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

_GAP_PX = 2
_BACKGROUND = (24, 24, 24)


def contact_sheet_layout(
    frame_count: int, every_k: int, columns: int | None
) -> tuple[list[int], int]:
    """Which frame indices go on the sheet (0, k, 2k, ...) and how many columns it has."""
    if every_k < 1:
        raise ValueError(f"every_k={every_k!r} must be at least 1 (1 = every frame)")
    if columns is not None and columns < 1:
        raise ValueError(f"columns={columns!r} must be at least 1, or None for a square-ish grid")
    indices = list(range(0, frame_count, every_k))
    if columns is None:
        columns = max(1, math.ceil(math.sqrt(len(indices))))
    return indices, min(columns, max(1, len(indices)))


def make_contact_sheet(
    frame_paths: Sequence[str | os.PathLike[str]],
    every_k: int,
    out_path: str | os.PathLike[str],
    *,
    columns: int | None = None,
    max_thumb_px: int = 256,
    label: bool = True,
) -> Path:
    """Write a grid of frames[0], frames[k], ... to out_path (PNG); returns out_path.

    Thumbnails keep the first frame's aspect ratio, their longer side at most max_thumb_px;
    label writes each frame's index in its corner. Frames are opened one at a time.
    """
    indices, columns = contact_sheet_layout(len(frame_paths), every_k, columns)
    if not indices:
        raise ValueError("no frames to put on a contact sheet")
    with Image.open(frame_paths[0]) as first:
        scale = min(1.0, max_thumb_px / max(first.size))
        thumb = (max(1, round(first.width * scale)), max(1, round(first.height * scale)))
    rows = math.ceil(len(indices) / columns)
    sheet = Image.new(
        "RGB",
        (columns * (thumb[0] + _GAP_PX) + _GAP_PX, rows * (thumb[1] + _GAP_PX) + _GAP_PX),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    for slot, index in enumerate(indices):
        x = _GAP_PX + (slot % columns) * (thumb[0] + _GAP_PX)
        y = _GAP_PX + (slot // columns) * (thumb[1] + _GAP_PX)
        with Image.open(frame_paths[index]) as frame:
            sheet.paste(frame.convert("RGB").resize(thumb, Image.Resampling.BILINEAR), (x, y))
        if label:
            draw.text(
                (x + 2, y + 1),
                str(index),
                fill=(255, 255, 255),
                stroke_width=1,
                stroke_fill=(0, 0, 0),
            )
    sheet.save(out_path, format="PNG")
    logger.debug("contact sheet of %d frames written to %s", len(indices), out_path)
    return Path(out_path)
