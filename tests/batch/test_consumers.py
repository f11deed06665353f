"""Our outputs read by the tools people read them with: A1111's infotext rules (with piexif for
JPEG/WEBP, see `a1111_rules`) and Hugging Face `datasets`."""

from __future__ import annotations

import hashlib

import piexif
import piexif.helper
import pytest
from PIL import Image

from sdfleet.batch.infotext import (
    A1111_SAMPLERS,
    InfotextModel,
    SamplerLabels,
    exif_user_comment,
    model_name,
    named_sampler_fields,
    quote,
    sampler_fields,
)
from sdfleet.batch.outputs import a1111_parameters, encode_image
from sdfleet.batch.schedulers import SCHEDULERS
from tests.batch import a1111_rules

# What each of our scheduler names is in A1111 once pasted: (sampler, schedule actually used).
# The model's own spacing is A1111's "uniform"; DDIM/PLMS/UniPC/LCM take no schedule there.
IN_A1111 = {
    "euler": ("Euler", "uniform"),
    "euler_a": ("Euler a", "uniform"),
    "heun": ("Heun", "uniform"),
    "ddim": ("DDIM", "uniform"),
    "pndm": ("PLMS", "uniform"),
    "dpmpp_2m": ("DPM++ 2M", "uniform"),  # A1111's own default for DPM++ 2M is Karras
    "dpmpp_2m_karras": ("DPM++ 2M", "karras"),
    "dpmpp_sde_2m": ("DPM++ 2M SDE", "uniform"),  # A1111's own default: Exponential
    "unipc": ("UniPC", "uniform"),
    "lcm": ("LCM", "uniform"),
}
NOT_IN_A1111 = {"ddpm": "DDPM", "deis": "DEIS", "tcd": "TCD"}

PARAMS = {
    "prompt": "a red cube, studio light: soft",
    "negative_prompt": "blurry, low quality",
    "seed": 1234,
    "num_inference_steps": 12,
    "guidance_scale": 6.5,
    "width": 64,
    "height": 48,
    "scheduler": None,
    "strength": None,
    "mode": "txt2img",
    "init_image": None,
    "model": "/models/sd/v1-5-pruned-emaonly.safetensors",
}


def test_every_scheduler_name_is_covered_by_the_tables():
    assert set(IN_A1111) | set(NOT_IN_A1111) == set(SCHEDULERS)


@pytest.mark.parametrize("name", sorted(IN_A1111))
def test_pasted_sampler_is_the_one_that_ran(name):
    fields = a1111_rules.parse(a1111_parameters(PARAMS | {"scheduler": name}))
    assert a1111_rules.pasted_sampler(fields) == IN_A1111[name]


@pytest.mark.parametrize("name", sorted(NOT_IN_A1111))
def test_schedulers_a1111_lacks_keep_their_own_name(name):
    fields = named_sampler_fields(name)
    assert fields == {"Sampler": NOT_IN_A1111[name]}
    assert fields["Sampler"] not in a1111_rules.SAMPLERS  # A1111 falls back to its default


