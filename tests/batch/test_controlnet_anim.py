"""ControlNet in the 2D animation chain: each img2img frame's control image is made from its
prepared init (the previous frame, warped); the clip renders, and a resumed clip is byte-identical
to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdfleet.anim.clip import ClipPaths, read_status, render_clip
from sdfleet.anim.frames import PipelineFrames
from sdfleet.anim.plan import FrameRecord, compile_plan
from sdfleet.batch.control import preprocess
from sdfleet.batch.models import load_model, model_spec
from sdfleet.batch.replica import to_pil
from sdfleet.batch.sampler import Sampler
from sdfleet.batch.tiny_conditioning import tiny_controlnet_dir
from tests.anim.fakes import small_job

SIZE = {"W": 64, "H": 64, "max_frames": 5, "zoom": 1.05, "steps_schedule": 4}


def canny_unit() -> dict:
    options = {"low": 50, "high": 150}
    return {"model": str(tiny_controlnet_dir(0)), "preprocessor": "canny",
            "preprocessor_options": options, "scale": 1.5}  # fmt: skip


class FailingFrames(PipelineFrames):
    """The real frame step, failing once at `fail_at` (a crash mid-clip)."""

    fail_at: int | None = None

    def __call__(self, record: FrameRecord, init: torch.Tensor | None) -> torch.Tensor:
        if record.frame == self.fail_at:
            raise RuntimeError(f"stopped at frame {record.frame}")
        return super().__call__(record, init)


@pytest.fixture(scope="module")
def sampler() -> Sampler:
    job = small_job(**SIZE, controlnets=[canny_unit()])
    return Sampler(load_model(model_spec(job)))


def frames_of(paths: ClipPaths, count: int) -> list[bytes]:
    return [paths.frame(k).read_bytes() for k in range(count)]


@pytest.mark.slow
def test_a_controlnet_clip_renders_and_resumes_byte_identically(sampler, tmp_path: Path) -> None:
    job = small_job(**SIZE, controlnets=[canny_unit()])
    clean = ClipPaths.for_job(tmp_path / "clean", job, "clip")
    render_clip(job, clean, PipelineFrames.for_job(sampler, job))
    assert ("controlnet-img2img", job.scheduler) in sampler._derived  # frames 1.. ran with it
    broken = ClipPaths.for_job(tmp_path / "broken", job, "clip")
    failing = FailingFrames.for_job(sampler, job)
    failing.fail_at = 3
    with pytest.raises(RuntimeError, match="frame 3"):
        render_clip(job, broken, failing)
    assert read_status(broken)["frames_written"] == 3
    render_clip(job, broken, PipelineFrames.for_job(sampler, job))
    assert read_status(broken)["resumed_from"] == 3
    assert frames_of(broken, 5) == frames_of(clean, 5)
    plain_job = small_job(**SIZE)
    plain = ClipPaths.for_job(tmp_path / "plain", plain_job, "clip")
    render_clip(plain_job, plain, PipelineFrames.for_job(Sampler(sampler.pipes), plain_job))
    assert frames_of(plain, 1) == frames_of(clean, 1)  # frame 0: txt2img, no previous frame
    assert frames_of(plain, 5)[1:] != frames_of(clean, 5)[1:]


def test_the_control_image_is_the_preprocessed_prepared_init(sampler) -> None:
    job = small_job(**SIZE, controlnets=[canny_unit()])
    frames = PipelineFrames.for_job(sampler, job)
    init = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(4))
    record = compile_plan(job)[1]
    control = frames.control(record, init)
    expected = preprocess("canny", to_pil(init.permute(1, 2, 0).numpy()), {"low": 50, "high": 150})
    ((image,),) = control.images
    assert np.array_equal(np.asarray(image), np.asarray(expected)) and control.scales == [1.5]
    assert PipelineFrames.for_job(sampler, small_job(**SIZE)).control(record, init) is None
