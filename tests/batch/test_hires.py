"""Hires fix and the upscale stage (`batch.hires`): target sizes, A1111's infotext fields, bad
input named when the job is read, both upscale kinds in a batch run, and the second pass against
plain diffusers img2img given the same upscaled input and seed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.hires import HiresFix, Upscalers, UpscaleStage, upscale_latents_to
from sdfleet.batch.infotext import InfotextModel, generation_fields, infotext
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.replica import Replica
from sdfleet.batch.request import RowDefaults, expand_row
from sdfleet.batch.tiny import tiny_model_dir
from sdfleet.batch.tiny_conditioning import tiny_upscaler_file
from sdfleet.jobs.spec import BatchJob, validate_model
from tests.batch import a1111_rules

STEPS = 4
DEFAULTS = RowDefaults(num_inference_steps=STEPS, width=64, height=48)
ROW = {"id": "r0", "prompt": "a red bicycle", "seed": 7}


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


# ------------------------------------------------------------------------------ sizes, fields


@pytest.mark.parametrize(
    ("hires", "size", "expected"),
    [
        (HiresFix(scale=2.0), (64, 48), (128, 96)),
        (HiresFix(scale=1.5), (520, 512), (776, 768)),  # int(780) floored to 8, as A1111
        (HiresFix(scale=None, width=256), (64, 48), (256, 192)),  # height from the aspect
        (HiresFix(scale=None, height=96), (64, 48), (128, 96)),
        (HiresFix(scale=None, width=128, height=128), (64, 48), (128, 128)),  # cover, crop
    ],
)
def test_the_output_size_is_the_asked_scale_or_size(hires, size, expected) -> None:
    assert hires.target_size(*size) == expected


def test_latents_are_upscaled_to_the_target_and_centre_cropped() -> None:
    latents = torch.arange(6 * 8, dtype=torch.float32).reshape(1, 1, 6, 8)
    assert upscale_latents_to(latents, HiresFix(scale=2.0), (64, 48), 8).shape == (1, 1, 12, 16)
    both = HiresFix(upscaler="latent-nearest", scale=None, width=64, height=64)
    cropped = upscale_latents_to(latents, both, (64, 48), 8)  # covers 85x64, cut to 64x64
    assert cropped.shape == (1, 1, 8, 8)
    covering = torch.nn.functional.interpolate(latents, size=(8, 10), mode="nearest")
    assert torch.equal(cropped, covering[:, :, :, 1:9])


def params(mode: str = "txt2img", strength: float | None = None) -> dict:
    return {"prompt": "a cat", "negative_prompt": "", "seed": 3, "num_inference_steps": 20,
            "guidance_scale": 7.0, "width": 512, "height": 512, "scheduler": None,
            "strength": strength, "mode": mode, "model": "builtin:tiny",
            "lora_hashes": "cat: abcdef123456"}  # fmt: skip


def test_infotext_writes_a1111s_hires_fields_in_its_order_and_parses() -> None:
    hires = HiresFix(upscaler="latent", scale=2.0, steps=10, denoise=0.7)
    fields = generation_fields(params(), InfotextModel("builtin:tiny", None, hires=hires))
    text = infotext("a cat", "", fields)
    line = text.splitlines()[-1]
    expected = "Denoising strength: 0.7, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent"
    assert expected in line and line.index("Model: ") < line.index(expected)
    assert line.index(expected) < line.index("Lora hashes")  # the extra networks come after
    parsed = a1111_rules.parse(text)
    assert parsed["Hires upscale"] == "2" and parsed["Hires steps"] == "10"
    assert parsed["Hires upscaler"] == "Latent" and parsed["Denoising strength"] == "0.7"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "512")  # the first pass, as A1111


def test_infotext_hires_resize_model_name_and_no_steps_when_same() -> None:
    hires = HiresFix(upscaler="/models/4x-Ultra.safetensors", scale=None, width=1024, steps=0)
    parsed = a1111_rules.parse(
        infotext("a cat", "", generation_fields(params(), InfotextModel("m", None, hires=hires)))
    )
    assert parsed["Hires resize-1"] == "1024" and parsed["Hires resize-2"] == "0"
    assert parsed["Hires upscaler"] == "4x-Ultra" and "Hires steps" not in parsed
    assert "Hires upscale" not in parsed
    img2img = generation_fields(params("img2img", 0.5), InfotextModel("m", None, hires=hires))
    assert img2img["Denoising strength"] == 0.5 and "Hires upscaler" not in img2img


# ------------------------------------------------------------------------------ bad input


def job(tmp_path: Path, **fields) -> BatchJob:
    (tmp_path / "m.csv").write_text("id,prompt\na,b\n")
    data = {"manifest": "m.csv", "executor": "local", **fields}
    return validate_model(BatchJob, data, str(tmp_path / "job.yaml"))


@pytest.mark.parametrize(
    ("hires", "fragments"),
    [
        ({"scale": 9}, ["hires.scale", "less than or equal to 8", "9"]),
        ({"scale": 0.5}, ["hires.scale", "greater than or equal to 1"]),
        ({"width": 100}, ["hires.width", "multiple of 8", "100"]),
        ({"scale": 2, "width": 128}, ["hires", "give scale, or the size"]),
        ({"denoise": 0}, ["hires.denoise", "greater than 0"]),
        ({"upscaler": "latnet"}, ["hires.upscaler", "'latnet'", "no such file", "latent-nearest"]),
        ({"scale": 8, "steps": 2}, ["defaults.width/height", "16384x16384", "hires.scale"]),
    ],
)
def test_bad_hires_settings_are_refused_when_the_job_is_read(tmp_path, hires, fragments) -> None:
    defaults = {"width": 2048, "height": 2048} if hires.get("scale") == 8 else {}
    with pytest.raises(ConfigError) as caught:
        job(tmp_path, hires=hires, defaults=defaults)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_upscaler_files_are_checked_before_any_model_loads(tmp_path) -> None:
    from safetensors.torch import save_file

    pickled = tmp_path / "x2.pth"
    torch.save({"a": torch.zeros(1)}, pickled)
    with pytest.raises(ConfigError, match=r"hires.upscaler: .*x2.pth.*allow_pickle: true"):
        job(tmp_path, hires={"upscaler": "x2.pth"})
    save_file({"weird.weight": torch.zeros(3, 3)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(
        ConfigError, match=r"upscale.model: .*odd.safetensors.*not a model spandrel"
    ):
        job(tmp_path, upscale={"model": "odd.safetensors"})
    with pytest.raises(ConfigError, match="hires: a refiner does not run with the hires fix"):
        job(tmp_path, model="builtin:tiny-sdxl", refiner={"model": "builtin:tiny-sdxl-refiner"},
            hires={})  # fmt: skip
    good = job(tmp_path, hires={"upscaler": str(tiny_upscaler_file(2)), "scale": 1.5})
    assert good.hires.use().upscaler == str(tiny_upscaler_file(2))


def test_a_relative_upscaler_is_read_from_the_job_folder(tmp_path) -> None:
    import shutil

    from sdfleet.batch.models import model_spec

    shutil.copy(tiny_upscaler_file(2), tmp_path / "x2.safetensors")
    made = job(tmp_path, upscale={"model": "x2.safetensors"}, hires={"steps": 2})
    spec = model_spec(made, tmp_path)
    assert spec.upscale.model == str((tmp_path / "x2.safetensors").resolve())
    assert spec.hires == HiresFix(steps=2) and made.row_defaults().upscale.scale is None


# ------------------------------------------------------------------------------ runs


def plain_pipes():
    """diffusers' own txt2img and img2img pipelines on builtin:tiny's folder."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    txt2img = StableDiffusionPipeline.from_pretrained(tiny_model_dir())
    txt2img.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline(**txt2img.components)
    img2img.set_progress_bar_config(disable=True)
    return txt2img, img2img