def test_labels_follow_the_scheduler_that_runs_on_the_model():
    """A model whose own scheduler uses Karras sigmas passes them on to schedulers built from
    its config (diffusers `from_config`), and the label says so."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    karras = SamplerLabels(DPMSolverMultistepScheduler(use_karras_sigmas=True))
    assert karras.fields(None) == {"Sampler": "DPM++ 2M", "Schedule type": "Karras"}
    assert karras.fields("euler") == {"Sampler": "Euler", "Schedule type": "Karras"}
    assert karras.fields("ddim") == {"Sampler": "DDIM"}  # DDIM has no sigma flags
    sd15 = SamplerLabels(PNDMScheduler(skip_prk_steps=True))
    assert sd15.fields(None) == {"Sampler": "PLMS"}
    assert sd15.fields("dpmpp_2m") == {"Sampler": "DPM++ 2M", "Schedule type": "Uniform"}
    assert SamplerLabels(EulerDiscreteScheduler()).fields("euler_a") == {"Sampler": "Euler a"}


def test_every_a1111_label_we_write_is_an_a1111_sampler():
    assert set(A1111_SAMPLERS.values()) <= set(a1111_rules.SAMPLERS)
    config = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    assert sampler_fields("DPMSolverMultistepScheduler", config)["Sampler"] == "DPM++ 3M SDE"


@pytest.mark.parametrize(
    "value,written",
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("key: v", '"key: v"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", now', '"say \\"hi\\", now"'),
        ("café, ☕", '"café, ☕"'),
        (7.5, "7.5"),
    ],
)
def test_values_are_quoted_as_a1111_quotes_them(value, written):
    assert quote(value) == written


@pytest.mark.parametrize(
    "model,name",
    [
        ("/models/sd/v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly"),
        ("~/ckpt/dreamshaper_8.ckpt", "dreamshaper_8"),
        ("builtin:tiny", "builtin:tiny"),
        ("stabilityai/sdxl-turbo", "stabilityai/sdxl-turbo"),
    ],
)
def test_model_name_drops_the_folder(model, name):
    assert model_name(model) == name


def test_model_name_of_a_diffusers_folder_is_the_folder_name(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert model_name(str(folder) + "/") == "my-model"


def test_exif_block_is_what_piexif_and_so_a1111_read():
    text = "café ☕, 東京\nNegative prompt: x\nSteps: 2, Sampler: Euler, Seed: 1"
    block = exif_user_comment(text)
    raw = piexif.load(block)["Exif"][piexif.ExifIFD.UserComment]
    assert isinstance(raw, bytes)  # type UNDEFINED; type BYTE would come back as a tuple
    assert raw == piexif.helper.UserComment.dump(text, encoding="unicode")
    assert piexif.helper.UserComment.load(raw) == text
    ours = piexif.load(block)
    theirs = piexif.load(piexif.dump({"Exif": {piexif.ExifIFD.UserComment: raw}}))
    assert ours["Exif"] == theirs["Exif"] and ours["0th"].keys() == theirs["0th"].keys()


def expected_fields(params: dict, model: InfotextModel | None = None) -> dict[str, str]:
    """What A1111's parser must give back for `params`, written out independently."""
    fields = {
        "Prompt": params["prompt"],
        "Negative prompt": params["negative_prompt"],
        "Steps": str(params["num_inference_steps"]),
        "CFG scale": str(params["guidance_scale"]),
        "Seed": str(params["seed"]),
        "Size-1": str(params["width"]),
        "Size-2": str(params["height"]),
        "Model": model.name if model else "v1-5-pruned-emaonly",
    }
    if model and model.hash:
        fields["Model hash"] = model.hash
    if params["strength"] is not None:
        fields["Denoising strength"] = str(params["strength"])
    return fields


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_round_trip_field_by_field(fmt, name):
    params = PARAMS | {"scheduler": name, "strength": 0.6, "mode": "img2img"}
    params["negative_prompt"] = "blurry,\nsecond line: still negative"
    data = encode_image(Image.new("RGB", (8, 8), "red"), fmt, params)
    fields = a1111_rules.parse(a1111_rules.read_parameters(data))
    sampler_keys = {"Sampler", "Schedule type"}
    assert {k: v for k, v in fields.items() if k not in sampler_keys} == expected_fields(params)
    assert {k: fields[k] for k in sampler_keys & fields.keys()} == named_sampler_fields(name)


def test_no_scheduler_and_no_model_writes_no_sampler():
    """Without a loaded model the model's own scheduler is unknown: no Sampler rather than a
    made-up one (A1111 keeps its current sampler); the actor always knows it."""
    fields = a1111_rules.parse(a1111_parameters(PARAMS))
    assert "Sampler" not in fields and fields["Steps"] == "12"
    assert "default" not in a1111_parameters(PARAMS)


def test_model_hash_is_a1111s_short_hash(tmp_path):
    from sdfleet.batch.infotext import model_hash
    from sdfleet.batch.models import ModelSpec

    checkpoint = tmp_path / "m.safetensors"
    header = b'{"__metadata__":{}}'
    checkpoint.write_bytes(len(header).to_bytes(8, "little") + header)
    expected = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]
    assert model_hash(ModelSpec(model=str(checkpoint))) == expected
    assert model_hash(ModelSpec(model="builtin:null")) is None


def test_model_hash_of_a_diffusers_folder_is_its_unet_weights(tmp_path):
    from sdfleet.batch.infotext import model_hash
    from sdfleet.batch.models import ModelSpec

    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights")
    assert model_hash(ModelSpec(model=str(tmp_path))) == hashlib.sha256(b"weights").hexdigest()[:10]


