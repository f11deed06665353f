"""Prompt embeddings the way A1111 makes them: 75-token chunks, emphasis, mean restoration.

A1111 (`modules/sd_hijack_clip.py`) encodes a prompt as consecutive chunks of 75 tokens, each
wrapped in BOS ... EOS to CLIP's 77, and concatenates the chunks' states, so a prompt is never cut
at 77 tokens. A chunk ends early at `BREAK`; when a chunk fills up and a comma was within the last
20 tokens, the words after that comma move to the next chunk (A1111's comma back-off, default 20).
Each token's state is multiplied by its attention weight, then the whole chunk is rescaled so its
mean is what it was before (A1111's default "Original" emphasis).

- SD 1.x/2.x: one text encoder, last hidden state (diffusers' `encode_prompt` without clip skip).
- SDXL: both text encoders, penultimate hidden states, concatenated per chunk along the feature
  axis; the pooled embedding comes from the projection encoder on the first chunk, as in A1111.
- A positive and its negative, and all prompts of one pipeline call, need the same number of
  chunks: shorter ones are padded with the encoding of an empty chunk (A1111's `pad_cond_uncond`).
- A prompt with no syntax that fits one window gives exactly diffusers' own encoding (tested).
- Embeddings are cached per (prompt, adapter state): a text-encoder LoRA changes them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdfleet.batch.prompt_syntax import Fragment, PromptSyntax, parse_prompt

logger = logging.getLogger(__name__)

CHUNK_TOKENS = 75  # CLIP's 77 minus BOS and EOS
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`


@dataclass(frozen=True)
class Chunk:
    """77 token ids (BOS, 75 tokens or EOS padding, EOS) and one weight per id."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


def chunk_tokens(
    pieces: Sequence[tuple[list[int], float] | None],
    bos: int,
    eos: int,
    comma: int | None,
    backtrack: int = COMMA_BACKTRACK,
) -> list[Chunk]:
    """A1111's `tokenize_line`: token runs at a weight (None = BREAK) -> chunks of 77."""
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        pad = CHUNK_TOKENS - len(ids)
        chunks.append(Chunk((bos, *ids, *[eos] * pad, eos), (1.0, *weights, *[1.0] * pad, 1.0)))
        ids, weights, last_comma = [], [], -1

    for piece in pieces:
        if piece is None:
            close()
            continue
        tokens, weight = piece
        for token in tokens:
            if token == comma:
                last_comma = len(ids)
            elif backtrack and len(ids) == CHUNK_TOKENS and last_comma != -1:
                if len(ids) - last_comma <= backtrack:  # move the words after the comma on
                    moved_ids, moved_weights = ids[last_comma + 1 :], weights[last_comma + 1 :]
                    ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                    close()
                    ids, weights = moved_ids, moved_weights
            if len(ids) == CHUNK_TOKENS:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


@dataclass(frozen=True)
class TextEmbedding:
    """One prompt's embeddings: (1, 77 * chunks, dim) and SDXL's pooled (1, dim2) or None."""

    embeds: Any
    pooled: Any | None

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_TOKENS + 2)


@dataclass(frozen=True)
class _Slot:
    """One tokenizer + text encoder pair of a pipeline."""

    tokenizer: Any
    encoder: Any
    penultimate: bool  # SDXL reads the penultimate hidden state


