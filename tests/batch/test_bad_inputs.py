"""Bad inputs refused before any model loads: model files the loader would choke on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdfleet.batch.errors import ModelError
from sdfleet.batch.model_checks import check_model_files
from sdfleet.batch.models import ModelSpec


@pytest.fixture
def pipeline_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    """A copy of the builtin:tiny diffusers folder, to break."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "pipe"))


def check(folder: Path, **fields) -> None:
    check_model_files(ModelSpec(model=str(folder), **fields))


def test_a_complete_folder_passes(pipeline_copy):
    check(pipeline_copy)


@pytest.mark.parametrize(
    ("remove", "said"),
    [
        ("unet/config.json", "is missing unet/config.json (model_index.json names unet: "),
        ("scheduler/scheduler_config.json", "is missing scheduler/scheduler_config.json"),
        ("vae", "is missing vae/ (model_index.json names vae: diffusers.AutoencoderKL)"),
        ("tokenizer/tokenizer_config.json", None),  # tokenizer.json alone loads
    ],
)
def test_a_missing_component_or_config_is_named(pipeline_copy, remove, said):
    target = pipeline_copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    if said is None:
        check(pipeline_copy)
        return
    with pytest.raises(ModelError) as caught:
        check(pipeline_copy)
    assert said in str(caught.value) and str(pipeline_copy) in str(caught.value)
    assert "save_pretrained" in str(caught.value)


def test_only_pickled_weights_are_refused_unless_allowed(pipeline_copy):
    weights = pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # the name is what the loader goes by
    with pytest.raises(ModelError) as caught:
        check(pipeline_copy)
    message = str(caught.value)
    assert "unet/ has no .safetensors weights, only pickled diffusion_pytorch_model.bin" in message
    assert "allow_pickle: true" in message
    check(pipeline_copy, allow_pickle=True)


def test_a_component_without_weights_is_named(pipeline_copy):
    (pipeline_copy / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="text_encoder/ holds no weights"):
        check(pipeline_copy)


def test_null_components_need_no_folder(pipeline_copy):
    index = json.loads((pipeline_copy / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]  # and no safety_checker/ folder
    check(pipeline_copy)


def test_an_uncached_hub_id_offline_is_refused_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as caught:
        check_model_files(ModelSpec(model="nobody-here/no-such-model"))
    message = str(caught.value)
    assert "hub id 'nobody-here/no-such-model' is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message and "hf download" in message


def test_an_unreachable_hub_is_refused_at_once(monkeypatch):
    """Hub mode on, but nothing answers (a closed local port): one message, no retries."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelError) as caught:
        check_model_files(ModelSpec(model="nobody-here/no-such-model"))
    assert "cannot be fetched (the hub said" in str(caught.value)


def test_a_cached_hub_id_passes(tmp_path, monkeypatch):
    """A model in the HF cache layout (refs/main -> snapshots/<rev>/model_index.json)."""
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / "hub" / "models--org--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model_files(ModelSpec(model="org/cached"))


# ---------------------------------------------------------------------------- init image modes


def png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image.mode != "CMYK" else "JPEG")
    return buffer.getvalue()


def test_init_images_in_every_mode_are_read_as_they_look():
    """The reader of init images (batch and animation) goes through `batch.images`: a 16-bit
    grey PNG at half range reads as mid-grey (PIL's convert clips it to white), transparency
    is composited over white, palette and CMYK come out in their colours."""
    import numpy as np
    from PIL import Image

    from sdfleet.batch.replica import read_image

    grey16 = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))  # mode I;16
    assert grey16.mode == "I;16"
    assert abs(int(np.asarray(read_image(png_bytes(grey16))).mean()) - 128) <= 1
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    assert np.asarray(read_image(png_bytes(clear))).min() == 255
    palette = Image.new("RGB", (8, 8), (200, 30, 40)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(np.asarray(read_image(png_bytes(palette)))[0, 0]) == (200, 30, 40)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    red = np.asarray(read_image(png_bytes(cmyk)))[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert read_image(png_bytes(grey16), 16, 16).size == (16, 16)
