"""Inpainting in batch: manifest rows with a mask_image or job mask_from_boxes, through validation,
expansion and the replica; bad input named at validation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdfleet.batch.manifest import row_problems
from sdfleet.batch.masks import MaskFromBoxes, box_mask
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.replica import Replica
from sdfleet.batch.request import RowDefaults, expand_row
from sdfleet.batch.tiny_conditioning import tiny_inpaint_dir

SIZE = (64, 64)
DEFAULTS = RowDefaults(num_inference_steps=4, width=64, height=64, strength=1.0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def source(size: tuple[int, int] = SIZE) -> Image.Image:
    rng = np.random.default_rng(11)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def messages(row: dict, defaults: RowDefaults = DEFAULTS, base: Path | None = None) -> list:
    return [(p.column, str(p)) for p in row_problems(row, defaults, "m.parquet", 3, base)]


@pytest.fixture(scope="module", params=["builtin:tiny", "inpaint-9"])
def replica(request) -> Replica:
    model = "builtin:tiny" if request.param == "builtin:tiny" else str(tiny_inpaint_dir())
    return Replica(ModelSpec(model=model), batch_size=2)


def test_mask_image_and_box_rows_keep_the_source_outside_the_mask(replica, tmp_path) -> None:
    mask = box_mask(SIZE, [(8, 16, 40, 48)])
    (tmp_path / "src.png").write_bytes(png(source()))
    (tmp_path / "mask.png").write_bytes(png(mask))
    rows = [
        {"id": "bytes", "prompt": "cat", "seed": 9, "init_image": png(source()),
         "mask_image": png(mask)},
        {"id": "path", "prompt": "cat", "seed": 9, "init_image": "src.png",
         "mask_image": "mask.png"},
        {"id": "struct", "prompt": "a dog", "init_image": {"bytes": png(source()), "path": None},
         "mask_image": {"bytes": None, "path": "mask.png"}, "inpaint_only_masked": True},
    ]  # fmt: skip
    requests = [r for row in rows for r in expand_row(row, DEFAULTS, 0, tmp_path)]
    assert all(row_problems(row, DEFAULTS, base_dir=tmp_path) == [] for row in rows)
    results = replica.generate(requests)
    inside = np.asarray(mask) > 0
    for result in results:
        assert result.error is None, result.error
        out, src = np.asarray(result.image), np.asarray(source())
        assert np.array_equal(out[~inside], src[~inside]), result.request.row_id
        assert (out[inside] != src[inside]).any(axis=1).mean() > 0.9
    assert np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))


def test_mask_from_boxes_keeps_the_boxed_objects(replica) -> None:
    boxes = MaskFromBoxes(("boxes",), units="relative", invert=True)
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "mask_from_boxes": boxes, "mask_blur": 2.0})
    row = {"id": "aug", "prompt": "a beach", "init_image": png(source()),
           "boxes": [[0.0, 0.0, 0.25, 0.5], [0.5, 0.5, 1.0, 1.0]]}  # fmt: skip
    assert row_problems(row, defaults) == []
    (result,) = replica.generate(expand_row(row, defaults, 0))
    out, src = np.asarray(result.image), np.asarray(source())
    assert np.array_equal(out[0:32, 0:16], src[0:32, 0:16])
    assert np.array_equal(out[32:, 32:], src[32:, 32:])
    assert (out[40:, 0:24] != src[40:, 0:24]).any(axis=2).mean() > 0.9  # background repainted


def test_bad_inpainting_input_is_named_at_validation(tmp_path) -> None:
    mask = png(box_mask(SIZE, [(0, 0, 8, 8)]))
    no_init = messages({"id": "a", "prompt": "p", "mask_image": mask})
    assert no_init[0][0] == "mask_image" and "give the row an init_image" in no_init[0][1]
    assert "row 3" in no_init[0][1] or "'a'" in no_init[0][1]
    other = messages({"id": "b", "prompt": "p", "init_image": png(source((96, 64))),
                      "mask_image": mask})  # fmt: skip
    assert other[0][0] == "mask_image" and "64x64" in other[0][1] and "96x64" in other[0][1]
    boxes = MaskFromBoxes(("x0", "y0", "x1", "y1"))
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "mask_from_boxes": boxes})
    outside = {"id": "c", "prompt": "p", "init_image": png(source()), "x0": 10, "y0": 10,
               "x1": 80, "y1": 20}  # fmt: skip
    (problem,) = messages(outside, defaults)
    assert problem[0] == "x0,y0,x1,y1" and "outside the image" in problem[1] and "80" in problem[1]
    bad = messages({"id": "d", "prompt": "p", "init_image": png(source()), "mask_image": mask,
                    "mask_blur": -1, "inpaint_padding": 2.5})  # fmt: skip
    assert [column for column, _ in bad] == ["mask_blur", "inpaint_padding"]


@pytest.mark.slow
def test_the_box_augmentation_example_keeps_every_boxed_object_exactly(tmp_path) -> None:
    """jobs/examples/augmentation_boxes.yaml: its manifest is what manifests/make_examples.py
    makes; every output's box region is the source's pixels exactly (the label stays true),
    the background changed, and the label and box columns come through."""
    import pyarrow.parquet as pq

    from sdfleet.jobs.cli import main
    from sdfleet.jobs.examples import box_augmentation_rows

    repo = Path(__file__).resolve().parents[2]
    committed = pq.read_table(repo / "manifests" / "augmentation_boxes.parquet").to_pylist()
    assert box_augmentation_rows(tmp_path / "aug_images") == committed
    job, out = repo / "jobs" / "examples" / "augmentation_boxes.yaml", tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--executor", "local", "-q"]) == 0
    results = pq.read_table(out / "results").to_pylist()
    assert len(results) == 2 * len(committed) and {r["status"] for r in results} == {"ok"}
    by_id = {row["id"]: row for row in committed}
    for result in results:
        row = by_id[result["id"]]
        assert (result["label"], result["x0"], result["y1"]) == (row["label"], row["x0"], row["y1"])
        source = np.asarray(Image.open(repo / "manifests" / row["init_image"]).convert("RGB"))
        made = np.asarray(Image.open(out / result["image_path"]).convert("RGB"))
        box = np.s_[row["y0"] : row["y1"], row["x0"] : row["x1"]]
        assert np.array_equal(made[box], source[box]), result["output_id"]
        outside = np.ones(source.shape[:2], bool)
        outside[box] = False
        assert np.abs(made[outside].astype(int) - source[outside]).mean() > 30  # repainted