def encoder_slots(pipe: Any) -> list[_Slot]:
    """The text encoders of a pipeline in diffusers' order (SDXL: CLIP-L, then CLIP-G)."""
    if hasattr(pipe, "text_encoder_2"):
        pairs = [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")]
        slots = [
            _Slot(getattr(pipe, t), getattr(pipe, e), True)
            for t, e in pairs
            if getattr(pipe, e, None) is not None
        ]
    else:
        slots = [_Slot(pipe.tokenizer, pipe.text_encoder, False)]
    if not slots or any(s.tokenizer is None or s.encoder is None for s in slots):
        raise ValueError(f"{type(pipe).__name__} has no text encoder to encode prompts with")
    return slots


class PromptEncoder:
    """Encodes prompts of one pipeline in one syntax, with a bounded cache."""

    def __init__(self, pipe: Any, syntax: PromptSyntax = "a1111", cache_size: int = 256) -> None:
        self.pipe = pipe
        self.syntax = syntax
        self.slots = encoder_slots(pipe)
        self.cache_size = cache_size
        self.adapter_key: tuple = ()  # set by whoever changes the text encoders' adapters
        self._cache: OrderedDict[tuple, TextEmbedding] = OrderedDict()

    # ---------------------------------------------------------------------- routing

    def plain_text(self, text: str) -> str | None:
        """The text for diffusers to encode itself (tags removed) when the prompt needs no
        more than that: no emphasis, no BREAK, at most 75 tokens; else None."""
        parsed = parse_prompt(text, self.syntax)
        if not parsed.is_plain:
            return None
        plain = "".join(f.text for f in parsed.fragments)  # escapes and weight-1 brackets read
        if len(self._token_ids(self.slots[0], plain)) > CHUNK_TOKENS:
            return None
        return plain

    def route(self, prompt: str, negative: str) -> tuple:
        """How a row's text goes to the pipeline: ("text",) when diffusers can encode both
        prompts itself, else ("embeds", chunks). Rows of one call must share a route: mixing
        would pad a row's embeddings to its neighbours' length and change its image."""
        if self.plain_text(prompt) is not None and self.plain_text(negative) is not None:
            return ("text",)
        return ("embeds", max(self.chunk_count(prompt), self.chunk_count(negative)))

    def chunk_count(self, text: str) -> int:
        """How many 77-token chunks `text` encodes to (tokenizing only)."""
        fragments = parse_prompt(text, self.syntax).fragments
        return max(len(self._chunks(slot, fragments)) for slot in self.slots)

    def call_kwargs(self, prompts: Sequence[str], negatives: Sequence[str]) -> dict:
        """The text arguments of one pipeline call: the plain strings (tags removed) when
        every row's route is "text", else embeddings for all of them."""
        plain = [self.plain_text(t) for t in (*prompts, *negatives)]
        if all(t is not None for t in plain):
            return {"prompt": plain[: len(prompts)], "negative_prompt": plain[len(prompts) :]}
        return self.pipeline_kwargs(prompts, negatives)

    # ---------------------------------------------------------------------- encoding

    def encode(self, text: str) -> TextEmbedding:
        """One prompt's embeddings (cached per prompt and adapter state)."""
        key = (text, self.adapter_key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        embeds = self._encode(parse_prompt(text, self.syntax).fragments)
        self._cache[key] = embeds
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds

    def pipeline_kwargs(self, prompts: Sequence[str], negatives: Sequence[str]) -> dict:
        """prompt_embeds, negative_prompt_embeds (and SDXL's pooled pair) for one call,
        every prompt padded to the call's largest chunk count."""
        import torch

        positive = [self.encode(p) for p in prompts]
        negative = [self.encode(n) for n in negatives]
        count = max(e.chunks for e in positive + negative)
        kwargs = {
            "prompt_embeds": torch.cat([self.padded(e, count) for e in positive]),
            "negative_prompt_embeds": torch.cat([self.padded(e, count) for e in negative]),
        }
        if positive[0].pooled is not None:
            kwargs["pooled_prompt_embeds"] = torch.cat([e.pooled for e in positive])
            kwargs["negative_pooled_prompt_embeds"] = torch.cat([e.pooled for e in negative])
        return kwargs

    def padded(self, embeds: TextEmbedding, chunks: int) -> Any:
        """`embeds.embeds` followed by empty chunks up to `chunks` chunks."""
        import torch

        missing = chunks - embeds.chunks
        if missing <= 0:
            return embeds.embeds
        empty = self.encode("").embeds  # one chunk: BOS, EOS, padding
        return torch.cat([embeds.embeds, empty.repeat(1, missing, 1)], dim=1)

    def _encode(self, fragments: Sequence[Fragment]) -> TextEmbedding:
        import torch

        per_slot = [self._chunks(slot, fragments) for slot in self.slots]
        count = max(len(chunks) for chunks in per_slot)
        states, pooled = [], None
        with torch.inference_mode():
            for slot, chunks in zip(self.slots, per_slot):
                chunks = chunks + [_empty_chunk(slot)] * (count - len(chunks))
                encoded = [self._encode_chunk(slot, chunk) for chunk in chunks]
                states.append(torch.cat([z for z, _ in encoded], dim=1))  # (1, 77 * n, dim)
                if pooled is None and encoded[0][1] is not None:
                    pooled = encoded[0][1]
        embeds = torch.cat(states, dim=-1) if len(states) > 1 else states[0]
        dtype = self.slots[-1].encoder.dtype
        return TextEmbedding(embeds.to(dtype), None if pooled is None else pooled.to(dtype))

    def _chunks(self, slot: _Slot, fragments: Sequence[Fragment]) -> list[Chunk]:
        pieces = [
            None if f.is_break else (self._token_ids(slot, f.text), f.weight) for f in fragments
        ]
        tokenizer = slot.tokenizer
        comma = tokenizer.get_vocab().get(",</w>")
        return chunk_tokens(pieces, tokenizer.bos_token_id, tokenizer.eos_token_id, comma)

    def _token_ids(self, slot: _Slot, text: str) -> list[int]:
        if hasattr(self.pipe, "maybe_convert_prompt"):  # textual inversion: multi-vector names
            text = self.pipe.maybe_convert_prompt(text, slot.tokenizer)
        return slot.tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]

    def _encode_chunk(self, slot: _Slot, chunk: Chunk) -> tuple[Any, Any | None]:
        """(1, 77, dim) states with emphasis, and the pooled output when the encoder has one."""
        import torch

        device = slot.encoder.device
        ids = torch.tensor([_with_padding(slot.tokenizer, chunk.ids)], device=device)
        mask = None
        if getattr(slot.encoder.config, "use_attention_mask", False):
            first_eos = chunk.ids.index(slot.tokenizer.eos_token_id)  # BOS..EOS seen, pads not
            mask = (torch.arange(ids.shape[1], device=device) <= first_eos).long().unsqueeze(0)
        output = slot.encoder(ids, attention_mask=mask, output_hidden_states=slot.penultimate)
        z = output.hidden_states[-2] if slot.penultimate else output[0]
        pooled = output[0] if output[0].ndim == 2 else None
        return apply_emphasis(z, chunk.weights), pooled


def apply_emphasis(z: Any, weights: Sequence[float]) -> Any:
    """A1111's "Original" emphasis: z * weight per token, then rescaled to z's old mean."""
    import torch

    if all(w == 1.0 for w in weights):
        return z  # multiplying by ones and by mean/mean = 1 changes nothing
    multipliers = torch.tensor(weights, device=z.device, dtype=z.dtype)
    original_mean = z.mean()
    z = z * multipliers.reshape(1, -1, 1).expand(z.shape)
    return z * (original_mean / z.mean())


def _with_padding(tokenizer: Any, ids: tuple[int, ...]) -> list[int]:
    """Positions after the first EOS get the tokenizer's pad id (SDXL's CLIP-G pads with
    `!`, not EOS), as both A1111 and diffusers' max_length padding do."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None or pad == eos:
        return list(ids)
    end = ids.index(eos)
    return [*ids[: end + 1], *[pad] * (len(ids) - end - 1)]


def _empty_chunk(slot: _Slot) -> Chunk:
    tokenizer = slot.tokenizer
    return chunk_tokens([], tokenizer.bos_token_id, tokenizer.eos_token_id, None)[0]
