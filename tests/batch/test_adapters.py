"""LoRA and textual inversion: files read without a model (fit, hashes, names), and loading
through diffusers on builtin:tiny and the tiny SDXL, compared with plain diffusers."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from sdfleet.batch.adapter_files import (
    AdapterFileError,
    AdapterHeader,
    BaseDims,
    adapter_library,
    check_adapter_path,
    check_scale,
    embedding_fit_problems,
    file_hash,
    find_by_name,
    folder_dims,
    hashes_text,
    lora_fit_problems,
    read_header,
)
from sdfleet.batch.adapters import AdapterSlots, EmbeddingUse, LoraUse, load_embeddings
from sdfleet.batch.errors import ModelError
from sdfleet.batch.prompt_encoding import PromptEncoder
from sdfleet.batch.tiny_adapters import (
    make_tiny_embedding,
    make_tiny_lora,
    save_tensors,
    to_kohya,
)


@pytest.fixture(scope="module")
def sdxl_dir(sdfleet_cache):
    from sdfleet.batch.tiny_sdxl import tiny_sdxl_dir

    return tiny_sdxl_dir()


@pytest.fixture(scope="module")
def files(tiny_dir, sdxl_dir, tmp_path_factory):
    """LoRAs A and B for builtin:tiny in both layouts, one for the tiny SDXL, embeddings."""
    folder = tmp_path_factory.mktemp("adapters")
    a, b = make_tiny_lora(tiny_dir, seed=1), make_tiny_lora(tiny_dir, seed=2)
    xl = make_tiny_lora(sdxl_dir, seed=3)
    return {
        "a": save_tensors(a, folder / "a.safetensors"),
        "a_kohya": save_tensors(to_kohya(a), folder / "kohya" / "a_kohya.safetensors"),
        "b": save_tensors(b, folder / "b.safetensors"),
        "xl": save_tensors(xl, folder / "xl.safetensors"),
        "xl_kohya": save_tensors(to_kohya(xl), folder / "xl_kohya.safetensors"),
        "emb": save_tensors(
            make_tiny_embedding(tiny_dir, seed=4), folder / "emb" / "shiny.safetensors"
        ),
        "emb_xl": save_tensors(make_tiny_embedding(sdxl_dir, seed=5), folder / "embxl.safetensors"),
        "folder": folder,
    }


def use(files, key, scale=1.0, unet=None) -> LoraUse:
    path = str(files[key])
    return LoraUse(key, path, file_hash(path), scale, scale if unet is None else unet)


# ------------------------------------------------------------------------------- files


def test_header_dims_in_both_layouts(files, tiny_dir, sdxl_dir):
    tiny, xl = folder_dims(tiny_dir), folder_dims(sdxl_dir)
    assert tiny == BaseDims(32, (32,)) and xl == BaseDims(64, (32, 32))
    for key in ("a", "a_kohya"):
        cross, text = read_header(files[key]).lora_dims()
        assert cross == {32} and text == {1: {32}}
    for key in ("xl", "xl_kohya"):
        cross, text = read_header(files[key]).lora_dims()
        assert cross == {64} and text == {1: {32}, 2: {32}}


def test_lora_fits_its_own_base_only(files, tiny_dir, sdxl_dir):
    tiny, xl = folder_dims(tiny_dir), folder_dims(sdxl_dir)
    for key in ("a", "a_kohya"):
        assert lora_fit_problems(read_header(files[key]), tiny, "builtin:tiny") == []
        (problem,) = lora_fit_problems(read_header(files[key]), xl, "builtin:tiny-sdxl")
        assert "cross-attention width 32" in problem and "use a LoRA trained" in problem
    for key in ("xl", "xl_kohya"):
        assert lora_fit_problems(read_header(files[key]), xl, "builtin:tiny-sdxl") == []
        problems = lora_fit_problems(read_header(files[key]), tiny, "builtin:tiny")
        assert any("second text encoder" in p for p in problems)


CROSS_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"


def test_real_widths_are_named_by_family():
    header = AdapterHeader("x.safetensors", {CROSS_KEY: (4, 2048)}, {})
    (problem,) = lora_fit_problems(header, BaseDims(768, (768,)), "sd15.safetensors")
    assert "a LoRA for SDXL" in problem and "is SD 1.x" in problem


def test_a_file_without_lora_weights_is_refused(tmp_path):
    path = save_tensors({"weight": torch.zeros(2, 2)}, tmp_path / "x.safetensors")
    (problem,) = lora_fit_problems(read_header(path), BaseDims(32, (32,)), "m")
    assert "holds no LoRA weights" in problem


def test_embedding_fit(files, tiny_dir, sdxl_dir):
    tiny, xl = folder_dims(tiny_dir), folder_dims(sdxl_dir)
    assert embedding_fit_problems(read_header(files["emb"]), tiny, "builtin:tiny") == []
    assert embedding_fit_problems(read_header(files["emb_xl"]), xl, "builtin:tiny-sdxl") == []
    (problem,) = embedding_fit_problems(read_header(files["emb"]), BaseDims(768, (768,)), "sd15")
    assert "width 32" in problem and "needs 768" in problem
    assert embedding_fit_problems(read_header(files["emb"]), xl, "xl")  # one encoder of two
    assert (
        "not a textual-inversion" in embedding_fit_problems(read_header(files["a"]), tiny, "m")[0]
    )


def test_truncated_header_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00\x00\x10\x00\x00\x00\x00\x00{")
    with pytest.raises(AdapterFileError, match="not a readable .safetensors"):
        read_header(path)


def test_paths(tmp_path, files):
    with pytest.raises(AdapterFileError, match="does not exist"):
        check_adapter_path(str(tmp_path / "nope.safetensors"), "LoRA", False)
    pickled = tmp_path / "old.pt"
    torch.save({"x": torch.zeros(1)}, pickled)
    with pytest.raises(AdapterFileError, match="allow_pickle: true"):
        check_adapter_path(str(pickled), "LoRA", False)
    assert check_adapter_path(str(pickled), "LoRA", True) == pickled
    with pytest.raises(AdapterFileError, match="not a .safetensors"):
        check_adapter_path(str(tmp_path), "LoRA", True)


def test_names_in_a_folder(files):
    library = adapter_library(files["folder"])
    assert find_by_name("a_kohya", library, "LoRA", "loras") == files["a_kohya"]  # recursive
    with pytest.raises(AdapterFileError, match="did you mean 'a_kohya'"):
        find_by_name("a_kohyaa", library, "LoRA", "loras")


@pytest.mark.parametrize("value", [math.nan, math.inf, "strong", None, True])
def test_scales_must_be_finite_numbers(value):
    with pytest.raises(AdapterFileError, match="not a finite number"):
        check_scale(value, "loras[0]")


def test_hashes_are_a1111s(files, tmp_path):
    data = files["a"].read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    assert file_hash(files["a"]) == hashlib.sha256(data[header_end:]).hexdigest()
    other = tmp_path / "x.pt"
    other.write_bytes(b"abc")
    assert file_hash(other) == hashlib.sha256(b"abc").hexdigest()
    assert hashes_text([("my:lora,", "0123456789abcdef"), ("b", "f" * 64)]) == (
        "mylora: 0123456789ab, b: ffffffffffff"
    )


# ------------------------------------------------------------------------------- loading


def _pipe(folder):
    from diffusers import AutoPipelineForText2Image

    from sdfleet.batch.models import quiet_loading

    quiet_loading()
    pipe = AutoPipelineForText2Image.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, prompt="a red fox", seed=7):
    generator = torch.Generator().manual_seed(seed)
    out = pipe(
        prompt, num_inference_steps=3, width=64, height=64, generator=generator, output_type="np"
    )
    return out.images[0]


@pytest.fixture(scope="module")
def plain_images(files, tiny_dir):
    """Plain diffusers: load_lora_weights + set_adapters(s), one fresh pipeline per case."""
    images = {"none": _image(_pipe(tiny_dir))}
    for key, scale in [("a", 1.0), ("a", 0.5), ("b", 0.8)]:
        pipe = _pipe(tiny_dir)
        pipe.load_lora_weights(str(files[key]), adapter_name="x")
        pipe.set_adapters("x", scale)
        images[(key, scale)] = _image(pipe)
    return images


def test_slots_equal_plain_diffusers_in_any_order(files, tiny_dir, plain_images):
    pipe = _pipe(tiny_dir)
    slots = AdapterSlots(pipe)
    order = [("b", 0.8), ("a", 1.0), (None, 0), ("a", 0.5), ("b", 0.8), ("a", 1.0)]
    for key, scale in order:
        slots.activate(() if key is None else (use(files, key, scale),))
        expected = plain_images["none" if key is None else (key, scale)]
        assert np.array_equal(_image(pipe), expected), (key, scale)
    assert slots.loads == 2  # each file loaded once
    assert not np.array_equal(plain_images[("a", 1.0)], plain_images["none"])


def test_kohya_layout_gives_the_same_pixels(files, tiny_dir, plain_images):
    pipe = _pipe(tiny_dir)
    AdapterSlots(pipe).activate((use(files, "a_kohya", 0.5),))
    assert np.array_equal(_image(pipe), plain_images[("a", 0.5)])


def test_scale_zero_is_no_lora(files, tiny_dir, plain_images):
    pipe = _pipe(tiny_dir)
    AdapterSlots(pipe).activate((use(files, "a", 0.0),))
    assert np.array_equal(_image(pipe), plain_images["none"])


@pytest.mark.slow
def test_bounded_slots_unload_the_oldest(files, tiny_dir, plain_images):
    pipe = _pipe(tiny_dir)
    slots = AdapterSlots(pipe, max_loaded=1)
    slots.activate((use(files, "a"),))
    slots.activate((use(files, "b", 0.8),))
    assert list(pipe.get_list_adapters()["unet"]) == [use(files, "b").adapter_name]
    assert np.array_equal(_image(pipe), plain_images[("b", 0.8)])
    slots.activate((use(files, "a"),))
    assert slots.loads == 3 and np.array_equal(_image(pipe), plain_images[("a", 1.0)])


def test_separate_text_encoder_and_unet_weights(files, tiny_dir, plain_images):
    pipe = _pipe(tiny_dir)
    AdapterSlots(pipe).activate((use(files, "a", 0.0, unet=1.0),))
    image = _image(pipe)
    assert not np.array_equal(image, plain_images[("a", 1.0)])
    assert not np.array_equal(image, plain_images["none"])


def test_a_lora_for_another_base_fails_to_load_with_the_file_named(files, tiny_dir):
    with pytest.raises(
        ModelError, match="could not be loaded.*xl.safetensors|xl.*could not be loaded"
    ):
        AdapterSlots(_pipe(tiny_dir)).activate((use(files, "xl"),))


@pytest.mark.slow
def test_sdxl_lora_in_both_layouts(files, sdxl_dir):
    pipe = _pipe(sdxl_dir)
    none = _image(pipe)
    slots = AdapterSlots(pipe)
    slots.activate((use(files, "xl"),))
    with_lora = _image(pipe)
    slots.activate((use(files, "xl_kohya"),))
    assert np.array_equal(_image(pipe), with_lora) and not np.array_equal(with_lora, none)


@pytest.mark.parametrize(("folder_key", "emb_key"), [("tiny", "emb"), ("xl", "emb_xl")])
def test_embedding_word_changes_the_encoding(files, tiny_dir, sdxl_dir, folder_key, emb_key):
    pipe = _pipe(tiny_dir if folder_key == "tiny" else sdxl_dir)
    load_embeddings(pipe, (EmbeddingUse("shiny", str(files[emb_key]), "0" * 64),))
    encoder = PromptEncoder(pipe)
    with_word = encoder.encode("a shiny fox").embeds
    assert with_word.shape[1] == 77
    assert not torch.equal(with_word, encoder.encode("a fox").embeds)
    # two vectors: the word becomes two tokens in each tokenizer
    ids = encoder._token_ids(encoder.slots[0], "shiny")
    assert len(ids) == 2 and all(i >= 514 for i in ids)
    with pytest.raises(ModelError, match="already a word"):
        load_embeddings(pipe, (EmbeddingUse("shiny", str(files[emb_key]), "0" * 64),))


# ------------------------------------------------------------------------------- the replica


def _row(row_id: str, loras: tuple = (), prompt: str = "a red fox", seed: int = 7):
    from sdfleet.batch.request import GenRequest

    return GenRequest(
        row_id=row_id,
        variant=0,
        output_name=row_id,
        prompt=prompt,
        negative_prompt="",
        seed=seed,
        num_inference_steps=3,
        guidance_scale=7.5,
        width=64,
        height=64,
        scheduler=None,
        loras=loras,
    )


def _pixels(result) -> np.ndarray:
    assert result.error is None, result.error
    return np.asarray(result.image)


@pytest.fixture(scope="module")
def replica_b1(tiny_dir):
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.replica import Replica

    return Replica(ModelSpec(), batch_size=1)


def _plain_pil(tiny_dir, path=None, scale=1.0):
    """What a user writes with diffusers alone: load_lora_weights + set_adapters(scale)."""
    pipe = _pipe(tiny_dir)
    if path is not None:
        pipe.load_lora_weights(str(path), adapter_name="mine")
        pipe.set_adapters("mine", scale)
    generator = torch.Generator().manual_seed(7)
    return pipe("a red fox", num_inference_steps=3, width=64, height=64, generator=generator)


@pytest.mark.parametrize(("key", "scale"), [("a", 0.8), ("a_kohya", 0.8), ("b", 1.3)])
def test_replica_with_a_lora_equals_plain_diffusers(replica_b1, files, tiny_dir, key, scale):
    expected = _plain_pil(tiny_dir, files[key], scale).images[0]
    (ours,) = replica_b1.generate([_row("r", (use(files, key, scale),))])
    assert np.array_equal(_pixels(ours), np.asarray(expected))


def test_replica_scale_zero_equals_no_lora(replica_b1, files):
    (zero,) = replica_b1.generate([_row("r", (use(files, "a", 0.0),))])
    (none,) = replica_b1.generate([_row("r")])
    (with_lora,) = replica_b1.generate([_row("r", (use(files, "a", 0.8),))])
    assert np.array_equal(_pixels(zero), _pixels(none))
    assert not np.array_equal(_pixels(with_lora), _pixels(none))


def test_row_with_lora_a_beside_lora_b_rows_equals_it_alone(tiny_dir, files):
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.replica import Replica

    replica = Replica(ModelSpec(), batch_size=2)
    a, b = (use(files, "a", 0.8),), (use(files, "b", 0.8),)
    rows = [_row("a1", a, seed=1), _row("b1", b, seed=2), _row("a2", a, seed=3), _row("n", seed=4)]
    rows.append(_row("ab", (*a, *b), seed=5))
    mixed = replica.generate(rows)
    assert replica.sampler.adapters.loads == 2
    fresh = Replica(ModelSpec(), batch_size=2)  # has seen no other adapter
    for row, got in zip(rows, mixed):
        (alone,) = fresh.generate([row])
        assert np.array_equal(_pixels(got), _pixels(alone)), row.row_id
    assert not np.array_equal(_pixels(mixed[0]), _pixels(mixed[2]))  # seeds differ
