"""ControlNet end to end: sdfleet's rows against plain diffusers ControlNet pipelines (one and two
ControlNets, txt2img and img2img), control images from a column or a preprocessor, and bad input
named at validation."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sdfleet.batch.controlnets import ControlNetUse
from sdfleet.batch.manifest import row_problems
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.replica import Replica
from sdfleet.batch.request import RowDefaults, expand_row
from sdfleet.batch.tiny import tiny_model_dir
from sdfleet.batch.tiny_conditioning import tiny_controlnet_dir

STEPS = 4
DEFAULTS = RowDefaults(num_inference_steps=STEPS, width=64, height=64, strength=0.75)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Blocks of colour (edges for canny) over mild noise."""
    rng = np.random.default_rng(seed)
    array = rng.integers(60, 90, (size[1], size[0], 3), dtype=np.uint8)
    cv2.rectangle(array, (8 + seed, 10), (40, 50 - seed), (230, 200, 40), -1)
    cv2.circle(array, (46, 20), 9, (30, 60, 220), -1)
    return Image.fromarray(array)


def units(count: int, preprocessor: str = "none") -> tuple[ControlNetUse, ...]:
    made = [
        ControlNetUse(str(tiny_controlnet_dir(0)), scale=0.8, start=0.0, end=1.0,
                      preprocessor=preprocessor, options=(("high", 150.0), ("low", 50.0))
                      if preprocessor == "canny" else ()),
        ControlNetUse(str(tiny_controlnet_dir(1)), scale=1.3, start=0.25, end=0.75,
                      image_column="control_depth"),
    ]  # fmt: skip
    return tuple(made[:count])


@pytest.fixture(scope="module", params=[1, 2], ids=["one", "two"])
def controlled(request) -> tuple[Replica, tuple[ControlNetUse, ...]]:
    chosen = units(request.param)
    return Replica(ModelSpec(controlnets=chosen), batch_size=2), chosen


def plain_pipeline(kind: str, count: int):
    """diffusers' own ControlNet pipeline on builtin:tiny's folder, loaded by diffusers alone."""
    import diffusers

    nets = [diffusers.ControlNetModel.from_pretrained(tiny_controlnet_dir(k)) for k in range(count)]
    cls = getattr(diffusers, kind)
    pipe = cls.from_pretrained(tiny_model_dir(), controlnet=nets[0] if count == 1 else nets)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def control_kwargs(chosen, images_per_unit):
    one = len(chosen) == 1
    return {
        "controlnet_conditioning_scale": chosen[0].scale if one else [u.scale for u in chosen],
        "control_guidance_start": chosen[0].start if one else [u.start for u in chosen],
        "control_guidance_end": chosen[0].end if one else [u.end for u in chosen],
    }, (images_per_unit[0] if one else images_per_unit)


def rows_for(chosen, with_init: bool) -> list[dict]:
    rows = []
    for k in range(2):
        row = {"id": f"r{k}", "prompt": f"a poster {k}", "seed": 40 + k,
               "control_image": png(picture(k)), "control_depth": png(picture(5 + k))}  # fmt: skip
        if with_init:
            row["init_image"] = png(picture(10 + k))
        rows.append(row)
    return rows


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_rows_equal_plain_diffusers_controlnet_pipelines(controlled, mode) -> None:
    replica, chosen = controlled
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": chosen})
    rows = rows_for(chosen, with_init=mode == "img2img")
    assert all(row_problems(row, defaults) == [] for row in rows)
    requests = [r for row in rows for r in expand_row(row, defaults, 0)]
    results = replica.generate(requests)
    assert all(r.error is None for r in results), [r.error for r in results]
    columns = ["control_image", "control_depth"][: len(chosen)]
    per_unit = [[picture(k if c == "control_image" else 5 + k) for k in range(2)] for c in columns]
    extra, control = control_kwargs(chosen, per_unit)
    common = {"prompt": [r["prompt"] for r in rows], "negative_prompt": ["", ""],
              "num_inference_steps": STEPS, "guidance_scale": 7.5, **extra,
              "generator": [torch.Generator().manual_seed(r["seed"]) for r in rows]}  # fmt: skip
    kind = "StableDiffusionControlNetPipeline" if mode == "txt2img" else (
        "StableDiffusionControlNetImg2ImgPipeline")  # fmt: skip
    pipe = plain_pipeline(kind, len(chosen))
    if len(chosen) > 1:  # per ControlNet, the rows' images as one (B, 3, H, W) batch
        lists, control = control, [as_batch(pipe, images) for images in per_unit]
    if mode == "txt2img":
        expected = pipe(image=control, width=64, height=64, **common).images
    else:
        inits = [picture(10 + k) for k in range(2)]
        expected = pipe(image=inits, control_image=control, strength=0.75, **common).images
    for result, want in zip(results, expected):
        # byte-equal: the same weights, generators, batch shape and float32 CPU kernels
        assert np.array_equal(as_array(result.image), as_array(want)), result.request.row_id
    if len(chosen) > 1 and mode == "txt2img":
        # diffusers' txt2img also takes lists of PIL lists; their tensor has another memory
        # layout, so CPU convolutions round differently: within 1/255 of the batched form
        common["generator"] = [torch.Generator().manual_seed(r["seed"]) for r in rows]
        listed = pipe(image=lists, width=64, height=64, **common).images
        for result, want in zip(results, listed):
            assert np.abs(as_array(result.image).astype(int) - as_array(want)).max() <= 1


