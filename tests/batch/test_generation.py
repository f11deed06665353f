"""The generation core on builtin:tiny: parity with plain diffusers, row independence, faults."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from sdfleet.batch.models import ModelSpec
from sdfleet.batch.replica import Replica, to_pil
from sdfleet.batch.request import GenRequest, RowDefaults, expand_row
from sdfleet.jobs.examples import shape_image_png

DEFAULTS = RowDefaults(width=64, height=64, num_inference_steps=4, guidance_scale=5.0)


@pytest.fixture(scope="module")
def replica(tiny_dir) -> Replica:
    return Replica(ModelSpec(), batch_size=4)


@pytest.fixture(scope="module")
def replica_b1(tiny_dir) -> Replica:
    return Replica(ModelSpec(), batch_size=1)


def request(row_id: str, prompt: str, seed: int, **extra) -> GenRequest:
    row = {"id": row_id, "prompt": prompt, "seed": seed, **extra}
    return expand_row(row, DEFAULTS, job_seed=0)[0]


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.asarray(result.image)


def plain_txt2img(pipe, prompts, seeds, size=64):
    """What a user writes with diffusers alone."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(
        prompts,
        num_inference_steps=4,
        guidance_scale=5.0,
        width=size,
        height=size,
        generator=generators,
    ).images


def test_txt2img_parity_with_plain_diffusers_single(replica_b1, tiny_dir):
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    expected = plain_txt2img(plain, ["a red fox"], [123])[0]
    (ours,) = replica_b1.generate([request("fox", "a red fox", 123)])
    assert np.array_equal(pixels(ours), np.asarray(expected))


def test_txt2img_parity_with_plain_diffusers_batched(replica, tiny_dir):
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    prompts, seeds = ["a", "b c", "d e f", "g"], [1, 2, 3, 4]
    expected = plain_txt2img(plain, prompts, seeds)
    ours = replica.generate(
        [request(f"r{i}", p, s) for i, (p, s) in enumerate(zip(prompts, seeds))]
    )
    for got, want in zip(ours, expected):
        assert np.array_equal(pixels(got), np.asarray(want))


def test_img2img_parity_with_plain_diffusers(replica_b1, tiny_dir):
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    source = shape_image_png(2)
    plain = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_dir, local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    init = Image.open(io.BytesIO(source)).convert("RGB")
    expected = plain(
        "a shape",
        image=init,
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(9),
    ).images[0]
    (ours,) = replica_b1.generate([request("s", "a shape", 9, init_image=source, strength=0.6)])
    assert np.array_equal(pixels(ours), np.asarray(expected))


def test_img2img_with_too_few_steps_runs_one_step_at_its_strength(replica_b1, tmp_path):
    """The steps x strength policy (`batch.schedulers.img2img_steps`): 4 steps at 0.2 would run
    int(0.8) = 0 steps; the row is accepted and runs as 5 steps at 0.2 do (one step)."""
    import pyarrow.parquet as pq

    from sdfleet.batch.manifest import validate_manifest
    from sdfleet.batch.sources import table_from_rows

    source = shape_image_png(1)
    row = {"id": "s", "prompt": "a shape", "seed": 4, "init_image": source, "strength": 0.2}
    pq.write_table(table_from_rows([row]), tmp_path / "m.parquet")
    validate_manifest([str(tmp_path / "m.parquet")], DEFAULTS, base_dir=tmp_path)  # no error
    (few,) = replica_b1.generate([request("s", "a shape", 4, init_image=source, strength=0.2)])
    five = request("s", "a shape", 4, init_image=source, strength=0.2, num_inference_steps=5)
    (ran,) = replica_b1.generate([five])
    assert np.array_equal(pixels(few), pixels(ran))


@pytest.mark.parametrize("size", [64, 128])
def test_row_is_identical_alone_or_in_a_batch_of_four(replica, size):
    target = request("target", "a lighthouse at dusk", 77, width=size, height=size)
    others = [
        request(f"o{i}", f"other prompt {i}", 1000 + i, width=size, height=size) for i in range(3)
    ]
    (alone,) = replica.generate([target])
    for position in range(4):
        batch = others[:position] + [target] + others[position:]
        together = replica.generate(batch)[position]
        assert np.array_equal(pixels(alone), pixels(together)), f"differs at position {position}"


