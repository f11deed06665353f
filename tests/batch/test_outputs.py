"""Output files: names, PNG metadata read back, results Parquet with one row per output."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdfleet.batch.actor import GenerateBatch, RunConfig
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.outputs import (
    OutputDir,
    a1111_parameters,
    encode_image,
    output_name,
    read_png_metadata,
    read_user_comment,
)
from sdfleet.batch.request import RowDefaults
from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.examples import shape_image_png

DEFAULTS = RowDefaults(width=64, height=64, num_inference_steps=2, guidance_scale=4.0)


def make_actor(tmp_path, **options) -> GenerateBatch:
    config = RunConfig(
        model=ModelSpec(), defaults=DEFAULTS, out_uri=str(tmp_path / "out"), job_seed=5, **options
    )
    return GenerateBatch(config)


ROWS = [
    {"id": "a", "prompt": "a cat", "num_images": 2, "label": "cat", "score": 0.5},
    {"id": "b", "prompt": "a dog", "seed": 3, "label": "dog", "score": None},
    {"id": "c", "prompt": "x", "init_image": b"broken", "label": "bad", "score": 1.0},
]


def test_output_names():
    assert output_name("sku-1", 0, 1) == "sku-1"
    assert output_name("sku-1", 2, 3) == "sku-1_2"


def test_actor_writes_images_and_one_result_row_per_output(tiny_dir, tmp_path):
    actor = make_actor(tmp_path)
    table = actor(table_from_rows(ROWS))
    rows = table.to_pylist()
    assert [r["output_id"] for r in rows] == ["a_0", "a_1", "b", "c"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    assert [r["label"] for r in rows] == ["cat", "cat", "dog", "bad"]  # carried through
    assert rows[2]["seed"] == 3 and rows[3]["error"].startswith("init_image:")
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a_0.png", "a_1.png", "b.png"]
    import hashlib

    assert (
        rows[0]["sha256"] == hashlib.sha256((out / rows[0]["image_path"]).read_bytes()).hexdigest()
    )
    assert table.schema.field("seed").type == pa.int64()
    assert table.schema.field("error").type == pa.string()


def test_png_metadata_reads_back(tiny_dir, tmp_path):
    actor = make_actor(tmp_path)
    actor(table_from_rows(ROWS[1:2]))
    data = (tmp_path / "out" / "images" / "b.png").read_bytes()
    meta = read_png_metadata(data)
    assert meta["parameters"].splitlines()[0] == "a dog"
    assert "Steps: 2, Sampler: Euler, CFG scale: 4.0, Seed: 3, Size: 64x64" in meta["parameters"]
    assert meta["sdfleet"]["seed"] == 3 and meta["sdfleet"]["model"] == "builtin:tiny"
    assert meta["sdfleet"]["mode"] == "txt2img"


def test_a1111_parameters_with_negative_and_strength():
    text = a1111_parameters(
        {
            "prompt": "p",
            "negative_prompt": "n",
            "num_inference_steps": 4,
            "scheduler": "euler",
            "guidance_scale": 7.0,
            "seed": 1,
            "width": 8,
            "height": 16,
            "model": "m",
            "strength": 0.5,
        }
    )
    assert text.splitlines() == [
        "p",
        "Negative prompt: n",
        "Steps: 4, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 8x16, Model: m, "
        "Denoising strength: 0.5",
    ]


@pytest.mark.parametrize("fmt,pil_format", [("jpg", "JPEG"), ("webp", "WEBP")])
def test_other_image_formats(tiny_dir, tmp_path, fmt, pil_format):
    actor = make_actor(tmp_path, image_format=fmt)
    (row,) = actor(table_from_rows(ROWS[1:2])).to_pylist()
    assert row["image_path"] == f"images/b.{fmt}"
    with Image.open(tmp_path / "out" / row["image_path"]) as image:
        assert image.format == pil_format
        assert "Seed: 3" in read_user_comment(image)


def test_embedded_image_bytes_are_a_datasets_image_struct(tiny_dir, tmp_path):
    actor = make_actor(tmp_path, embed_image_bytes=True)
    table = actor(table_from_rows(ROWS))
    assert table.schema.field("image").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    path = tmp_path / "r.parquet"
    pq.write_table(table, path)
    first = pq.read_table(path).to_pylist()[0]["image"]
    assert first["path"] == "images/a_0.png"
    assert Image.open(io.BytesIO(first["bytes"])).size == (64, 64)
    assert pq.read_table(path).to_pylist()[3]["image"] is None  # the failed row


def test_actor_accepts_a_numpy_column_dict(tiny_dir, tmp_path):
    """Ray's default batch format: a dict of numpy arrays, nulls as NaN in float columns."""
    import numpy as np

    actor = make_actor(tmp_path)
    batch = {
        "id": np.array(["n1"], dtype=object),
        "prompt": np.array(["p"], dtype=object),
        "seed": np.array([np.nan]),
        "init_image": np.array([shape_image_png(0)], dtype=object),
    }
    (row,) = actor(batch).to_pylist()
    assert row["status"] == "ok" and row["mode"] == "img2img"


def test_output_dir_writes_atomically(tmp_path):
    out = OutputDir(str(tmp_path / "o"))
    out.write_bytes("a/b.txt", b"hello")
    assert out.read_bytes("a/b.txt") == b"hello" and out.exists("a/b.txt")
    assert not out.exists("a/b.txt.tmp")


def test_jpg_metadata_keeps_non_ascii_prompts():
    params = {
        "prompt": "café ☕ 東京",
        "negative_prompt": "",
        "num_inference_steps": 4,
        "scheduler": None,
        "guidance_scale": 7.0,
        "seed": 1,
        "width": 8,
        "height": 8,
        "model": "m",
        "strength": None,
    }
    data = encode_image(Image.new("RGB", (8, 8)), "jpg", params)
    with Image.open(io.BytesIO(data)) as image:
        assert read_user_comment(image).splitlines()[0] == "café ☕ 東京"


def test_an_inpainting_row_writes_a1111s_mask_blur_after_the_denoising_strength():
    from tests.batch.a1111_rules import parse

    params = {
        "prompt": "p",
        "num_inference_steps": 4,
        "scheduler": "euler",
        "guidance_scale": 7.0,
        "seed": 1,
        "width": 64,
        "height": 64,
        "model": "m",
        "strength": 1.0,
        "mode": "inpaint",
        "mask_blur": 4.0,
    }
    text = a1111_parameters(params)
    assert text.endswith("Denoising strength: 1.0, Mask blur: 4")
    assert parse(text)["Mask blur"] == "4"
    assert "Mask blur" not in a1111_parameters(params | {"mode": "img2img", "mask_blur": None})