def test_jpeg_exif_fits_a_long_prompt():
    params = PARAMS | {"prompt": "a long prompt, " * 500}
    data = encode_image(Image.new("RGB", (8, 8)), "jpg", params)
    assert (
        a1111_rules.parse(a1111_rules.read_parameters(data))["Prompt"] == params["prompt"].strip()
    )


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_actor_outputs_name_the_model_its_hash_and_its_own_scheduler(tiny_dir, tmp_path, fmt):
    from sdfleet.batch.actor import GenerateBatch, RunConfig
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.request import RowDefaults
    from sdfleet.batch.sources import table_from_rows

    defaults = RowDefaults(width=64, height=64, num_inference_steps=2, guidance_scale=4.0)
    config = RunConfig(
        model=ModelSpec(), defaults=defaults, out_uri=str(tmp_path), image_format=fmt
    )
    rows = [
        {"id": "own", "prompt": "a cat, sitting", "negative_prompt": "dog: no", "seed": 9},
        {"id": "named", "prompt": "a cat", "seed": 9, "scheduler": "dpmpp_2m_karras"},
    ]
    table = GenerateBatch(config)(table_from_rows(rows))
    unet = tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"
    unet_hash = hashlib.sha256(unet.read_bytes()).hexdigest()[:10]
    own, named = (
        a1111_rules.parse(a1111_rules.read_parameters((tmp_path / path).read_bytes()))
        for path in table.column("image_path").to_pylist()
    )
    assert own["Prompt"] == "a cat, sitting" and own["Negative prompt"] == "dog: no"
    assert own["Model"] == "builtin:tiny" and own["Model hash"] == unet_hash
    assert own["Steps"] == "2" and own["Seed"] == "9" and own["Size-1"] == "64"
    assert a1111_rules.pasted_sampler(own) == ("Euler", "uniform")  # tiny's own scheduler
    assert a1111_rules.pasted_sampler(named) == ("DPM++ 2M", "karras")


# --- Hugging Face datasets -------------------------------------------------------------------


def write_job(folder, manifest: str, **fields):
    import yaml

    job = {
        "manifest": manifest,
        "executor": "local",
        "seed": 3,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64, "strength": 0.5},
        "output": {"embed_image_bytes": True},
    } | fields
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_job(job, out, *extra: str) -> int:
    from sdfleet.jobs.cli import main

    return main(["run", str(job), "--out", str(out), "--no-progress", *extra])


def txt2img_run(tmp_path, **fields):
    """A finished txt2img run into tmp_path/first (two rows, a carried label)."""
    import pyarrow.parquet as pq

    from sdfleet.batch.sources import table_from_rows

    rows = [{"id": "cat", "prompt": "a cat", "label": 1}, {"id": "dog", "prompt": "a dog"}]
    pq.write_table(table_from_rows(rows), tmp_path / "m.parquet")
    out = tmp_path / "first"
    assert run_job(write_job(tmp_path, "m.parquet", **fields), out) == 0
    return out


def load_results(out, cache):
    from datasets import load_dataset

    files = str(out / "results" / "*.parquet")
    return load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache))


