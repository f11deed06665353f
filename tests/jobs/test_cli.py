"""`sdfleet run/validate` end to end on builtin:tiny with the local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import main
from sdfleet.jobs.examples import shape_image_png
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_CRASH, EXIT_OK, EXIT_ROWS_FAILED, exit_status

ROWS = [
    {"id": "a", "prompt": "a cat", "label": "cat"},
    {"id": "b", "prompt": "a dog", "num_images": 2, "label": "dog"},
    {"id": "c", "prompt": "a bird", "init_image": shape_image_png(1), "label": "bird"},
]


def write_job(tmp_path: Path, rows: list[dict], **fields) -> Path:
    pq.write_table(table_from_rows(rows), tmp_path / "m.parquet")
    job = {
        "manifest": "m.parquet",
        "executor": "local",
        "seed": 3,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
    } | fields
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run(job: Path, out: Path, *extra: str) -> int:
    return main(["run", str(job), "--out", str(out), "--no-progress", *extra])


def test_run_writes_job_images_results_summary(tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert run(write_job(tmp_path, ROWS), out) == EXIT_OK
    record = yaml.safe_load((out / "job.yaml").read_text())
    assert record["job"]["seed"] == 3 and record["versions"]["diffusers"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["error"], summary["expected_outputs"]) == (4, 0, 4)
    results = pq.read_table(out / "results").to_pylist()
    assert sorted(r["output_id"] for r in results) == ["a", "b_0", "b_1", "c"]
    assert {r["label"] for r in results} == {"cat", "dog", "bird"}
    assert all((out / r["image_path"]).is_file() for r in results)


def test_some_rows_failed_has_its_own_exit_status(tiny_dir, tmp_path, capsys):
    rows = ROWS + [{"id": "poison", "prompt": "x", "init_image": b"corrupt bytes"}]
    out = tmp_path / "out"
    assert run(write_job(tmp_path, rows), out) == EXIT_ROWS_FAILED
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"] == 1 and summary["ok"] == 4
    assert summary["errors"][0]["output_id"] == "poison"
    assert "error poison: init_image:" in capsys.readouterr().out
    assert run(write_job(tmp_path, rows), out, "--allow-row-errors") == EXIT_OK  # resumes too


def test_bad_manifest_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from sdfleet.batch import models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for an invalid job")

    monkeypatch.setattr(models, "load_pipelines", no_loading)
    rows = [{"id": "ok", "prompt": "p"}, {"id": "../evil", "prompt": "p", "width": 65}]
    job = write_job(tmp_path, rows)
    assert main(["validate", str(job)]) == EXIT_CONFIG
    assert run(job, tmp_path / "out") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "row '../evil' (#1), column 'id'" in err and "column 'width': 65" in err
    assert not (tmp_path / "out").exists()


def test_bad_job_field_suggests_the_name(tmp_path, capsys):
    job = write_job(tmp_path, ROWS, batch_sise=4)
    assert main(["validate", str(job)]) == EXIT_CONFIG
    assert "batch_sise: unknown field (did you mean 'batch_size'?)" in capsys.readouterr().err


def test_a_builtin_shapes_job_gets_the_size_and_guidance_it_was_made_for_where_unset():
    from sdfleet.jobs.spec import BatchJob

    made = BatchJob.model_validate({"model": "builtin:shapes", "manifest": "m.parquet"})
    row = made.row_defaults()
    assert (row.guidance_scale, row.width, row.height, row.num_inference_steps) == (3, 64, 64, 20)
    own = {"width": 128, "guidance_scale": 7.5}  # the job's own values win
    job = BatchJob.model_validate({"model": "builtin:shapes", "manifest": "m", "defaults": own})
    assert (job.defaults.guidance_scale, job.defaults.width, job.defaults.height) == (7.5, 128, 64)
    plain = BatchJob.model_validate({"model": "builtin:tiny", "manifest": "m.parquet"}).defaults
    assert (plain.guidance_scale, plain.width) == (7.5, 512)


def test_validate_counts_outputs(tmp_path, capsys):
    assert main(["validate", str(write_job(tmp_path, ROWS))]) == EXIT_OK
    assert "4 outputs" in capsys.readouterr().out


def test_local_rerun_skips_committed_rows(tiny_dir, tmp_path):
    job, out = write_job(tmp_path, ROWS), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    first = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    assert run(job, out) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_this_run"] == 0 and summary["skipped_already_done_rows"] == 3
    assert summary["outputs"] == 4 == summary["unique_outputs"]
    assert first == {p.name: p.read_bytes() for p in (out / "images").iterdir()}


@pytest.mark.parametrize(
    "example", ["marketing.yaml", "augmentation.yaml", "augmentation_boxes.yaml"]
)
def test_example_jobs_validate(example, capsys):
    job = Path(__file__).resolve().parents[2] / "jobs" / "examples" / example
    assert main(["validate", str(job)]) == EXIT_OK


ANIM_EXAMPLES = sorted(
    (Path(__file__).resolve().parents[2] / "jobs" / "examples").glob("anim_*.yaml")
)
PLAN_FIELDS = {
    "frame",
    "zoom",
    "angle",
    "translation_x",
    "translation_y",
    "strength",
    "denoise",
    "noise",
    "contrast",
    "cfg_scale",
    "steps",
    "amount",
    "kernel",
    "sigma",
    "threshold",
    "seed",
    "prompt",
    "negative_prompt",
    "blend_prompt",
    "blend_weight",
    "diffused",
}


@pytest.mark.parametrize("example", ANIM_EXAMPLES, ids=lambda p: p.stem)
def test_plan_json_prints_one_record_per_frame(example, capsys):
    assert main(["plan", str(example), "--json"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    max_frames = yaml.safe_load(example.read_text()).get("max_frames", 120)
    assert len(records) == max_frames
    assert [r["frame"] for r in records] == list(range(max_frames))
    assert PLAN_FIELDS <= set(records[0])
    assert all(abs(r["denoise"] - (1 - r["strength"])) < 1e-9 for r in records)


def test_plan_table_is_readable(capsys):
    assert main(["plan", str(ANIM_EXAMPLES[0])]) == EXIT_OK
    header = capsys.readouterr().out.splitlines()[0]
    assert "frame" in header and "zoom" in header


def test_plan_refuses_a_batch_job(tmp_path, capsys):
    assert main(["plan", str(write_job(tmp_path, ROWS))]) == EXIT_CONFIG
    assert "`plan` is for animation jobs" in capsys.readouterr().err


def test_model_path_is_relative_to_the_job_file(tiny_dir, tmp_path, monkeypatch, capsys):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "models" / "tiny")
    job = write_job(tmp_path, ROWS[:1], model="models/tiny", executor="local")
    monkeypatch.chdir(tmp_path.parent)  # not the job's folder
    assert main(["validate", str(job)]) == EXIT_OK
    assert run(job, tmp_path / "out") == EXIT_OK
    record = yaml.safe_load((tmp_path / "out" / "job.yaml").read_text())
    assert record["job"]["model"] == "models/tiny"  # the job as written


def test_missing_model_names_the_job_file(tmp_path, capsys):
    job = write_job(tmp_path, ROWS, model="nowhere/model.safetensors")
    assert main(["validate", str(job)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "job.yaml: model: checkpoint file 'nowhere/model.safetensors' does not exist" in err


def test_results_keep_carried_column_types_across_parts(tiny_dir, tmp_path):
    """A chunk whose carried column is all null must not write a null-typed part."""
    rows = [{"id": f"r{i:02d}", "prompt": "p", "label": None if i < 16 else "x"} for i in range(18)]
    job, out = write_job(tmp_path, rows, batch_size=1), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    parts = sorted((out / "results").glob("*.parquet"))
    assert len(parts) == 2
    assert {str(pq.read_schema(p).field("label").type) for p in parts} == {"string"}
    assert pq.read_table(out / "results").num_rows == 18  # plain pyarrow reads the folder


def test_job_level_checks_name_the_field(tmp_path, capsys):
    job = write_job(tmp_path, ROWS, device="gpu", defaults={"prompt_template": "{prompt.x}"})
    assert main(["validate", str(job)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "device: String should match pattern" in err and "'gpu'" in err
    assert "defaults.prompt_template: Value error, field {prompt.x}" in err


def test_rerun_with_changed_settings_or_executor_is_refused(tiny_dir, tmp_path, capsys):
    job, out = write_job(tmp_path, ROWS[:1]), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    changed = write_job(tmp_path, ROWS[:1], defaults={"num_inference_steps": 3})
    assert run(changed, out) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "holds results of a different job" in err and "num_inference_steps" in err
    assert run(write_job(tmp_path, ROWS[:1]), out, "--executor", "ray") == EXIT_CONFIG
    assert "resume it with --executor local" in capsys.readouterr().err


def test_relative_out_is_made_absolute(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path, ROWS[:1])
    assert main(["run", str(job), "--out", "rel/out", "--no-progress"]) == EXIT_OK
    assert (tmp_path / "rel" / "out" / "images" / "a.png").is_file()


def test_a_deleted_part_is_made_again_without_writing_over_another(tmp_path):
    rows = [{"id": f"r{i:02d}", "prompt": "p"} for i in range(40)]
    job, out = write_job(tmp_path, rows, model="builtin:null", batch_size=4), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    parts = sorted((out / "results").glob("local-*.parquet"))
    assert len(parts) == 3  # 16 + 16 + 8 rows
    kept = {p.name: p.read_bytes() for p in parts[1:]}
    parts[0].unlink()  # lost: its 16 rows are made again, in a new part
    assert run(job, out) == EXIT_OK
    assert {p.name: p.read_bytes() for p in parts[1:]} == kept
    assert (out / "results" / "local-000003.parquet").is_file()
    assert sorted(pq.read_table(out / "results").column("id").to_pylist()) == [
        r["id"] for r in rows
    ]


def test_missing_outputs_are_not_row_errors():
    summary = {"expected_outputs": 4, "unique_outputs": 4, "error": 1}
    assert exit_status(summary) == EXIT_ROWS_FAILED  # --allow-row-errors may accept it
    assert exit_status(summary | {"unique_outputs": 3, "error": 0}) == EXIT_CRASH  # run again
    assert exit_status(summary | {"unique_outputs": 3}) == EXIT_CRASH
    assert exit_status(summary | {"error": 0}) == EXIT_OK


def test_a_bad_out_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from sdfleet.batch import models

    monkeypatch.setattr(models, "load_pipelines", lambda spec: pytest.fail("loaded"))
    job = write_job(tmp_path, ROWS[:1])
    assert run(job, "bogus://x") == EXIT_CONFIG
    assert "--out 'bogus://x': " in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert run(job, tmp_path / "a-file") == EXIT_CONFIG
    assert "a-file' is a file; give a folder" in capsys.readouterr().err


def test_job_record_names_the_job_file(tmp_path):
    job, out = write_job(tmp_path, ROWS[:1], model="builtin:null"), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    assert yaml.safe_load((out / "job.yaml").read_text())["source"] == str(job)


def test_out_inside_the_manifest_folder_is_refused_before_reading_it(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    job = write_job(tmp_path / "data", ROWS[:1], model="builtin:null")
    job.rename(tmp_path / "job.yaml")
    (tmp_path / "job.yaml").write_text(
        (tmp_path / "job.yaml").read_text().replace("manifest: m.parquet", "manifest: data")
    )
    assert run(tmp_path / "job.yaml", tmp_path / "data" / "out") == EXIT_CONFIG
    assert "is inside the manifest folder" in capsys.readouterr().err
    assert run(tmp_path / "job.yaml", tmp_path / "out") == EXIT_OK


def test_job_file_that_is_not_utf8_names_the_byte(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_bytes(b"manifest: m.parquet\nseed: 1 # caf\xe9\n")
    assert main(["validate", str(job)]) == EXIT_CONFIG
    assert "job.yaml: not UTF-8 text (byte 0xe9 at offset 33); save the job file as UTF-8" in (
        capsys.readouterr().err
    )


def test_ray_timeouts_must_be_finite(tmp_path, capsys):
    job = write_job(tmp_path, ROWS[:1], ray={"min_replicas_timeout_s": float("inf")})
    assert main(["validate", str(job)]) == EXIT_CONFIG
    assert "ray.min_replicas_timeout_s" in capsys.readouterr().err


def test_replicas_that_do_not_start_become_a_message():
    from ray.exceptions import GetTimeoutError

    from sdfleet.batch.errors import PipelineError
    from sdfleet.batch.outputs import OutputDir
    from sdfleet.batch.ray_runner import execute
    from sdfleet.jobs.spec import RayOptions

    class NeverStarts:
        def write_parquet(self, *args, **kwargs):
            raise GetTimeoutError(
                "Timed out while starting actors. This may mean that the cluster does not "
                "have enough resources for the requested actor pool."
            )

    options = RayOptions(min_replicas_timeout_s=0.5)
    with pytest.raises(PipelineError, match=r"did not start within 0.5 s \(ray.min_replicas"):
        execute(NeverStarts(), OutputDir("/tmp/unused"), options)


def test_cuda_device_without_a_gpu_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    job = write_job(tmp_path, ROWS[:1], device="cuda:1")
    assert run(job, tmp_path / "out") == EXIT_CONFIG
    assert "device: 'cuda:1', but this machine has 0 usable CUDA GPU(s)" in capsys.readouterr().err


def test_a_first_run_that_committed_nothing_binds_no_settings(tmp_path, capsys):
    job, out = write_job(tmp_path, ROWS[:1], model="nowhere/pipe"), tmp_path / "out"
    (tmp_path / "nowhere" / "pipe").mkdir(parents=True)
    (tmp_path / "nowhere" / "pipe" / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline"}'
    )
    assert run(job, out) != EXIT_OK  # the model cannot load: nothing committed
    assert (out / "job.yaml").is_file()
    fixed = write_job(tmp_path, ROWS[:1], model="builtin:null", seed=7)
    assert run(fixed, out) == EXIT_OK  # not "holds results of a different job"
    changed = write_job(tmp_path, ROWS[:1], model="builtin:null", seed=8)
    assert run(changed, out) == EXIT_CONFIG  # now rows are committed: settings are bound
    assert "holds results of a different job" in capsys.readouterr().err


def test_rerun_with_another_checkpoint_path_is_refused(tmp_path, capsys):
    job, out = write_job(tmp_path, ROWS[:1], model="builtin:null"), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    moved = write_job(
        tmp_path,
        ROWS[:1],
        model="builtin:null",
        ray={"checkpoint_path": str(tmp_path / "elsewhere")},
    )
    assert run(moved, out) == EXIT_CONFIG
    assert "ray.checkpoint_path: None -> " in capsys.readouterr().err


def test_manifest_problems_across_files(tmp_path, capsys):
    (tmp_path / "parts").mkdir()
    pq.write_table(
        table_from_rows([{"id": "a", "prompt": "p", "sku": 12}]), tmp_path / "parts" / "1.parquet"
    )
    pq.write_table(
        table_from_rows([{"id": "b", "prompt": "p", "sku": "A-12"}]),
        tmp_path / "parts" / "2.parquet",
    )
    job = write_job(tmp_path, ROWS[:1], manifest="parts")
    assert main(["validate", str(job)]) == EXIT_CONFIG
    assert "2.parquet: column 'sku' is string, but" in capsys.readouterr().err
    pq.write_table(
        table_from_rows([{"id": "x", "prompt": "p"}]).slice(0, 0), tmp_path / "empty.parquet"
    )
    assert main(["validate", str(write_job(tmp_path, ROWS[:1], manifest="empty.parquet"))]) == 2
    assert "hold no rows; nothing to generate" in capsys.readouterr().err
