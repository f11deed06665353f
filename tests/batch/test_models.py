"""batch.models and batch.tiny: each model source loads the same tiny weights or fails with a fix.

builtin:tiny is written three ways (diffusers folder, original-layout .safetensors, pickled .ckpt)
and each must load to the very same weights and pictures; what must not load is refused.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sdfleet.batch.errors import ModelError
from sdfleet.batch.models import (
    ModelSpec,
    choose_device_dtype,
    load_pipelines,
    resolve_model_source,
)
from sdfleet.batch.schedulers import SCHEDULERS, make_scheduler
from tests.batch.ldm_convert import save_as_original_sd_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("unet", "vae", "text_encoder")


def generate(pipe, seed: int = 7, steps: int = 2) -> np.ndarray:
    """A 64x64 txt2img picture as uint8 pixels (H, W, 3), from a seeded CPU generator."""
    image = pipe(
        "a lighthouse at dusk",
        num_inference_steps=steps,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


def assert_same_weights(expected, actual) -> None:
    for name in COMPONENTS:
        want = getattr(expected, name).state_dict()
        got = getattr(actual, name).state_dict()
        assert set(got) == set(want), f"{name}: key sets differ"
        for key, tensor in want.items():
            assert torch.equal(got[key].cpu(), tensor.cpu()), f"{name}.{key} differs"


@pytest.fixture(scope="module")
def builtin_image(tiny_pipes) -> np.ndarray:
    return generate(tiny_pipes.txt2img)


@pytest.fixture(scope="module")
def ldm_state(tiny_pipes, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """builtin:tiny as one original-layout (A1111) .safetensors file, and its state dict."""
    path = tmp_path_factory.mktemp("single-file") / "tiny-ldm.safetensors"
    return path, save_as_original_sd_checkpoint(tiny_pipes.txt2img, path)


# --- builtin:tiny ---------------------------------------------------------------------------


def hash_tree(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow  # two fresh interpreters importing torch+diffusers: ~10-15 s on 2 cores
def test_tiny_builds_byte_identical_in_fresh_processes(tmp_path, tiny_dir):
    code = "from batch.tiny import tiny_model_dir; print(tiny_model_dir())"
    procs = []
    for name in ("a", "b"):
        env = {**os.environ, "SDFLEET_CACHE": str(tmp_path / name)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=REPO_ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    folders = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        folders.append(Path(out.strip().splitlines()[-1]))
    hashes = [hash_tree(folder) for folder in folders]
    assert hashes[0] == hashes[1]
    assert hashes[0] == hash_tree(tiny_dir)  # and the session's in-process build


def test_tiny_build_ignores_and_restores_global_rng(tiny_pipes):
    from sdfleet.batch.tiny import build_tiny_pipeline

    torch.manual_seed(12345)
    torch.rand(3)  # global RNG somewhere arbitrary
    before = torch.get_rng_state()
    rebuilt = build_tiny_pipeline()
    assert torch.equal(torch.get_rng_state(), before)
    assert_same_weights(tiny_pipes.txt2img, rebuilt)


def test_builtin_tiny_generates_a_picture(tiny_pipes, builtin_image):
    assert builtin_image.shape == (64, 64, 3)
    assert builtin_image.dtype == np.uint8
    assert builtin_image.std() > 0  # not a blank frame
    assert tiny_pipes.img2img.unet is tiny_pipes.txt2img.unet  # img2img shares the weights


# --- folder and single-file sources ----------------------------------------------------------


def test_folder_loads_same_weights_and_pixels(tiny_pipes, builtin_image, tmp_path):
    tiny_pipes.txt2img.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    pipes = load_pipelines(ModelSpec(model=str(tmp_path / "tiny")))
    assert_same_weights(tiny_pipes.txt2img, pipes.txt2img)
    np.testing.assert_array_equal(generate(pipes.txt2img), builtin_image)


def test_single_file_loads_same_weights_and_pixels(tiny_pipes, tiny_dir, builtin_image, ldm_state):
    path, state = ldm_state
    assert any(key.startswith("model.diffusion_model.input_blocks.") for key in state)
    assert any(key.startswith("first_stage_model.encoder.mid.attn_1.q.") for key in state)
    spec = ModelSpec(model=str(path), model_config=str(tiny_dir))
    assert resolve_model_source(spec).kind == "single_file"
    pipes = load_pipelines(spec)
    assert_same_weights(tiny_pipes.txt2img, pipes.txt2img)
    np.testing.assert_array_equal(generate(pipes.txt2img), builtin_image)


def test_ldm_layout_matches_diffusers_forward_converters(tiny_pipes, ldm_state):
    """Our inverse composed with diffusers' own LDM->diffusers converters is the identity."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    _, state = ldm_state
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as LDM
    pipe = tiny_pipes.txt2img
    for name, converted in (
        ("unet", convert_ldm_unet_checkpoint(state, pipe.unet.config)),
        ("vae", convert_ldm_vae_checkpoint(state, pipe.vae.config)),
    ):
        original = getattr(pipe, name).state_dict()
        assert set(converted) == set(original), name
        assert all(torch.equal(converted[k], original[k].cpu()) for k in original), name