def run_one(hires: HiresFix, upscale: UpscaleStage | None = None):
    replica = Replica(ModelSpec(hires=hires, upscale=upscale), batch_size=1)
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "hires": hires, "upscale": upscale})
    (request,) = expand_row(ROW, defaults, 0)
    (result,) = replica.generate([request])
    assert result.error is None, result.error
    return request, result


def common(seed: int = 7) -> dict:
    return {"prompt": [ROW["prompt"]], "negative_prompt": [""], "guidance_scale": 7.5,
            "generator": [torch.Generator().manual_seed(seed)]}  # fmt: skip


@pytest.mark.slow
def test_model_hires_equals_plain_img2img_of_the_upscaled_first_pass() -> None:
    hires = HiresFix(upscaler=str(tiny_upscaler_file(2)), scale=2.0, denoise=0.6, steps=5)
    request, result = run_one(hires)
    assert result.image.size == (128, 96)
    txt2img, img2img = plain_pipes()
    first = txt2img(**common(), num_inference_steps=STEPS, width=64, height=48).images[0]
    upscaled = Upscalers(False, "cpu").upscale_to(hires.upscaler, first, (128, 96), hires.tile)
    want = img2img(**common(), image=[upscaled], strength=0.6, num_inference_steps=5).images[0]
    # byte-equal: the same weights, generator seed, batch shape and float32 CPU kernels
    assert np.array_equal(as_array(result.image), as_array(want))


