"""LoRAs in animations: per frame from the job and the prompt's tags, lerped across blends;
prompt fields checked at validation."""

from __future__ import annotations

import pytest
import torch

from sdfleet.anim.frame_adapters import blend_loras
from sdfleet.batch.adapters import LoraUse
from sdfleet.batch.errors import ConfigError
from tests.anim.fakes import small_job

A = LoraUse("a", "/a.safetensors", "1" * 64, 0.8, 0.6)
B = LoraUse("b", "/b.safetensors", "2" * 64, 1.0, 1.0)


def test_blend_lerps_each_file_and_fades_one_sided_ones():
    blended = {u.name: (u.te_weight, u.unet_weight) for u in blend_loras((A,), (A, B), 0.25)}
    assert blended == {"a": pytest.approx((0.8, 0.6)), "b": pytest.approx((0.25, 0.25))}
    assert {u.name: u.unet_weight for u in blend_loras((A, B), (), 1.0)} == {"a": 0.0, "b": 0.0}


def test_bad_prompts_and_tags_are_refused_at_validation():
    with pytest.raises(ConfigError) as err:
        small_job(prompts={"0": "a (cat --neg <lora:x:1>", "5": "a dog <lora:nope:1>"})
    text = str(err.value)
    assert "prompts['0']: unbalanced brackets" in text
    assert "belong in the prompt" in text  # a tag in the --neg part
    assert "prompts['5']: LoRA 'nope'" in text and "lora_dir" in text


@pytest.fixture(scope="module")
def lora_dir(tiny_dir, tmp_path_factory):
    from sdfleet.batch.tiny_adapters import make_tiny_lora, save_tensors

    folder = tmp_path_factory.mktemp("anim-loras")
    save_tensors(make_tiny_lora(tiny_dir, seed=3), folder / "style.safetensors")
    return folder


def test_frames_follow_the_lora_of_their_prompt(lora_dir):
    from sdfleet.anim.frames import PipelineFrames
    from sdfleet.anim.plan import compile_plan
    from sdfleet.batch.models import ModelSpec, load_model

    pipes = load_model(ModelSpec())  # its own: loading a LoRA changes the shared modules

    base = {"W": 64, "H": 64, "max_frames": 2, "lora_dir": str(lora_dir)}
    plain = small_job(**base, prompts={"0": "a red cube"})
    tagged = small_job(**base, prompts={"0": "a red cube <lora:style:0.9>"})
    job_wide = small_job(
        **base, prompts={"0": "a red cube"}, loras=[{"name": "style", "scale": 0.9}]
    )
    first = {}
    for name, job in [("plain", plain), ("tagged", tagged), ("job", job_wide)]:
        frames = PipelineFrames.for_job(pipes, job)
        first[name] = frames(compile_plan(job)[0], None)
    assert not torch.equal(first["plain"], first["tagged"])
    assert torch.equal(first["tagged"], first["job"])  # the same LoRA at the same weight
    again = PipelineFrames.for_job(pipes, plain)(compile_plan(plain)[0], None)
    assert torch.equal(again, first["plain"])  # LoRA off again for a clip without one
