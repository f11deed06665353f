"""builtin:null: the measuring instrument takes the replica's call and makes rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sdfleet.batch.null_model import NULL_SIZE_PX, NullPipeline
from sdfleet.batch.schedulers import make_scheduler
from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import main


def call_kwargs(rows: int) -> dict:
    """What batch.replica.Replica passes for a txt2img group."""
    return {
        "prompt": ["p"] * rows,
        "negative_prompt": [""] * rows,
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "width": 64,
        "height": 64,
        "output_type": "np",
        "generator": [torch.Generator().manual_seed(i) for i in range(rows)],
    }


def test_returns_a_fixed_small_float_batch_without_computing():
    pipe = NullPipeline()
    images = pipe(**call_kwargs(3)).images
    assert images.shape == (3, NULL_SIZE_PX, NULL_SIZE_PX, 3) and images.dtype == np.float32
    assert np.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    again = pipe(**call_kwargs(3) | {"image": [None] * 3, "strength": 0.5}).images
    assert np.array_equal(images, again)  # img2img kwargs accepted, same picture


@pytest.mark.parametrize("output_type,kind", [("pil", list), ("pt", torch.Tensor)])
def test_other_output_types(output_type, kind):
    images = NullPipeline()(prompt=["a", "b"], output_type=output_type).images
    assert isinstance(images, kind) and len(images) == 2


def test_has_the_pipeline_surface_the_replica_uses():
    pipe = NullPipeline()
    assert pipe.to("cpu") is pipe
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("euler_a", pipe.scheduler.config)  # a job may name one
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"


def test_a_null_job_makes_every_row(tmp_path, sdfleet_cache):
    rows = [{"id": f"r{i}", "prompt": "p", "num_images": 1 + i % 2} for i in range(10)]
    pq.write_table(table_from_rows(rows), tmp_path / "m.parquet")
    job = {
        "model": "builtin:null",
        "manifest": "m.parquet",
        "executor": "local",
        "batch_size": 3,
        "defaults": {"num_inference_steps": 1, "width": 64, "height": 64},
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == summary["expected_outputs"] == 15
    assert len(list((out / "images").glob("*.png"))) == 15
