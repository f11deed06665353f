"""Example manifests: the marketing variant batch, the augmentation batch, the demo.

`manifests/make_examples.py` calls these to (re)write the committed example manifests;
`sdfleet demo` calls them to make its own manifest, so the demo works from any install.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from sdfleet.batch.shapes.world import POSITIONS, SIZES_PX, Scene, caption, render
from sdfleet.batch.sources import table_from_rows

# builtin:shapes draws these (docs/SHAPES.md); with a real model, products and styles such as
# ("sku-1001", "a ceramic coffee mug", "kitchen") and "studio photo" read the same way.
PRODUCTS = [
    ("sku-1001", "a large red circle", "circles"),
    ("sku-1002", "a small blue square", "squares"),
    ("sku-1003", "a large yellow triangle", "triangles"),
    ("sku-1004", "a large purple square", "squares"),
]
STYLES = ["white", "black", "green"]  # background colours: "{prompt} on a {style} background"


def marketing_rows() -> list[dict]:
    """Product x style rows; `num_images` variants each; carried columns: sku, style, category."""
    rows = []
    for sku, product, category in PRODUCTS:
        for k, style in enumerate(STYLES):
            rows.append(
                {
                    "id": f"{sku}-{style.split()[0]}",
                    "prompt": product,
                    "style": style,
                    "sku": sku,
                    "category": category,
                    "seed": 1000 + 10 * len(rows),
                    "num_images": 2 if k == 0 else 1,
                }
            )
    return rows


def shape_image_png(index: int, size: int = 64) -> bytes:
    """A synthetic source image (coloured shape on a plain background) as PNG bytes."""
    from PIL import Image, ImageDraw

    colours = [(220, 60, 60), (60, 160, 80), (60, 90, 200), (230, 190, 40)]
    image = Image.new("RGB", (size, size), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    box = (size // 5 + index, size // 5, size - size // 5, size - size // 5 - index)
    shape = draw.ellipse if index % 2 else draw.rectangle
    shape(box, fill=colours[index % len(colours)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def world_image_png(scene: Scene) -> bytes:
    """A picture of the shapes world (what builtin:shapes learned from) as PNG bytes."""
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


AUGMENT_SOURCES = [
    Scene("circle", "red", "white", "large", "top left"),
    Scene("square", "blue", "yellow", "large", "center"),
    Scene("triangle", "black", "white", "large", "bottom right"),
    Scene("square", "white", "purple", "large", "top right"),
    Scene("circle", "yellow", "black", "large", "bottom left"),
    Scene("triangle", "purple", "yellow", "large", "center"),
]
RECOLOUR = {"red": "yellow", "blue": "red", "black": "blue", "white": "orange", "yellow": "white"}


def augmentation_rows(image_dir: Path, count: int = 6) -> list[dict]:
    """Source images written to `image_dir`, referenced by relative path, with a label column;
    each prompt asks for the same shape in place in another colour."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, scene in enumerate(AUGMENT_SOURCES[:count]):
        name = f"src-{i:03d}.png"
        (image_dir / name).write_bytes(world_image_png(scene))
        recoloured = replace(scene, colour=RECOLOUR.get(scene.colour, "red"))
        rows.append(
            {
                "id": f"aug-{i:03d}",
                "init_image": f"{image_dir.name}/{name}",
                "label": scene.kind,
                "split": "train" if i < count - 2 else "val",
                "prompt": caption(recoloured),  # a real model: "a photo of a simple shape"
            }
        )
    return rows


NEW_BACKGROUNDS = ("green", "blue", "white", "black", "yellow")


def scene_box(scene: Scene, margin: int = 2) -> tuple[int, int, int, int]:
    """The pixel box (x0, y0, x1, y1) around the scene's shape, `margin` pixels wider: the
    label a detection dataset would carry."""
    cx, cy = POSITIONS[scene.position]
    half = (SIZES_PX[scene.size] + scene.dsize) // 2 + margin
    cx, cy = cx + scene.dx, cy + scene.dy
    return (cx - half, cy - half, cx + half, cy + half)


def box_augmentation_rows(image_dir: Path, count: int = 6) -> list[dict]:
    """Source images (written to `image_dir`) with their shape's box as label columns; each
    prompt keeps the shape and asks for another background, which the job repaints outside
    the box (`mask_from_boxes` with `invert`)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, scene in enumerate(AUGMENT_SOURCES[:count]):
        name = f"src-{i:03d}.png"
        (image_dir / name).write_bytes(world_image_png(scene))
        x0, y0, x1, y1 = scene_box(scene)
        taken = (scene.colour, scene.background)
        background = next(c for c in NEW_BACKGROUNDS[i % 2 :] if c not in taken)
        rows.append(
            {
                "id": f"box-{i:03d}",
                "init_image": f"{image_dir.name}/{name}",
                "label": scene.kind,
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
                "prompt": caption(replace(scene, background=background)),
            }
        )
    return rows


def demo_rows() -> list[dict]:
    """A dozen small txt2img rows, one img2img row from embedded bytes (a red circle made blue)."""
    rows = marketing_rows()
    rows.append(
        {
            "id": "demo-img2img",
            "prompt": "a large blue circle",
            "style": "white",
            "sku": "none",
            "category": "demo",
            "seed": 7,
            "num_images": 1,
            "init_image": world_image_png(AUGMENT_SOURCES[0]),
            "strength": 0.7,
        }
    )
    return rows


def write_manifest(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table_from_rows(rows), path)
    return path
