"""SDXL everywhere on the tiny SDXL built here: the batch replica (A1111 syntax, LoRA, refiner),
the animation frame step (pooled embeddings), and a killed SDXL clip resumed byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdfleet.batch.models import ModelSpec, load_model
from sdfleet.batch.request import GenRequest

XL = "builtin:tiny-sdxl"
REFINER = "builtin:tiny-sdxl-refiner"


@pytest.fixture(scope="module")
def xl_dirs(sdfleet_cache):
    from sdfleet.batch.tiny_sdxl import tiny_sdxl_dir, tiny_sdxl_refiner_dir

    return tiny_sdxl_dir(), tiny_sdxl_refiner_dir()


def row(row_id: str, prompt: str, seed: int, negative: str = "", **extra) -> GenRequest:
    values = dict(
        row_id=row_id,
        variant=0,
        output_name=row_id,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        num_inference_steps=4,
        guidance_scale=5.0,
        width=64,
        height=64,
        scheduler=None,
    )
    return GenRequest(**(values | extra))


def pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.asarray(result.image)


def test_tiny_sdxl_is_a_real_sdxl_pipeline(xl_dirs):
    pipes = load_model(ModelSpec(model=XL, refiner=REFINER))
    base = pipes.txt2img
    assert type(base).__name__ == "StableDiffusionXLPipeline"
    assert type(base.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert base.unet.config.addition_embed_type == "text_time"
    assert base.tokenizer_2.pad_token == "!"  # SDXL's second tokenizer pads with "!"
    assert type(pipes.refiner).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert pipes.refiner.config.requires_aesthetics_score and pipes.refiner.text_encoder is None


def test_sdxl_batch_plain_prompt_equals_diffusers_and_syntax_works(xl_dirs):
    from diffusers import StableDiffusionXLPipeline

    from sdfleet.batch.replica import Replica

    replica = Replica(ModelSpec(model=XL), batch_size=1)
    plain = StableDiffusionXLPipeline.from_pretrained(xl_dirs[0], local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a red fox",
        negative_prompt="",
        num_inference_steps=4,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    (ours,) = replica.generate([row("fox", "a red fox", 3)])
    assert np.array_equal(pixels(ours), np.asarray(expected))
    (weighted,) = replica.generate([row("fox", "a (red:1.6) fox", 3)])
    (long,) = replica.generate([row("fox", "a red fox, " + " ".join("x" * 80), 3)])
    assert not np.array_equal(pixels(weighted), pixels(ours))
    assert not np.array_equal(pixels(long), pixels(ours))


def test_sdxl_batch_with_a_refiner_equals_the_diffusers_base_refiner_split(xl_dirs):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from sdfleet.batch.replica import Replica

    replica = Replica(ModelSpec(model=XL, refiner=REFINER, refiner_switch=0.5), batch_size=2)
    rows = [row("a", "a lighthouse", 5), row("b", "a (stormy:1.3) sea", 6, "blurry")]
    refined = replica.generate(rows)
    assert all(r.error is None for r in refined)
    # plain diffusers: base to 0.5 (latents), the refiner from 0.5, the same generator
    base = StableDiffusionXLPipeline.from_pretrained(xl_dirs[0], local_files_only=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(xl_dirs[1], local_files_only=True)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    common = {"num_inference_steps": 4, "guidance_scale": 5.0, "generator": generator}
    latents = base(
        ["a lighthouse", "a lighthouse"],  # the plain-text row, padded to the batch of 2
        negative_prompt=["", ""],
        width=64,
        height=64,
        denoising_end=0.5,
        output_type="latent",
        **common,
    ).images
    expected = refiner(
        ["a lighthouse"] * 2, negative_prompt=[""] * 2, image=latents, denoising_start=0.5, **common
    ).images
    unrefined = Replica(ModelSpec(model=XL), batch_size=2).generate(rows[:1])
    (alone,) = replica.generate(rows[:1])
    assert np.array_equal(pixels(alone), np.asarray(expected[0]))
    assert not np.array_equal(pixels(alone), pixels(unrefined[0]))


def test_sdxl_lora_and_embedding_in_a_batch(xl_dirs, tmp_path):
    from sdfleet.batch.adapter_files import file_hash
    from sdfleet.batch.adapters import EmbeddingUse, LoraUse
    from sdfleet.batch.replica import Replica
    from sdfleet.batch.tiny_adapters import (
        make_tiny_embedding,
        make_tiny_lora,
        save_tensors,
        to_kohya,
    )

    lora = save_tensors(to_kohya(make_tiny_lora(xl_dirs[0], 9)), tmp_path / "xl.safetensors")
    emb = save_tensors(make_tiny_embedding(xl_dirs[0], 10), tmp_path / "shiny.safetensors")
    spec = ModelSpec(model=XL, embeddings=(EmbeddingUse("shiny", str(emb), file_hash(emb)),))
    replica = Replica(spec, batch_size=1)
    use = LoraUse("xl", str(lora), file_hash(lora), 0.8, 0.8)
    plain, with_lora, with_word = replica.generate(
        [row("p", "a fox", 1), row("l", "a fox", 1, loras=(use,)), row("w", "a shiny fox", 1)]
    )
    assert not np.array_equal(pixels(plain), pixels(with_lora))
    assert not np.array_equal(pixels(plain), pixels(with_word))


def test_sdxl_animation_frames_and_walk(xl_dirs):
    from sdfleet.anim.frames import PipelineFrames
    from sdfleet.anim.plan import compile_plan
    from tests.anim.fakes import small_job

    job = small_job(
        model=XL,
        W=64,
        H=64,
        max_frames=3,
        strength_schedule=0.6,
        prompt_transition="blend",
        prompts={"0": "a (red:1.2) cube", "2": "a blue ball, " + " ".join("y" * 80)},
    )
    frames = PipelineFrames.for_job(load_model(ModelSpec(model=XL)), job)
    plan = compile_plan(job)
    embeds = frames.prompt_embeds([plan[1]])
    assert embeds["prompt_embeds"].shape == (1, 154, 64)  # the long key: two chunks
    assert embeds["pooled_prompt_embeds"].shape == (1, 32)
    first = frames(plan[0], None)
    second = frames(plan[1], first)
    assert first.shape == (3, 64, 64) and torch.equal(first, frames(plan[0], None))
    assert not torch.equal(first, second)
    noise = torch.randn((2, *frames.latent_shape), generator=torch.Generator().manual_seed(0))
    walked = frames.walk(plan[:2], noise)
    assert walked.shape == (2, 3, 64, 64) and torch.isfinite(walked).all()


KILL_XL_JOB = {
    "kind": "animation",
    "model": XL,
    "W": 64,
    "H": 64,
    "max_frames": 24,
    "fps": 8,
    "seed": 7,
    "diffusion_cadence": 2,
    "zoom": "0:(1.02)",
    "angle": "0:(2)",
    "strength_schedule": "0:(0.55)",
    "steps_schedule": "0:(4)",
    "color_coherence": "LAB",
    "prompts": {"0": "a (lighthouse:1.2) at dusk", "12": "a snowy lighthouse BREAK night"},
    "video": {"format": "mp4", "preset": "veryfast"},
}


@pytest.mark.slow
def test_sdxl_clip_resumes_byte_identically_after_a_kill(tmp_path: Path, xl_dirs) -> None:
    from sdfleet.anim.clip import ClipPaths, read_status
    from sdfleet.anim.state import saved_frames
    from tests.anim.test_resume import REPO_ROOT, run_argv, wait_for_frames

    job_file = tmp_path / "xl.yaml"
    job_file.write_text(yaml.safe_dump(KILL_XL_JOB))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(
        run_argv(job_file, killed), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    wait_for_frames(killed, 5, process, timeout_s=300)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed = saved_frames(ClipPaths(killed).state)
    assert read_status(ClipPaths(killed))["status"] == "running" and committed >= 3
    for out in (killed, clean):
        done = subprocess.run(
            run_argv(job_file, out), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert read_status(ClipPaths(killed))["resumed_from"] == committed
    for frame in range(24):
        name = f"frames/frame_{frame:06d}.png"
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
