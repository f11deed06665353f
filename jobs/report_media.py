"""The report's pictures: thumbnails made once and reused, infotext read from the images, and
XYZ grids drawn as labelled PNGs (as A1111's XYZ plot lays them out).

Thumbnails are JPEGs named after the output (`thumbs/<output_id>.jpg`); `thumbs/index.parquet`
records the sha256 of the image each was made from and its infotext, so a later report (the
run went on, or was resumed) opens only images it has not seen or that changed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

THUMB_PX = 256
_CACHE = "index.parquet"


def read_infotext(image: Image.Image) -> str | None:
    """A1111's `parameters`: the PNG text chunk, or the Exif UserComment of a jpg/webp."""
    if text := image.info.get("parameters"):
        return str(text)
    raw = image.getexif().get_ifd(0x8769).get(0x9286)  # Exif IFD, UserComment
    if isinstance(raw, bytes) and raw.startswith(b"UNICODE\x00"):
        body = raw[8:]
        for codec in ("utf-16-be", "utf-16-le"):
            try:
                return body.decode(codec)
            except UnicodeDecodeError:
                continue
    if isinstance(raw, bytes) and raw.startswith(b"ASCII\x00\x00\x00"):
        return raw[8:].decode("ascii", "replace")
    return None


def save_thumbnail(image: Image.Image, path: Path, max_px: int = THUMB_PX) -> None:
    """A JPEG of at most `max_px` a side (smaller images keep their size), written whole."""
    thumb = image.convert("RGB")
    thumb.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    tmp = path.with_name(path.name + ".tmp")
    thumb.save(tmp, format="JPEG", quality=85)
    os.replace(tmp, path)


@dataclass
class ThumbCache:
    """thumbs/<name>.jpg plus an index of (name -> sha256 it was made from, infotext)."""

    folder: Path
    made: int = 0
    reused: int = 0

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.known: dict[str, tuple[str, str | None]] = {}
        index = self.folder / _CACHE
        if index.is_file():
            table = pq.read_table(index).to_pydict()
            self.known = dict(zip(table["name"], zip(table["sha256"], table["infotext"])))

    def thumb(self, name: str, source: Path, version: str | None) -> tuple[bool, str | None]:
        """(thumbnail exists, infotext) for `source`, made only if missing or if `version`
        (the image's sha256) changed; without a version it is made every time."""
        target = self.folder / f"{name}.jpg"
        cached = self.known.get(name)
        if cached and version and cached[0] == version and target.is_file():
            self.reused += 1
            return True, cached[1]
        try:
            with Image.open(source) as image:
                infotext = read_infotext(image)
                save_thumbnail(image, target)
        except (OSError, ValueError) as exc:
            logger.warning("no thumbnail for %s: %s", source, exc)
            return False, None
        self.known[name] = (version or "", infotext)
        self.made += 1
        return True, infotext

    def save(self) -> None:
        names = sorted(self.known)
        table = pa.table(
            {
                "name": names,
                "sha256": [self.known[n][0] for n in names],
                "infotext": [self.known[n][1] for n in names],
            }
        )
        tmp = self.folder / f"{_CACHE}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.folder / _CACHE)


def source_thumb_name(init_image: str) -> str:
    """The thumbnail name of an img2img source (by its path)."""
    return "src-" + hashlib.blake2b(init_image.encode(), digest_size=8).hexdigest()


# ----------------------------------------------------------------------------- XYZ grid PNG

_LABEL_BG = (255, 255, 255)
_GAP_PX = 4


@dataclass(frozen=True)
class GridSpec:
    """Cells [z][y][x] hold an image path or None; the labels name each axis value."""

    x_name: str
    y_name: str
    z_name: str | None
    x_values: list[str]
    y_values: list[str]
    z_values: list[str]
    cells: list[list[list[Path | None]]]


def draw_grid(spec: GridSpec, path: Path, cell_px: int = THUMB_PX) -> Path:
    """A1111's layout: x values across the top, y values down the left, one panel per z value
    side by side under its label; an empty cell is grey."""
    font = _font(14)
    label_w = (
        max(_text_w(font, f"{v}") for v in [*spec.y_values, f"{spec.y_name} \\ {spec.x_name}"]) + 16
    )
    label_h = 24
    panel_w = label_w + len(spec.x_values) * (cell_px + _GAP_PX)
    panel_h = label_h * 2 + len(spec.y_values) * (cell_px + _GAP_PX)
    sheet = Image.new("RGB", (panel_w * len(spec.z_values), panel_h), _LABEL_BG)
    draw = ImageDraw.Draw(sheet)
    for k, z_value in enumerate(spec.z_values):
        left = k * panel_w
        if spec.z_name:
            draw.text((left + label_w, 4), f"{spec.z_name}: {z_value}", fill=(0, 0, 0), font=font)
        corner = f"{spec.y_name} \\ {spec.x_name}"
        draw.text((left + 6, label_h + 4), corner, fill=(90, 90, 90), font=font)
        for i, x_value in enumerate(spec.x_values):
            x = left + label_w + i * (cell_px + _GAP_PX)
            draw.text(
                (x + 2, label_h + 4), _fit(font, f"{x_value}", cell_px), fill=(0, 0, 0), font=font
            )
        for j, y_value in enumerate(spec.y_values):
            y = label_h * 2 + j * (cell_px + _GAP_PX)
            draw.text((left + 6, y + cell_px // 2 - 8), f"{y_value}", fill=(0, 0, 0), font=font)
            for i in range(len(spec.x_values)):
                x = left + label_w + i * (cell_px + _GAP_PX)
                _paste_cell(sheet, spec.cells[k][j][i], (x, y), cell_px)
    sheet.save(path, format="PNG")
    return path


def _paste_cell(sheet: Image.Image, source: Path | None, at: tuple[int, int], size: int) -> None:
    if source is None:
        sheet.paste((200, 200, 200), (*at, at[0] + size, at[1] + size))
        return
    with Image.open(source) as image:
        image = image.convert("RGB")
        scale = size / max(image.size)
        shown = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS,
        )
    sheet.paste(shown, (at[0] + (size - shown.width) // 2, at[1] + (size - shown.height) // 2))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text_w(font, text: str) -> int:
    return math.ceil(font.getlength(text))


def _fit(font, text: str, width: int) -> str:
    """`text` cut with an ellipsis to fit `width` pixels."""
    while text and _text_w(font, text) > width - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def grid_values(values: Sequence) -> list:
    """Distinct values in a stable order: numbers ascending, text in order of first use."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    return distinct