def test_results_load_in_datasets_as_images(tiny_dir, tmp_path):
    from datasets import Image as ImageFeature
    from datasets import Value

    out = txt2img_run(tmp_path)
    dataset = load_results(out, tmp_path / "hf-cache")
    assert isinstance(dataset.features["image"], ImageFeature)
    assert dataset.features["seed"] == Value("int64")
    assert dataset.features["label"] == Value("int64")  # carried, its own type
    first = dataset[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (64, 64)
    on_disk = Image.open(out / first["image_path"])
    assert first["image"].convert("RGB").tobytes() == on_disk.convert("RGB").tobytes()


def test_results_without_image_column_have_no_datasets_metadata():
    from sdfleet.batch.outputs import results_table

    assert results_table({"id": ["a"], "prompt": ["p"]}).schema.metadata is None
    table = results_table({"id": ["a"], "image": [None]})
    assert b"huggingface" in table.schema.metadata


def test_a_datasets_image_struct_is_an_init_image(tmp_path):
    from sdfleet.batch.manifest import row_problems
    from sdfleet.batch.request import RowDefaults, expand_row
    from sdfleet.jobs.examples import shape_image_png

    png = shape_image_png(0)
    (tmp_path / "src.png").write_bytes(png)
    defaults = RowDefaults(num_inference_steps=4, strength=0.5)
    by_bytes = {"id": "b", "prompt": "p", "init_image": {"bytes": png, "path": "x.png"}}
    by_path = {"id": "p", "prompt": "p", "init_image": {"bytes": None, "path": "src.png"}}
    neither = {"id": "n", "prompt": "p", "init_image": {"bytes": None, "path": None}}
    assert row_problems(by_bytes, defaults, base_dir=tmp_path) == []
    assert row_problems(by_path, defaults, base_dir=tmp_path) == []
    (problem,) = row_problems(neither, defaults, base_dir=tmp_path)
    assert problem.column == "init_image" and "status is 'ok'" in problem.fix
    assert expand_row(by_bytes, defaults, 0)[0].init_image == png
    request = expand_row(by_path, defaults, 0, tmp_path)[0]
    assert request.init_image == str(tmp_path / "src.png") and request.mode == "img2img"


@pytest.mark.slow
@pytest.mark.parametrize("embed", [True, False])
def test_img2img_job_from_an_earlier_runs_results(tiny_dir, tmp_path, embed):
    """The results folder of one run is the manifest of the next: each output becomes an
    init image; prompts and carried columns come along, the new job's settings apply."""
    import pyarrow.parquet as pq

    first = txt2img_run(tmp_path, output={"embed_image_bytes": embed})
    second_dir = tmp_path / "second-job"
    second_dir.mkdir()
    job = write_job(second_dir, str(first / "results" / "*.parquet"), seed=8)
    assert run_job(job, tmp_path / "second") == 0
    rows = sorted(pq.read_table(tmp_path / "second" / "results").to_pylist(), key=lambda r: r["id"])
    assert [(r["id"], r["mode"], r["status"]) for r in rows] == [
        ("cat", "img2img", "ok"),
        ("dog", "img2img", "ok"),
    ]
    assert [r["label"] for r in rows] == [1, None] and rows[0]["prompt"] == "a cat"
    assert rows[0]["strength"] == 0.5  # the new job's setting
    if not embed:  # the init image is the earlier output file itself
        assert rows[0]["init_image"] == str(first / "results" / ".." / "images" / "cat.png")


@pytest.mark.slow
def test_an_earlier_runs_failed_rows_are_refused_with_the_fix(tiny_dir, tmp_path, capsys):
    import pyarrow.parquet as pq

    first = txt2img_run(tmp_path)
    part = next((first / "results").glob("*.parquet"))
    table = pq.read_table(part)
    failed = table.to_pylist()
    failed[1] |= {"status": "error", "error": "boom", "image": None, "image_path": None}
    pq.write_table(table.from_pylist(failed, schema=table.schema), part)
    job = write_job(tmp_path, str(first / "results"))
    from sdfleet.jobs.cli import main

    assert main(["validate", str(job)]) == 2
    assert "dog" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_ray_results_load_in_datasets_as_images(tiny_dir, tmp_path):
    """The Ray executor writes results through Ray Data's write_parquet: every part keeps the
    metadata `datasets` reads."""
    import pyarrow.parquet as pq
    from datasets import Image as ImageFeature

    out = txt2img_run(tmp_path, executor="ray", ray={"rows_per_block": 1})
    parts = sorted((out / "results").glob("*.parquet"))
    assert parts and all(b"huggingface" in pq.read_schema(p).metadata for p in parts)
    dataset = load_results(out, tmp_path / "hf-cache")
    assert isinstance(dataset.features["image"], ImageFeature)
    assert sorted(row["id"] for row in dataset) == ["cat", "dog"]
    assert all(isinstance(row["image"], Image.Image) for row in dataset)


def test_a_results_row_leaves_its_runs_own_columns_behind():
    """The earlier job's ControlNet units and input hashes describe that run: the next job
    gets the row's id, prompts, labels and image, not them."""
    from sdfleet.batch.outputs import result_types
    from sdfleet.batch.results_rows import as_manifest_row

    row = dict.fromkeys(result_types()) | {
        "id": "cat",
        "prompt": "a cat",
        "negative_prompt": "",
        "status": "ok",
        "image_path": "images/cat.png",
        "label": 1,
        "controlnets": '[{"model": "canny"}]',
        "inputs_sha256": "init_image=aa",
    }
    made = as_manifest_row(row)
    assert set(made) == {"id", "prompt", "negative_prompt", "label", "init_image"}
    assert made["init_image"] == {"bytes": None, "path": "../images/cat.png"}
