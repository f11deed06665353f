"""Example manifests: the marketing variant batch, the augmentation batch, the demo.

`manifests/make_examples.py` calls these to (re)write the committed example manifests;
`sdfleet demo` calls them to make its own manifest, so the demo works from any install.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq

from sdfleet.batch.sources import table_from_rows

PRODUCTS = [
    ("sku-1001", "a ceramic coffee mug", "kitchen"),
    ("sku-1002", "a leather backpack", "travel"),
    ("sku-1003", "a pair of running shoes", "sport"),
    ("sku-1004", "a desk lamp", "home"),
]
STYLES = ["studio photo", "watercolor", "flat vector illustration"]


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


def augmentation_rows(image_dir: Path, count: int = 6) -> list[dict]:
    """Source images written to `image_dir`, referenced by relative path, with a label column."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"src-{i:03d}.png"
        (image_dir / name).write_bytes(shape_image_png(i))
        rows.append(
            {
                "id": f"aug-{i:03d}",
                "init_image": f"{image_dir.name}/{name}",
                "label": ["circle", "square"][(i + 1) % 2],
                "split": "train" if i < count - 2 else "val",
                "prompt": "a photo of a simple shape, high detail",
            }
        )
    return rows


def demo_rows() -> list[dict]:
    """A dozen small txt2img rows, one img2img row from embedded bytes."""
    rows = marketing_rows()
    rows.append(
        {
            "id": "demo-img2img",
            "prompt": "a shape, oil painting",
            "style": "oil",
            "sku": "none",
            "category": "demo",
            "seed": 7,
            "num_images": 1,
            "init_image": shape_image_png(1),
            "strength": 0.6,
        }
    )
    return rows


def write_manifest(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table_from_rows(rows), path)
    return path