def test_pickled_checkpoint_refused_without_allow_pickle(tiny_dir, ldm_state, tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": ldm_state[1]}, ckpt)
    with pytest.raises(ModelError, match="allow_pickle") as err:
        load_pipelines(ModelSpec(model=str(ckpt), model_config=str(tiny_dir)))
    assert str(ckpt) in str(err.value)


def test_pickled_checkpoint_loads_with_allow_pickle(tiny_pipes, tiny_dir, ldm_state, tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": ldm_state[1]}, ckpt)
    spec = ModelSpec(model=str(ckpt), model_config=str(tiny_dir), allow_pickle=True)
    pipes = load_pipelines(spec)
    assert_same_weights(tiny_pipes.txt2img, pipes.txt2img)


@pytest.fixture
def bin_only_folder(tiny_pipes, tmp_path) -> Path:
    """builtin:tiny as a diffusers folder whose every weight file is a pickled .bin."""
    from safetensors.torch import load_file

    folder = tmp_path / "tiny-bin"
    tiny_pipes.txt2img.save_pretrained(folder, safe_serialization=False)
    # transformers 5 writes safetensors whatever it is told; make the text encoder .bin too
    for path in folder.rglob("*.safetensors"):
        torch.save(load_file(path), path.with_name("pytorch_model.bin"))
        path.unlink()
    assert not list(folder.rglob("*.safetensors"))
    return folder


def test_bin_only_folder_refused_without_allow_pickle(bin_only_folder):
    with pytest.raises(ModelError, match="allow_pickle") as err:
        load_pipelines(ModelSpec(model=str(bin_only_folder)))
    assert str(bin_only_folder) in str(err.value)


def test_bin_only_folder_loads_with_allow_pickle(tiny_pipes, bin_only_folder):
    pipes = load_pipelines(ModelSpec(model=str(bin_only_folder), allow_pickle=True))
    assert_same_weights(tiny_pipes.txt2img, pipes.txt2img)


# --- sources that must fail, with the fix -----------------------------------------------------


def test_hub_id_offline_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError) as err:
        load_pipelines(ModelSpec(model="nobody/does-not-exist"))
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "nobody/does-not-exist" in message
    assert "local diffusers folder" in message and ".safetensors" in message


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{tmp}/missing.safetensors", "does not exist"),
        ("{tmp}", "no model_index.json"),
        ("builtin:huge", "unknown builtin"),
        ("not a model", "neither a builtin"),
    ],
)
def test_resolve_model_source_errors_name_the_value(tmp_path, model, expected):
    model = model.format(tmp=tmp_path)
    with pytest.raises(ModelError, match=expected) as err:
        resolve_model_source(ModelSpec(model=model))
    assert repr(model) in str(err.value)


def test_broken_model_files_fail_before_loading_naming_the_file(tmp_path):
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(ModelError, match=r"model_index.json' names no pipeline class"):
        resolve_model_source(ModelSpec(model=str(folder)))
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"model_index.json' cannot be read as JSON"):
        resolve_model_source(ModelSpec(model=str(folder)))
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"<html>403 Forbidden</html>")  # a failed download, say
    with pytest.raises(ModelError, match=r"model.safetensors' is not a readable .safetensors"):
        resolve_model_source(ModelSpec(model=str(garbage)))
    with pytest.raises(ModelError, match=r"model_config: 'no/such/dir' is not a folder"):
        resolve_model_source(ModelSpec(model="builtin:tiny", model_config="no/such/dir"))


def test_folder_that_breaks_inside_diffusers_gives_a_model_error(tiny_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"truncated")
    with pytest.raises(ModelError, match=r"the diffusers folder .*broken' could not be loaded"):
        load_pipelines(ModelSpec(model=str(broken)))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl"])
def test_resolve_refuses_pickle_suffixes_before_touching_disk(suffix):
    with pytest.raises(ModelError, match="allow_pickle"):
        resolve_model_source(ModelSpec(model=f"/nowhere/model{suffix}"))


# --- schedulers -----------------------------------------------------------------------------


# PNDM from a non-PNDM config (tiny's Euler one, like many community models) would default to
# skip_prk_steps=False, whose Runge-Kutta warm-up crashes below 4 steps: SCHEDULERS sets it.
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs_two_steps_on_tiny(tiny_pipes, name):
    # No name is skipped: tiny's scheduler config (epsilon prediction, scaled_linear betas, 1000
    # train steps) is the SD 1.x one that every listed scheduler is meant to be built from.
    from diffusers import StableDiffusionPipeline

    scheduler = make_scheduler(name, tiny_pipes.txt2img.scheduler.config)
    assert type(scheduler).__name__ == SCHEDULERS[name][0]
    pipe = StableDiffusionPipeline.from_pipe(tiny_pipes.txt2img, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    image = generate(pipe, steps=2)
    assert image.shape == (64, 64, 3)
    assert tiny_pipes.txt2img.scheduler is not scheduler  # the shared pipeline is untouched


# --- device and dtype -----------------------------------------------------------------------


def test_auto_device_dtype_on_cpu_is_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device_dtype(ModelSpec()) == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        ("fp32", torch.float32),
        ("float32", torch.float32),
    ],
)
def test_explicit_dtype_names(name, dtype):
    assert choose_device_dtype(ModelSpec(device="cpu", dtype=name)) == (torch.device("cpu"), dtype)


def test_unknown_dtype_names_the_value():
    with pytest.raises(ModelError, match="'float8'"):
        choose_device_dtype(ModelSpec(device="cpu", dtype="float8"))