def as_batch(pipe, images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] as diffusers makes it from PIL images."""
    return pipe.image_processor.numpy_to_pt(pipe.image_processor.pil_to_numpy(images))


@pytest.mark.slow
def test_controlnet_changes_the_image_and_two_differ_from_one(tiny_pipes) -> None:
    from sdfleet.batch.sampler import Sampler

    row = {"id": "a", "prompt": "a poster", "seed": 3, "control_image": png(picture(1)),
           "control_depth": png(picture(6))}  # fmt: skip
    made = {}
    for count in (0, 1, 2):
        chosen = units(count)
        defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": chosen})
        replica = Replica(ModelSpec(controlnets=chosen), batch_size=1)
        (result,) = replica.generate(expand_row(row, defaults, 0) if count else
                                     expand_row({k: row[k] for k in ("id", "prompt", "seed")},
                                                DEFAULTS, 0))  # fmt: skip
        assert result.error is None, result.error
        made[count] = as_array(result.image)
        assert isinstance(replica.sampler, Sampler)
    assert not np.array_equal(made[0], made[1]) and not np.array_equal(made[1], made[2])


@pytest.mark.slow
def test_canny_from_the_init_image_is_opencvs_canny(tiny_pipes) -> None:
    """The control image a `canny` unit makes from the row's init image is cv2.Canny of it,
    and the row's image equals diffusers' img2img ControlNet pipeline given that edge map."""
    from sdfleet.batch.replica import load_row_inputs

    chosen = units(1, "canny")
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": chosen})
    row = {"id": "edges", "prompt": "a poster", "seed": 8, "init_image": png(picture(2))}
    assert row_problems(row, defaults) == []
    (request,) = expand_row(row, defaults, 0)
    edges = cv2.Canny(np.asarray(picture(2)), 50, 150)
    (control,) = load_row_inputs(request, chosen).controls
    assert all(np.array_equal(as_array(control)[:, :, c], edges) for c in range(3))
    assert edges.max() == 255
    (result,) = Replica(ModelSpec(controlnets=chosen), batch_size=1).generate([request])
    pipe = plain_pipeline("StableDiffusionControlNetImg2ImgPipeline", 1)
    want = pipe(prompt=["a poster"], negative_prompt=[""], image=[picture(2)],
                control_image=[Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))],
                strength=0.75, num_inference_steps=STEPS, guidance_scale=7.5,
                controlnet_conditioning_scale=0.8,
                generator=[torch.Generator().manual_seed(8)]).images[0]  # fmt: skip
    assert np.array_equal(as_array(result.image), as_array(want))


def test_a_control_image_of_another_size_is_fitted_by_its_resize_mode(tmp_path: Path) -> None:
    from sdfleet.batch.control import fit_to_size
    from sdfleet.batch.replica import load_row_inputs

    wide = picture(3, (128, 64))
    (tmp_path / "wide.png").write_bytes(png(wide))
    for mode in ("crop", "stretch", "pad"):
        unit = ControlNetUse("unused", resize_mode=mode)
        defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": (unit,)})
        row = {"id": "w", "prompt": "p", "control_image": "wide.png"}
        assert row_problems(row, defaults, base_dir=tmp_path) == []
        (request,) = expand_row(row, defaults, 0, tmp_path)
        (control,) = load_row_inputs(request, (unit,)).controls
        assert control.size == (64, 64)
        assert np.array_equal(as_array(control), as_array(fit_to_size(wide, (64, 64), mode)))


@pytest.mark.slow
def test_the_marketing_controlnet_example_runs(tmp_path: Path) -> None:
    """jobs/examples/marketing_controlnet.yaml, with its files made by its script, in a copy of
    the repository layout it names them in."""
    import importlib.util
    import shutil

    import pyarrow.parquet as pq

    from sdfleet.jobs.cli import main

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "make_example_controlnet", repo / "manifests" / "make_example_controlnet.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_files(tmp_path / "manifests")
    (tmp_path / "jobs" / "examples").mkdir(parents=True)
    job = tmp_path / "jobs" / "examples" / "marketing_controlnet.yaml"
    shutil.copy(repo / "jobs" / "examples" / "marketing_controlnet.yaml", job)
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--quiet"]) == 0
    results = pq.read_table(out / "results").to_pylist()
    assert len(results) == 6 and {r["status"] for r in results} == {"ok"}
    assert {r["mode"] for r in results} == {"txt2img", "img2img"}
    assert all('"preprocessor": "none"' in r["controlnets"] for r in results)
    # builtin:shapes' layout ControlNet puts each product where its silhouette is
    from sdfleet.batch.shapes.judge import judge

    for row in results:
        scene = script.PRODUCTS[int(row["id"].split("-")[1])]
        read = judge(np.asarray(Image.open(out / row["image_path"]).convert("RGB")))
        assert (read.position, read.colour, read.kind) == (
            scene.position, scene.colour, scene.kind), (row["id"], read)  # fmt: skip
    # the record OUT/job.yaml runs from anywhere: its ControlNet folder is read absolute
    assert main(["run", str(out / "job.yaml"), "--out", str(out), "--quiet"]) == 0
    assert len(pq.read_table(out / "results").to_pylist()) == 6


@pytest.mark.slow
def test_sdxl_rows_equal_plain_diffusers_and_an_sd_controlnet_is_refused() -> None:
    """builtin:tiny-sdxl with a ControlNet made from its UNet, txt2img, against diffusers'
    StableDiffusionXLControlNetPipeline; builtin:tiny's ControlNet is for another base."""
    import diffusers

    from sdfleet.batch.errors import ModelError
    from sdfleet.batch.model_checks import check_model_files
    from sdfleet.batch.tiny_conditioning import tiny_sdxl_controlnet_dir
    from sdfleet.batch.tiny_sdxl import tiny_sdxl_dir

    unit = ControlNetUse(str(tiny_sdxl_controlnet_dir(0)), scale=0.9, end=0.8)
    replica = Replica(ModelSpec(model="builtin:tiny-sdxl", controlnets=(unit,)), batch_size=2)
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": (unit,)})
    rows = rows_for((unit,), with_init=False)
    results = replica.generate([r for row in rows for r in expand_row(row, defaults, 0)])
    assert all(r.error is None for r in results), [r.error for r in results]
    net = diffusers.ControlNetModel.from_pretrained(unit.model)
    pipe = diffusers.StableDiffusionXLControlNetPipeline.from_pretrained(
        tiny_sdxl_dir(), controlnet=net
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        prompt=[r["prompt"] for r in rows], negative_prompt=["", ""],
        image=[picture(k) for k in range(2)], width=64, height=64,
        num_inference_steps=STEPS, guidance_scale=7.5, controlnet_conditioning_scale=0.9,
        control_guidance_end=0.8,
        generator=[torch.Generator().manual_seed(r["seed"]) for r in rows],
    ).images  # fmt: skip
    for result, want in zip(results, expected):
        assert np.array_equal(as_array(result.image), as_array(want)), result.request.row_id
    other = ModelSpec(
        model="builtin:tiny-sdxl", controlnets=(ControlNetUse(str(tiny_controlnet_dir(0))),)
    )
    with pytest.raises(ModelError, match="is a ControlNet for .* but the model is SDXL"):
        check_model_files(other)
