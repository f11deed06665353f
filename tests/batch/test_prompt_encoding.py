"""A1111-style chunked prompt encoding: A1111's chunk rules, parity with diffusers' own encoding
for plain prompts (SD 1.x and SDXL), emphasis with mean restoration, the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdfleet.batch.prompt_encoding import (
    CHUNK_TOKENS,
    PromptEncoder,
    apply_emphasis,
    chunk_tokens,
)

BOS, EOS, COMMA = 1000, 1001, 5


def _content(chunk) -> list[int]:
    return [t for t in chunk.ids[1:-1] if t != EOS]


# ------------------------------------------------------------------------------- chunk rules


def test_short_prompt_is_one_chunk_of_77():
    (chunk,) = chunk_tokens([([1, 2, 3], 1.0)], BOS, EOS, COMMA)
    assert len(chunk.ids) == 77 and chunk.ids[:4] == (BOS, 1, 2, 3)
    assert chunk.ids[4:] == (EOS,) * 73 and chunk.weights == (1.0,) * 77


def test_empty_prompt_is_one_empty_chunk():
    (chunk,) = chunk_tokens([([], 1.0)], BOS, EOS, COMMA)
    assert chunk.ids == (BOS,) + (EOS,) * 76


def test_76_tokens_make_two_chunks_and_weights_follow_tokens():
    chunks = chunk_tokens([(list(range(10, 60)), 1.0), (list(range(60, 86)), 1.5)], BOS, EOS, None)
    assert [len(c.ids) for c in chunks] == [77, 77]
    assert _content(chunks[0]) == list(range(10, 85)) and _content(chunks[1]) == [85]
    assert chunks[0].weights[51] == 1.5 and chunks[0].weights[50] == 1.0
    assert chunks[1].weights[1] == 1.5 and chunks[1].weights[2] == 1.0  # padding stays 1


def test_break_closes_the_chunk():
    chunks = chunk_tokens([([1, 2], 1.0), None, ([3], 1.0)], BOS, EOS, COMMA)
    assert [_content(c) for c in chunks] == [[1, 2], [3]]


def test_break_at_the_start_makes_an_empty_chunk_as_in_a1111():
    chunks = chunk_tokens([([], 1.0), None, ([3], 1.0)], BOS, EOS, COMMA)
    assert [_content(c) for c in chunks] == [[], [3]]


def test_words_after_a_recent_comma_move_to_the_next_chunk():
    # 70 tokens, a comma, 10 more: the chunk fills at 75 with the comma 5 tokens back
    tokens = list(range(10, 80)) + [COMMA] + list(range(80, 90))
    chunks = chunk_tokens([(tokens, 1.0)], BOS, EOS, COMMA)
    assert _content(chunks[0]) == list(range(10, 80)) + [COMMA]
    assert _content(chunks[1]) == list(range(80, 90))


def test_a_comma_further_back_than_20_tokens_is_not_used():
    tokens = list(range(10, 30)) + [COMMA] + list(range(30, 90))
    chunks = chunk_tokens([(tokens, 1.0)], BOS, EOS, COMMA)
    assert len(_content(chunks[0])) == CHUNK_TOKENS


def test_backtrack_zero_cuts_at_75():
    tokens = list(range(10, 80)) + [COMMA] + list(range(80, 90))
    chunks = chunk_tokens([(tokens, 1.0)], BOS, EOS, COMMA, backtrack=0)
    assert _content(chunks[0]) == tokens[:75]


def test_emphasis_restores_the_mean():
    z = torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(0))
    weights = [1.0] * 77
    weights[3:6] = [1.5, 1.5, 1.5]
    out = apply_emphasis(z, weights)
    assert torch.allclose(out.mean(), z.mean(), atol=1e-6)
    ratio = out[0, 3] / out[0, 10]
    assert torch.allclose(ratio, 1.5 * z[0, 3] / z[0, 10], rtol=1e-5)
    assert apply_emphasis(z, [1.0] * 77) is z


# ------------------------------------------------------------------------------- on models


@pytest.fixture(scope="module")
def sd_pipe(tiny_pipes):
    return tiny_pipes.txt2img


@pytest.fixture(scope="module")
def sdxl_pipe(sdfleet_cache):
    from diffusers import StableDiffusionXLPipeline

    from sdfleet.batch.tiny_sdxl import tiny_sdxl_dir

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir(), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PLAIN = ["a red fox in the snow", "", "x" * 75]


@pytest.mark.parametrize("prompt", PLAIN)
def test_plain_prompt_equals_diffusers_encoding_sd(sd_pipe, prompt):
    with torch.inference_mode():
        expected = sd_pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    ours = PromptEncoder(sd_pipe).encode(prompt)
    assert ours.pooled is None and torch.equal(ours.embeds, expected)


@pytest.mark.parametrize("prompt", PLAIN)
def test_plain_prompt_equals_diffusers_encoding_sdxl(sdxl_pipe, prompt):
    with torch.inference_mode():
        expected, _, pooled, _ = sdxl_pipe.encode_prompt(
            prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    ours = PromptEncoder(sdxl_pipe).encode(prompt)
    assert ours.embeds.shape == (1, 77, 64)
    assert torch.equal(ours.embeds, expected) and torch.equal(ours.pooled, pooled)


def test_plain_text_routes_only_prompts_diffusers_can_encode(sd_pipe):
    encoder = PromptEncoder(sd_pipe)
    assert encoder.plain_text("a red fox") == "a red fox"
    assert encoder.plain_text("a fox <lora:x:0.5>") == "a fox "
    assert encoder.plain_text("a (red) fox") is None
    assert encoder.plain_text("a BREAK b") is None
    assert encoder.plain_text("x" * 76) is None
    assert encoder.plain_text("a \\(red\\) (fox:1.0)") == "a (red) fox"
    assert PromptEncoder(sd_pipe, syntax="plain").plain_text("a (red) fox") == "a (red) fox"


@pytest.mark.parametrize("pipe_name", ["sd_pipe", "sdxl_pipe"])
def test_long_prompt_is_two_chunks_whose_first_is_the_first_window(request, pipe_name):
    pipe = request.getfixturevalue(pipe_name)
    encoder = PromptEncoder(pipe)
    head, tail = " ".join("x" * 75), " ".join("y" * 10)  # one token a letter here
    long = encoder.encode(f"{head} {tail}")
    assert long.chunks == 2 and long.embeds.shape[1] == 154
    assert torch.equal(long.embeds[:, :77], encoder.encode(head).embeds)
    assert torch.equal(long.embeds[:, 77:], encoder.encode(tail).embeds)
    if long.pooled is not None:  # SDXL: pooled from the first chunk, as A1111 does
        assert torch.equal(long.pooled, encoder.encode(head).pooled)


@pytest.mark.parametrize("pipe_name", ["sd_pipe", "sdxl_pipe"])
def test_weight_changes_the_embedding_and_keeps_the_mean(request, pipe_name):
    encoder = PromptEncoder(request.getfixturevalue(pipe_name))
    plain, weighted = encoder.encode("a red fox"), encoder.encode("a (red:1.5) fox")
    assert not torch.equal(plain.embeds, weighted.embeds)
    assert torch.allclose(plain.embeds.mean(), weighted.embeds.mean(), atol=1e-5)
    if plain.pooled is not None:
        assert torch.equal(plain.pooled, weighted.pooled)  # pooled ignores emphasis


def test_plain_syntax_encodes_parentheses_as_text(sd_pipe):
    a1111, plain = PromptEncoder(sd_pipe), PromptEncoder(sd_pipe, syntax="plain")
    assert torch.equal(plain.encode("(red)").embeds, a1111.encode("\\(red\\)").embeds)
    assert not torch.equal(plain.encode("(red)").embeds, a1111.encode("(red)").embeds)


def test_pipeline_kwargs_pad_to_the_longest_prompt(sdxl_pipe):
    encoder = PromptEncoder(sdxl_pipe)
    kwargs = encoder.pipeline_kwargs(["a", "x" * 80], ["", "blurry"])
    assert kwargs["prompt_embeds"].shape == (2, 154, 64)
    assert kwargs["negative_prompt_embeds"].shape == (2, 154, 64)
    assert kwargs["pooled_prompt_embeds"].shape == (2, 32)
    empty = encoder.encode("").embeds
    assert torch.equal(kwargs["prompt_embeds"][0:1, 77:], empty)
    assert torch.equal(kwargs["negative_prompt_embeds"][1:2, :77], encoder.encode("blurry").embeds)


def test_cache_is_per_prompt_and_adapter_state(sd_pipe):
    encoder = PromptEncoder(sd_pipe, cache_size=2)
    first = encoder.encode("a")
    assert encoder.encode("a") is first
    encoder.adapter_key = (("style", 0.5),)
    assert encoder.encode("a") is not first
    encoder.encode("b"), encoder.encode("c")
    encoder.adapter_key = ()
    assert encoder.encode("a") is not first  # evicted: at most cache_size entries


def test_routes(sd_pipe):
    encoder = PromptEncoder(sd_pipe)
    assert encoder.route("a red fox", "") == ("text",)
    assert encoder.route("a (red) fox", "") == ("embeds", 1)
    assert encoder.route("a fox", " ".join("y" * 80)) == ("embeds", 2)
    assert encoder.route("a BREAK b BREAK c", "") == ("embeds", 3)
    kwargs = encoder.call_kwargs(["a fox <lora:x:1>", "b"], ["", "blurry"])
    assert kwargs == {"prompt": ["a fox ", "b"], "negative_prompt": ["", "blurry"]}
    kwargs = encoder.call_kwargs(["a (fox)", "b"], ["", "blurry"])
    assert kwargs["prompt_embeds"].shape == (2, 77, 32)


# ------------------------------------------------------------------------------- pictures


def _image(replica, prompt: str, negative: str = "") -> np.ndarray:
    from sdfleet.batch.request import GenRequest

    request = GenRequest(
        row_id="r",
        variant=0,
        output_name="r",
        prompt=prompt,
        negative_prompt=negative,
        seed=11,
        num_inference_steps=3,
        guidance_scale=7.5,
        width=64,
        height=64,
        scheduler=None,
    )
    (result,) = replica.generate([request])
    assert result.error is None, result.error
    return np.asarray(result.image)


@pytest.fixture(scope="module")
def replicas(tiny_dir):
    from sdfleet.batch.models import ModelSpec
    from sdfleet.batch.replica import Replica

    return {
        syntax: Replica(ModelSpec(prompt_syntax=syntax), batch_size=1)
        for syntax in ("a1111", "plain")
    }


def test_tokens_after_the_77th_change_the_picture(replicas):
    head = " ".join("x" * 75)  # 75 tokens: a full window
    base = _image(replicas["a1111"], head)
    longer = _image(replicas["a1111"], f"{head} y z")
    assert not np.array_equal(base, longer)
    # plain syntax reads no brackets but still encodes every token (chunks, no cut)
    assert np.array_equal(_image(replicas["plain"], f"{head} y z"), longer)


def test_diffusers_alone_cuts_at_77_tokens(sd_pipe):
    """Why chunking matters: diffusers' own encoding of the same two prompts is identical."""
    head = " ".join("x" * 75)
    with torch.inference_mode():
        cut = sd_pipe.encode_prompt(f"{head} y z", "cpu", 1, False)[0]
        full = sd_pipe.encode_prompt(head, "cpu", 1, False)[0]
    assert torch.equal(cut, full)


def test_weight_changes_the_picture(replicas):
    word, weighted = _image(replicas["a1111"], "a fox"), _image(replicas["a1111"], "a (fox:1.5)")
    assert not np.array_equal(word, weighted)
    assert np.array_equal(_image(replicas["a1111"], "a (fox:1.0)"), word)  # weight 1 is the word


def test_plain_syntax_keeps_parentheses_as_text(replicas):
    plain = _image(replicas["plain"], "a (fox:1.5)")
    assert np.array_equal(plain, _image(replicas["a1111"], "a \\(fox:1.5\\)"))
    assert not np.array_equal(plain, _image(replicas["a1111"], "a (fox:1.5)"))
    assert not np.array_equal(plain, _image(replicas["a1111"], "a fox:1.5"))
