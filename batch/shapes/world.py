"""The synthetic captioned world `builtin:shapes` learns: one flat shape on a flat background.

Pure (numpy + PIL). A scene is drawn from a seed: a shape kind, its colour, a background colour, a
size and a position, each with a small jitter so the model sees more than a grid of pictures. The
caption names what the picture shows ("a small red circle on a blue background, top left"); some
captions leave out the size, the position or the background so that partial prompts work too.
Colour x shape pairs in `HELD_OUT` are never drawn for training, to measure composition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_PX = 64
_SUPERSAMPLE = 4  # draw 4x larger, then downsample: anti-aliased edges like a real renderer

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "purple": (140, 50, 180),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
KINDS = ("circle", "square", "triangle")
SIZES_PX = {"small": 18, "large": 32}  # the shape's bounding-box side
POSITIONS = {  # bounding-box centre (x, y) in pixels
    "top left": (20, 20),
    "top right": (44, 20),
    "bottom left": (20, 44),
    "bottom right": (44, 44),
    "center": (32, 32),
}
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("blue", "circle"), ("orange", "square")}
)
JITTER_PX = 2


@dataclass(frozen=True)
class Scene:
    """What one picture shows; `caption` names all of it or, in training, part of it."""

    kind: str
    colour: str
    background: str
    size: str
    position: str
    dx: int = 0  # jitter of the centre, pixels
    dy: int = 0
    dsize: int = 0  # jitter of the side, pixels


def caption(scene: Scene, *, size: bool = True, background: bool = True, position: bool = True):
    """'a small red circle on a blue background, top left'; the flags leave parts out."""
    words = ["a"] + ([scene.size] if size else []) + [scene.colour, scene.kind]
    text = " ".join(words)
    if background:
        text += f" on a {scene.background} background"
    if position:
        text += " in the center" if scene.position == "center" else f", {scene.position}"
    return text


def all_scenes(held_out: bool | None = False) -> list[Scene]:
    """Every combination without jitter: `held_out` False -> training pairs only, True -> only the
    held-out pairs, None -> all."""
    out = []
    for colour in COLOURS:
        for kind in KINDS:
            if held_out is not None and ((colour, kind) in HELD_OUT) != held_out:
                continue
            for background in COLOURS:
                if background == colour:
                    continue
                for size in SIZES_PX:
                    for position in POSITIONS:
                        out.append(Scene(kind, colour, background, size, position))
    return out


def random_scene(rng: np.random.Generator, held_out: bool = False) -> Scene:
    """One scene with jitter; training pairs unless `held_out`."""
    names = list(COLOURS)
    while True:
        colour, background = rng.choice(names, size=2, replace=False)
        kind = str(rng.choice(KINDS))
        if ((str(colour), kind) in HELD_OUT) == held_out:
            break
    jitter = rng.integers(-JITTER_PX, JITTER_PX + 1, size=3)
    return Scene(
        kind=kind,
        colour=str(colour),
        background=str(background),
        size=str(rng.choice(list(SIZES_PX))),
        position=str(rng.choice(list(POSITIONS))),
        dx=int(jitter[0]),
        dy=int(jitter[1]),
        dsize=int(jitter[2]),
    )


def random_caption(scene: Scene, rng: np.random.Generator, p_drop: float = 0.15) -> str:
    """The caption with each optional part left out with probability `p_drop`."""
    keep = rng.random(3) >= p_drop
    return caption(scene, size=bool(keep[0]), background=bool(keep[1]), position=bool(keep[2]))


MISLABELLED = ("colour", "kind", "background", "size", "position")


def mislabel(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with one of its named attributes swapped for another value: what a wrong caption
    says of a picture. Never a held-out colour x shape pair, never a shape the colour of its
    background."""
    choices = {
        "colour": list(COLOURS),
        "kind": list(KINDS),
        "background": list(COLOURS),
        "size": list(SIZES_PX),
        "position": list(POSITIONS),
    }
    while True:
        field = MISLABELLED[int(rng.integers(len(MISLABELLED)))]
        value = str(rng.choice([v for v in choices[field] if v != getattr(scene, field)]))
        wrong = replace(scene, **{field: value})
        if wrong.colour != wrong.background and (wrong.colour, wrong.kind) not in HELD_OUT:
            return wrong


def render(scene: Scene, px: int = IMAGE_PX) -> Image.Image:
    """Draw the scene as an RGB image of `px` x `px` (geometry is defined at 64 px and scaled)."""
    big = px * _SUPERSAMPLE
    scale = big / IMAGE_PX
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    cx, cy = (cx + scene.dx) * scale, (cy + scene.dy) * scale
    half = (SIZES_PX[scene.size] + scene.dsize) * scale / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[scene.colour]
    if scene.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.kind == "square":
        draw.rectangle(box, fill=fill)
    elif scene.kind == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    else:
        raise ValueError(f"scene.kind: {scene.kind!r} is not one of {KINDS}")
    return image.resize((px, px), Image.Resampling.LANCZOS)


def silhouette(scene: Scene, px: int = IMAGE_PX) -> Image.Image:
    """The scene's layout as a ControlNet takes it: the shape white on black, where and as large
    as the scene has it (what `builtin:shapes`' layout ControlNet learned to follow)."""
    return render(replace(scene, colour="white", background="black"), px)


def render_array(scene: Scene, px: int = IMAGE_PX) -> np.ndarray:
    """The scene as a (px, px, 3) uint8 array."""
    return np.asarray(render(scene, px))


def sample_batch(
    seed: int, n: int, p_drop: float = 0.15
) -> tuple[np.ndarray, list[Scene], list[str]]:
    """`n` training scenes from `seed`: images (n, 64, 64, 3) uint8, scenes, captions."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    captions = [random_caption(s, rng, p_drop) for s in scenes]
    images = np.stack([render_array(s) for s in scenes])
    return images, scenes, captions
