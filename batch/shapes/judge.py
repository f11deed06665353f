"""A deterministic pixel judge for the shapes world: what does this picture show?

Pure numpy. 1. every pixel gets its nearest named colour; 2. the background is the commonest
colour of the border; 3. the shape is the largest 4-connected region of other colours; 4. its
colour is the commonest in that region, its kind comes from how much of its bounding box it fills
(square ~1, circle ~pi/4, triangle ~1/2), its size from the box side and its position from the box
centre. `adherence` = the share of images whose every attribute the prompt names is what it shows.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import numpy as np

from sdfleet.batch.shapes.world import COLOURS, IMAGE_PX, KINDS, POSITIONS, SIZES_PX

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)  # (K, 3)
MIN_AREA_FRACTION = 0.02  # a region under 2% of the picture (~80 px at 64 px) is no shape
ATTRIBUTES = ("kind", "colour", "background", "size", "position")


@dataclass(frozen=True)
class Report:
    """What the judge sees; `kind` is None when it finds no shape."""

    background: str
    kind: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    area_fraction: float = 0.0  # the shape's pixels over the picture's
    fill: float = 0.0  # the shape's pixels over its bounding box's
    centre: tuple[float, float] = (0.0, 0.0)  # bounding-box centre, fractions of width/height


def colour_labels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest named colour."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    distance = ((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)  # (H, W, K)
    return distance.argmin(-1)


def _commonest(values: np.ndarray) -> int:
    return int(np.bincount(values.ravel(), minlength=len(_NAMES)).argmax())


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected True region of `mask` (a flood fill; pictures are small)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, queue = [], deque([start])
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def kind_of(fill: float) -> str:
    """Kind from the share of its bounding box a shape fills."""
    if fill < 0.64:
        return "triangle"
    return "circle" if fill < 0.89 else "square"


def position_of(cx: float, cy: float) -> str | None:
    """A named position from the box centre (fractions); None between the named ones."""
    col = "left" if cx < 28 / IMAGE_PX else "right" if cx > 36 / IMAGE_PX else "middle"
    row = "top" if cy < 28 / IMAGE_PX else "bottom" if cy > 36 / IMAGE_PX else "middle"
    if col == row == "middle":
        return "center"
    name = f"{row} {col}"
    return name if name in POSITIONS else None


def judge(image) -> Report:
    """Read one picture (PIL image or (H, W, 3) uint8 array) and say what it shows."""
    labels = colour_labels(np.asarray(image))
    h, w = labels.shape
    border = np.concatenate([labels[:2].ravel(), labels[-2:].ravel(), labels[:, :2].ravel()])
    border = np.concatenate([border, labels[:, -2:].ravel()])
    background = _commonest(border)
    region = largest_region(labels != background)
    area = int(region.sum())
    if area < MIN_AREA_FRACTION * h * w:
        return Report(background=_NAMES[background], area_fraction=area / (h * w))
    ys, xs = np.nonzero(region)
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = area / float(box_h * box_w)
    cx, cy = (xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h
    side_px = max(box_h / h, box_w / w) * IMAGE_PX  # in 64 px units whatever the picture size
    small, large = SIZES_PX["small"], SIZES_PX["large"]
    return Report(
        background=_NAMES[background],
        kind=kind_of(fill),
        colour=_NAMES[_commonest(labels[region])],
        size="small" if side_px < (small + large) / 2 else "large",
        position=position_of(cx, cy),
        area_fraction=area / (h * w),
        fill=fill,
        centre=(float(cx), float(cy)),
    )


def expected_from_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt names: the shape kind, the colour just before it, the colour
    before 'background', the size word and the position phrase."""
    words = re.findall(r"[a-z]+", prompt.lower())
    out: dict[str, str] = {}
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        if word in KINDS and "kind" not in out:
            out["kind"] = word
            if before in COLOURS:
                out["colour"] = before
        elif word == "background" and before in COLOURS:
            out["background"] = before
        elif word in SIZES_PX:
            out["size"] = word
    text = " ".join(words)
    for name in POSITIONS:
        if name in text:
            out["position"] = name
    if "position" not in out and re.search(r"\b(center|centre|middle)\b", text):
        out["position"] = "center"
    return out


def mismatches(report: Report, prompt: str) -> list[str]:
    """'attribute: wanted X, saw Y' for each attribute the prompt names that the picture lacks."""
    seen = {name: getattr(report, name) for name in ATTRIBUTES}
    return [
        f"{name}: wanted {want}, saw {seen[name]}"
        for name, want in expected_from_prompt(prompt).items()
        if seen[name] != want
    ]


def adherence(images, prompts: list[str]) -> float:
    """The share of `images` whose every attribute named in its prompt matches."""
    if len(images) != len(prompts) or not prompts:
        raise ValueError(f"adherence: {len(images)} images for {len(prompts)} prompts")
    return sum(not mismatches(judge(i), p) for i, p in zip(images, prompts)) / len(prompts)