@pytest.mark.slow
def test_latent_hires_equals_plain_img2img_of_the_upscaled_latents() -> None:
    hires = HiresFix(upscaler="latent", scale=2.0, denoise=0.7)
    _, result = run_one(hires)
    assert result.image.size == (128, 96)
    txt2img, img2img = plain_pipes()
    latents = txt2img(**common(), num_inference_steps=STEPS, width=64, height=48,
                      output_type="latent").images  # fmt: skip
    upscaled = torch.nn.functional.interpolate(latents, size=(12, 16), mode="bilinear")
    want = img2img(**common(), image=upscaled, strength=0.7, num_inference_steps=STEPS).images[0]
    assert np.array_equal(as_array(result.image), as_array(want))
    plain = txt2img(**common(), num_inference_steps=STEPS, width=128, height=96).images[0]
    assert not np.array_equal(as_array(result.image), as_array(plain))  # two passes, not one


@pytest.mark.slow
def test_hires_and_upscale_stage_run_in_batch_and_are_recorded(tmp_path) -> None:
    from sdfleet.batch.actor import GenerateBatch, RunConfig
    from sdfleet.batch.outputs import OutputDir

    hires = HiresFix(upscaler="latent-nearest", scale=1.5, steps=3)
    upscale = UpscaleStage(str(tiny_upscaler_file(2)), scale=2.0, tile=64)
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "hires": hires, "upscale": upscale})
    config = RunConfig(ModelSpec(hires=hires, upscale=upscale), defaults, str(tmp_path), 0, 2)
    rows = [{"id": "a", "prompt": "a kite", "seed": 1}, {"id": "b", "prompt": "a boat", "seed": 2}]
    table = GenerateBatch(config)({k: [r[k] for r in rows] for k in rows[0]})
    out = OutputDir(str(tmp_path))
    for row in table.to_pylist():
        assert row["status"] == "ok", row["error"]
        assert (row["output_width"], row["output_height"]) == (192, 144)  # 64x48 x1.5 x2
        assert (row["width"], row["height"]) == (64, 48)  # the first pass
        assert json.loads(row["hires"])["upscaler"] == "latent-nearest"
        assert json.loads(row["upscale"]) == {"model": upscale.model, "scale": 2.0, "tile": 64}
        data = out.read_bytes(row["image_path"])
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (192, 144)
        fields = a1111_rules.parse(a1111_rules.read_parameters(data))
        assert fields["Hires upscaler"] == "Latent (nearest)" and fields["Hires steps"] == "3"
        assert fields["Hires upscale"] == "1.5" and fields["Denoising strength"] == "0.7"
        assert fields["Postprocess upscale by"] == "2"
        assert fields["Postprocess upscaler"] == "tiny-esrgan-x2"


def test_an_upscaler_applied_until_it_covers_the_target() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8))
    upscalers = Upscalers(False, "cpu")
    path = str(tiny_upscaler_file(2))
    assert upscalers.upscale_to(path, image, (90, 60), tile=0).size == (90, 60)  # x4, then down
    twice = upscalers.upscale_to(path, image, (120, 80), tile=0)
    from sdfleet.batch.upscale import upscale_image

    model = upscalers.get(path)
    direct = upscale_image(model, upscale_image(model, image, 0), 0)
    assert np.array_equal(as_array(twice), as_array(direct))


@pytest.mark.slow
def test_controlnet_units_act_in_both_passes_at_their_sizes() -> None:
    from sdfleet.batch.controlnets import ControlNetUse
    from sdfleet.batch.tiny_conditioning import tiny_controlnet_dir
    from tests.batch.test_controlnet import picture, png

    units = (ControlNetUse(str(tiny_controlnet_dir(0)), scale=1.0),)
    hires = HiresFix(upscaler="latent", scale=2.0, steps=2)
    made = []
    for chosen in (units, ()):
        replica = Replica(ModelSpec(controlnets=chosen, hires=hires), batch_size=1)
        defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": chosen, "hires": hires})
        row = ROW | {"control_image": png(picture(1, (64, 48)))} if chosen else ROW
        (result,) = replica.generate(expand_row(row, defaults, 0))
        assert result.error is None, result.error
        made.append(as_array(result.image))
    assert made[0].shape == made[1].shape == (96, 128, 3)
    assert not np.array_equal(made[0], made[1])  # the layout changed the picture


