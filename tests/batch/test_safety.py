"""The safety-checker policy: a model's own checker is kept by default and a hit is a row with
status `filtered` and `nsfw: true`, never a black image saved as ok; `safety_checker: false`
drops the checker."""

from __future__ import annotations

import glob

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.batch.models import ModelSpec
from sdfleet.batch.replica import SAFETY_FIX, Replica
from sdfleet.batch.request import GenRequest
from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_OK, EXIT_ROWS_FAILED
from tests.batch.safety_model import save_checked_tiny


@pytest.fixture(scope="module")
def checked(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checked")
    return {
        "fires": save_checked_tiny(tiny_dir, folder / "fires", fires=True),
        "quiet": save_checked_tiny(tiny_dir, folder / "quiet", fires=False),
    }


def _row(row_id: str, seed: int) -> GenRequest:
    return GenRequest(
        row_id=row_id,
        variant=0,
        output_name=row_id,
        prompt="a red fox",
        negative_prompt="",
        seed=seed,
        num_inference_steps=2,
        guidance_scale=5.0,
        width=64,
        height=64,
        scheduler=None,
    )


def test_a_hit_is_no_image_and_says_why(checked):
    results = Replica(ModelSpec(model=str(checked["fires"])), batch_size=2).generate(
        [_row("a", 1), _row("b", 2)]
    )
    assert [r.flagged for r in results] == [True, True]
    assert all(r.image is None and r.error == SAFETY_FIX for r in results)


def test_a_quiet_checker_flags_nothing_and_dropping_it_keeps_the_picture(checked):
    kept = Replica(ModelSpec(model=str(checked["quiet"])), batch_size=1).generate([_row("a", 1)])
    spec = ModelSpec(model=str(checked["fires"]), safety_checker=False)
    dropped = Replica(spec, batch_size=1)
    assert dropped.pipes.txt2img.safety_checker is None
    (result,) = dropped.generate([_row("a", 1)])
    assert kept[0].flagged is False and result.flagged is None
    assert np.array_equal(np.asarray(kept[0].image), np.asarray(result.image))  # same weights
    assert np.asarray(result.image).max() > 0


@pytest.mark.parametrize(
    ("keep", "status", "nsfw"), [(True, "filtered", True), (False, "ok", None)]
)
def test_results_rows(checked, tmp_path, keep, status, nsfw):
    pq.write_table(table_from_rows([{"id": "r1", "prompt": "a fox"}]), tmp_path / "m.parquet")
    job = {
        "model": str(checked["fires"]),
        "manifest": "m.parquet",
        "executor": "local",
        "safety_checker": keep,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code = main(
        ["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out"), "--no-progress"]
    )
    assert code == (EXIT_ROWS_FAILED if keep else EXIT_OK)
    (row,) = pq.read_table(glob.glob(str(tmp_path / "out" / "results" / "*.parquet"))).to_pylist()
    assert row["status"] == status and row["nsfw"] is nsfw
    assert (row["image_path"] is None) is keep
