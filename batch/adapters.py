"""LoRA and textual inversion on a loaded pipeline, through diffusers' own loaders (peft backend).

- `LoraUse` / `EmbeddingUse`: what a row or job asks for, resolved and hashed at validation
  (`batch.adapter_files`), so a replica only loads.
- `AdapterSlots`: one per replica. A LoRA file is loaded once (`load_lora_weights` under an
  adapter name made from its hash) and kept, at most `max_loaded` at a time (the least recently
  used one is deleted first). `activate` turns on exactly a row's set with `set_adapters` (in a
  canonical order, so the sum of LoRA deltas is the same whatever was loaded before) or turns
  LoRA off, and does nothing when that set is already active: rows are grouped by adapter set,
  so a group pays for one switch. Inactive adapters take no part in a forward pass, so an image
  depends only on its row.
- Both diffusers/peft-format and kohya/A1111-format state dicts go to `load_lora_weights`, which
  converts kohya keys itself. Pickled files are read with `torch.load(weights_only=True)`, and
  only reach here when the job allows pickles (checked at validation).
- `load_embeddings`: textual inversion via `load_textual_inversion`, for A1111's `.pt`
  (`string_to_param`), its `.safetensors` (`emb_params`), diffusers' one-key files, and SDXL's
  `clip_l`/`clip_g` pairs (one token in each text encoder).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sdfleet.batch.adapter_files import short_hash
from sdfleet.batch.errors import ModelError

logger = logging.getLogger(__name__)

MAX_LOADED_LORAS = 8


@dataclass(frozen=True)
class LoraUse:
    """One LoRA at a text-encoder and a UNet weight; `name` is how the user called it."""

    name: str
    path: str
    sha256: str
    te_weight: float = 1.0
    unet_weight: float = 1.0

    @property
    def adapter_name(self) -> str:
        return f"lora_{self.sha256[:16]}"

    @property
    def short_hash(self) -> str:
        return short_hash(self.sha256)


@dataclass(frozen=True)
class EmbeddingUse:
    """A textual-inversion embedding and the word that calls it in prompts."""

    name: str
    path: str
    sha256: str


def adapter_key(loras: tuple[LoraUse, ...]) -> tuple:
    """What makes two adapter sets the same: files and weights, in canonical order."""
    return tuple(sorted((u.adapter_name, u.te_weight, u.unet_weight) for u in loras))


def read_state_dict(path: str) -> dict[str, Any]:
    """A file's tensors: safetensors, or a pickled file read with weights_only."""
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


class AdapterSlots:
    """The LoRA adapters of one replica's pipeline: loaded once, kept, switched per group."""

    def __init__(self, pipe: Any, max_loaded: int = MAX_LOADED_LORAS) -> None:
        self.pipe = pipe
        self.max_loaded = max(1, max_loaded)
        self._loaded: OrderedDict[str, LoraUse] = OrderedDict()
        self._active: tuple | None = ()  # () = LoRA off; None = unknown
        self.loads = 0  # files loaded so far
        self.switches = 0  # changes of the active set (the benchmark reads both)

    @property
    def active_key(self) -> tuple:
        return self._active or ()

    def activate(self, loras: tuple[LoraUse, ...]) -> tuple:
        """Make exactly `loras` active (none: LoRA off); returns the adapter key."""
        key = adapter_key(loras)
        if key == self._active:
            return key
        if len(loras) > self.max_loaded:
            raise ModelError(
                f"{len(loras)} LoRAs in one row, but a replica keeps at most {self.max_loaded}"
            )
        for use in loras:
            self._ensure_loaded(use, keep={u.adapter_name for u in loras})
        if not loras:
            if self._loaded:
                self.pipe.disable_lora()
        else:
            ordered = sorted(loras, key=lambda u: u.adapter_name)
            self.pipe.enable_lora()
            self.pipe.set_adapters(
                [u.adapter_name for u in ordered], [self._weights(u) for u in ordered]
            )
        self._active = key
        self.switches += 1
        return key

    def _weights(self, use: LoraUse) -> float | dict[str, float]:
        if use.te_weight == use.unet_weight:
            return use.unet_weight
        modules = getattr(self.pipe, "_lora_loadable_modules", ["unet", "text_encoder"])
        return {
            m: use.unet_weight if m in ("unet", "transformer") else use.te_weight for m in modules
        }

    def _ensure_loaded(self, use: LoraUse, keep: set[str]) -> None:
        name = use.adapter_name
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        while len(self._loaded) >= self.max_loaded:
            evict = next(n for n in self._loaded if n not in keep)
            self.pipe.delete_adapters(evict)
            del self._loaded[evict]
            logger.info("LoRA %s unloaded (at most %d kept)", evict, self.max_loaded)
        try:
            self.pipe.load_lora_weights(read_state_dict(use.path), adapter_name=name)
        except Exception as exc:  # diffusers and peft fail in many ways on a bad file
            self._active = None  # a half-loaded adapter may have changed the active set
            first_line = (str(exc).splitlines() or [""])[0][:300]
            raise ModelError(
                f"LoRA {use.name!r} ({use.path}) could not be loaded into "
                f"{type(self.pipe).__name__}: {type(exc).__name__}: {first_line}; check that it "
                "is a LoRA for this base model"
            ) from exc
        self._loaded[name] = use
        self.loads += 1
        logger.info("LoRA %r loaded from %s as %s", use.name, use.path, name)


def load_embeddings(pipe: Any, embeddings: tuple[EmbeddingUse, ...]) -> None:
    """Add each embedding's word to the pipeline's tokenizer(s) and text encoder(s)."""
    for use in embeddings:
        state = read_state_dict(use.path)
        try:
            for tensor, tokenizer, encoder in _embedding_targets(pipe, state):
                pipe.load_textual_inversion(
                    tensor, token=use.name, tokenizer=tokenizer, text_encoder=encoder
                )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"embedding {use.name!r} ({use.path}) could not be loaded: "
                f"{str(exc).splitlines()[0][:300]}; check that it was trained for this base "
                "model and that its name is not already a word of the tokenizer"
            ) from exc
        logger.info("embedding %r loaded from %s", use.name, use.path)


def _embedding_targets(pipe: Any, state: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    """(vectors (n, dim), tokenizer, text encoder) for each text encoder the file feeds."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return [
            (state["clip_l"], pipe.tokenizer, pipe.text_encoder),
            (state["clip_g"], pipe.tokenizer_2, pipe.text_encoder_2),
        ]
    return [(embedding_tensor(state), pipe.tokenizer, pipe.text_encoder)]


def embedding_tensor(state: dict[str, Any]) -> Any:
    """The vectors of an SD 1.x/2.x embedding file in any of the usual layouts."""
    if "string_to_param" in state:  # A1111 .pt
        return state["string_to_param"]["*"]
    if "emb_params" in state:  # A1111 .safetensors
        return state["emb_params"]
    tensors = [v for v in state.values() if hasattr(v, "shape")]
    if len(tensors) != 1:
        raise KeyError(f"expected one tensor, found keys {sorted(state)[:5]}")
    return tensors[0]