def test_different_seeds_give_different_images(replica):
    a, b = replica.generate([request("a", "same", 1), request("b", "same", 2)])
    assert not np.array_equal(pixels(a), pixels(b))


def test_corrupt_init_image_fails_only_its_row(replica):
    good = request("good", "x", 1, init_image=shape_image_png(0))
    bad = request("bad", "x", 2, init_image=b"\x89PNG this is not an image")
    results = replica.generate([good, bad, request("t2i", "y", 3)])
    assert results[0].error is None and results[2].error is None
    assert results[1].image is None
    assert results[1].error.startswith("init_image: UnidentifiedImageError")


class FakePipeOutput:
    def __init__(self, images):
        self.images = images


def test_nan_output_becomes_a_row_error(replica, monkeypatch):
    real = replica.pipes.txt2img

    class NanPipe:
        scheduler = real.scheduler

        def __call__(self, **kwargs):
            images = real(**kwargs).images
            images[0][:] = np.nan  # the first row overflows, as fp16 sometimes does
            return FakePipeOutput(images)

    monkeypatch.setattr(replica.pipes, "txt2img", NanPipe())
    first, second = replica.generate([request("n", "x", 1), request("m", "y", 2)])
    assert first.image is None and "NaN" in first.error
    assert second.error is None


@pytest.mark.parametrize("pad_batches", [True, False])
def test_out_of_memory_retries_at_a_smaller_batch(tiny_dir, monkeypatch, pad_batches):
    small = Replica(ModelSpec(), batch_size=4, pad_batches=pad_batches)
    real = small.pipes.txt2img
    calls: list[int] = []

    class SmallMemoryPipe:
        scheduler = real.scheduler

        def __call__(self, **kwargs):
            calls.append(len(kwargs["prompt"]))
            if len(kwargs["prompt"]) > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(**kwargs)

    monkeypatch.setattr(small.pipes, "txt2img", SmallMemoryPipe())
    results = small.generate([request(f"r{i}", "p", i) for i in range(4)])
    assert calls == [4, 2, 2]
    assert all(r.error is None for r in results)
    calls.clear()
    (alone,) = small.generate([request("x", "p", 9)])  # padded to 4 it runs out of memory too
    assert calls == ([4, 2] if pad_batches else [1]) and alone.error is None


def test_a_generic_failure_is_isolated_row_by_row(replica, monkeypatch):
    real = replica.pipes.txt2img

    class PoisonPipe:
        scheduler = real.scheduler

        def __call__(self, **kwargs):
            if "poison" in kwargs["prompt"]:
                raise ValueError("this prompt breaks the model")
            return real(**kwargs)

    monkeypatch.setattr(replica.pipes, "txt2img", PoisonPipe())
    results = replica.generate([request("a", "fine", 1), request("p", "poison", 2)])
    assert results[0].error is None
    assert results[1].error == "ValueError: this prompt breaks the model"


def test_scheduler_is_selected_per_row(replica):
    # euler_a (ancestral: fresh noise each step) differs visibly from the model's Euler; DDIM
    # does not at 4 steps on builtin:tiny (both are first-order solvers of the same ODE)
    euler, ancestral = replica.generate(
        [request("e", "same", 5), request("a", "same", 5, scheduler="euler_a")]
    )
    assert not np.array_equal(pixels(euler), pixels(ancestral))
    used = replica.sampler.pipeline("txt2img", "euler_a").scheduler
    assert type(used).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(replica.pipes.txt2img.scheduler).__name__ == "EulerDiscreteScheduler"  # unchanged


def test_to_pil_rounds_like_diffusers():
    from diffusers.image_processor import VaeImageProcessor

    array = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    expected = VaeImageProcessor.numpy_to_pil(array)[0]
    assert np.array_equal(np.asarray(to_pil(array[0])), np.asarray(expected))