@pytest.mark.slow
def test_the_marketing_hires_example_runs(tmp_path: Path) -> None:
    """jobs/examples/marketing_hires.yaml (ControlNet layout + hires fix + upscale stage), with
    its files made by its script, in a copy of the repository layout it names them in."""
    import importlib.util
    import shutil

    import pyarrow.parquet as pq

    from sdfleet.jobs.cli import main

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "make_example_hires", repo / "manifests" / "make_example_hires.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_files(tmp_path / "manifests")
    (tmp_path / "jobs" / "examples").mkdir(parents=True)
    job = tmp_path / "jobs" / "examples" / "marketing_hires.yaml"
    shutil.copy(repo / "jobs" / "examples" / "marketing_hires.yaml", job)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    results = pq.read_table(out / "results").to_pylist()
    assert len(results) == 3 and {r["status"] for r in results} == {"ok"}
    for row in results:
        assert (row["output_width"], row["output_height"]) == (256, 256)
        with Image.open(out / row["image_path"]) as image:
            assert image.size == (256, 256)
            fields = a1111_rules.parse(image.text["parameters"])
            recorded = json.loads(image.text["sdfleet"])
        assert fields["Hires upscaler"] == "tiny-esrgan-x2" and "ControlNet 0" in fields
        # the PNG's own record holds the units and stages the results hold
        for column in ("controlnets", "hires", "upscale"):
            assert recorded[column] == json.loads(row[column]), column
        assert recorded["controlnets"][0]["scale"] > 0
        assert (recorded["output_width"], recorded["output_height"]) == (256, 256)
    # the record OUT/job.yaml runs from anywhere: its upscaler files are read absolute
    assert main(["run", str(out / "job.yaml"), "--out", str(out), "--quiet"]) == 0


def test_a_row_whose_hires_target_is_too_large_fails_alone() -> None:
    from sdfleet.batch.replica import Replica as Plain

    hires = HiresFix(scale=8.0)
    replica = Plain.__new__(Plain)  # no model needed: the row fails before any call
    replica.hires, replica.controlnets = hires, ()
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "hires": hires})
    (request,) = expand_row(ROW | {"width": 2048, "height": 64}, defaults, 0)
    ready, failed = replica._prepare_inputs([request])
    assert ready == [] and "16384x512" in failed[id(request)].error
    assert "change hires.scale" in failed[id(request)].error


def test_a_row_whose_hires_target_is_too_large_is_named_when_the_manifest_is_read() -> None:
    from sdfleet.batch.manifest import row_problems

    defaults = RowDefaults(**{**DEFAULTS.__dict__, "hires": HiresFix(scale=8.0)})
    (problem,) = row_problems(ROW | {"width": 2048, "height": 64}, defaults, "m.parquet", 3)
    assert (problem.row_id, problem.column, problem.value) == ("r0", "width", "2048x64")
    assert "16384x512" in problem.fix and "change hires.scale" in problem.fix
    # an img2img row keeps its size (the hires fix is txt2img's), a small row is fine
    assert row_problems(ROW | {"width": 1024, "height": 64}, defaults) == []
    image_row = ROW | {"width": 2048, "height": 64, "init_image": "in.png", "strength": 0.5}
    assert [p.column for p in row_problems(image_row, defaults)] == ["init_image"]


@pytest.mark.slow
@pytest.mark.parametrize("upscaler", ["latent", "model"])
def test_the_hires_fix_runs_on_sdxl(upscaler) -> None:
    path = "latent" if upscaler == "latent" else str(tiny_upscaler_file(2))
    hires = HiresFix(upscaler=path, scale=1.5, steps=2)
    replica = Replica(ModelSpec(model="builtin:tiny-sdxl", hires=hires), batch_size=1)
    defaults = RowDefaults(num_inference_steps=3, width=64, height=64, hires=hires)
    (result,) = replica.generate(expand_row(ROW, defaults, 0))
    assert result.error is None and result.image.size == (96, 96)
