"""LoRA and textual-inversion files read without a model (pure: no torch).

Everything a job can get wrong about an adapter is found here, before any model loads: a missing
file, an unknown name in a `lora_dir`, a pickled file without `allow_pickle`, a scale that is not
finite, and a LoRA or embedding made for another base model. The fit is read from the
`.safetensors` header (tensor names and shapes): a LoRA's cross-attention keys carry the width of
the text states the UNet reads (768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL), its text-encoder
keys the width of each text encoder, and a second text encoder's keys (`lora_te2_`,
`text_encoder_2.`) only exist for SDXL. Both key layouts are read: diffusers/peft
(`unet.down_blocks...to_k.lora_A.weight`) and kohya/A1111 (`lora_unet_down_blocks_..._to_k.
lora_down.weight`).

Hashes are A1111's: for `.safetensors` the sha256 of the bytes after the header (kohya's
"addnet" hash, which A1111 writes for LoRAs), for other files the sha256 of the whole file; the
short form is the first 12 hex digits (`Lora hashes: "name: 0123456789ab"`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfleet.batch.errors import ModelError
from sdfleet.batch.paths import resolve_path

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
ADAPTER_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
MAX_HEADER_BYTES = 100_000_000
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_CROSS_KEY = re.compile(r"attn2[._]to_[kv]")
_DOWN_KEY = re.compile(r"(lora_A|lora[._]down)(\.default)?\.weight$")
_TE_Q_KEY = re.compile(r"q_proj")


class AdapterFileError(ModelError, ValueError):
    """An adapter file cannot be used; the message names the file and the fix. A ModelError
    for the CLI, and a ValueError so that job-model validators report it as a field error."""


@dataclass(frozen=True)
class BaseDims:
    """What an adapter must match in a base model: the UNet's cross-attention width and the
    hidden width of each text encoder (one for SD 1.x/2.x, two for SDXL)."""

    cross_attention_dim: int | None
    text_dims: tuple[int, ...]

    @property
    def family(self) -> str:
        if len(self.text_dims) == 2:
            return "SDXL"
        return FAMILIES.get(self.cross_attention_dim or 0, f"width {self.cross_attention_dim}")


@dataclass(frozen=True)
class AdapterHeader:
    """The parts of a `.safetensors` header that say which model an adapter fits."""

    path: str
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]

    def lora_dims(self) -> tuple[set[int], dict[int, set[int]]]:
        """(cross-attention widths, {text encoder 1 or 2: widths}) read from LoRA down keys."""
        cross: set[int] = set()
        text: dict[int, set[int]] = {}
        for key, shape in self.shapes.items():
            if not _DOWN_KEY.search(key) or len(shape) < 2:
                continue
            if _CROSS_KEY.search(key):
                cross.add(shape[1])
            encoder = _text_encoder_index(key)
            if encoder and _TE_Q_KEY.search(key):
                text.setdefault(encoder, set()).add(shape[1])
        return cross, text


def _text_encoder_index(key: str) -> int:
    """1 or 2 for a text-encoder LoRA key, 0 for a UNet key."""
    if key.startswith(("lora_te2_", "text_encoder_2.")):
        return 2
    if key.startswith(("lora_te_", "lora_te1_", "text_encoder.", "te.", "te1.")):
        return 1
    return 0


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a `.safetensors` file (an 8-byte little-endian length, then that
    much JSON), read without its tensors; OSError or ValueError for a truncated or mislabelled
    file. Model components and adapter files are checked with it before anything loads."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} in a file of {size} bytes")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def read_header(path: str | Path) -> AdapterHeader:
    """Tensor names, shapes and metadata of a `.safetensors` file, reading only its header."""
    path = Path(path)
    try:
        header = safetensors_header(path)
    except (OSError, ValueError) as exc:
        raise AdapterFileError(
            f"{str(path)!r} is not a readable .safetensors file ({exc}); check that the file is "
            "complete and really is safetensors"
        ) from None
    metadata = header.pop("__metadata__", None) or {}
    shapes = {
        key: tuple(entry.get("shape", ()))
        for key, entry in header.items()
        if isinstance(entry, dict)
    }
    return AdapterHeader(str(path), shapes, {str(k): str(v) for k, v in metadata.items()})


# ------------------------------------------------------------------------------- fit


def lora_fit_problems(header: AdapterHeader, base: BaseDims, model: str) -> list[str]:
    """Why the LoRA in `header` does not fit the base model `model` (empty when it fits)."""
    if not any(_DOWN_KEY.search(key) for key in header.shapes):
        return [f"{header.path!r} holds no LoRA weights (no lora_down/lora_A tensors)"]
    cross, text = header.lora_dims()
    problems = []
    if base.cross_attention_dim and cross and cross != {base.cross_attention_dim}:
        width = sorted(cross)[0]
        problems.append(
            f"{header.path!r} is a LoRA for {FAMILIES.get(width, f'width {width}')} "
            f"(cross-attention width {width}), but model {model!r} is {base.family} "
            f"(width {base.cross_attention_dim}); use a LoRA trained for this base model"
        )
    if 2 in text and len(base.text_dims) < 2:
        problems.append(
            f"{header.path!r} has weights for a second text encoder (an SDXL LoRA), but model "
            f"{model!r} has one; use a LoRA trained for {base.family}"
        )
    for index, widths in sorted(text.items()):
        expected = base.text_dims[index - 1] if index <= len(base.text_dims) else None
        if expected and widths != {expected} and not problems:
            problems.append(
                f"{header.path!r} has text-encoder {index} weights of width {sorted(widths)[0]}, "
                f"but model {model!r}'s text encoder {index} is {expected} wide; use a LoRA "
                "trained for this base model"
            )
    return problems


def embedding_vectors(header: AdapterHeader) -> dict[str, tuple[int, int]]:
    """{"clip_l"/"clip_g"/"": (vectors, width)} of a textual-inversion `.safetensors` file."""
    found = {}
    for key, shape in header.shapes.items():
        if len(shape) not in (1, 2):
            continue
        vectors, width = (1, shape[0]) if len(shape) == 1 else shape
        slot = key if key in ("clip_l", "clip_g") else ""
        found[slot] = (vectors, width)
    return found


def embedding_fit_problems(header: AdapterHeader, base: BaseDims, model: str) -> list[str]:
    """Why a textual-inversion embedding does not fit `model` (empty when it fits)."""
    found = embedding_vectors(header)
    if not found or (len(header.shapes) > 1 and not {"clip_l", "clip_g"} & set(found)):
        return [
            f"{header.path!r} is not a textual-inversion embedding (expected one tensor, or "
            "clip_l and clip_g for SDXL)"
        ]
    if len(base.text_dims) == 2:
        widths = (found.get("clip_l", (0, 0))[1], found.get("clip_g", (0, 0))[1])
    else:
        widths = (found.get("", found.get("clip_l", (0, 0)))[1],)
    if base.text_dims and widths != base.text_dims:
        return [
            f"{header.path!r} holds embeddings of width {'/'.join(map(str, widths))}, but model "
            f"{model!r} ({base.family}) needs {'/'.join(map(str, base.text_dims))}; use an "
            "embedding trained for this base model"
        ]
    return []


# ------------------------------------------------------------------------------- files


def pickle_problems(path: str | Path, allow_pickle: bool) -> list[str]:
    """A pickled weights file (a model, adapter, ControlNet or upscaler) without
    `allow_pickle`: what to say after the file's name, with the fix."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        return [
            "is a pickled file, which can run arbitrary code when loaded; convert it to "
            ".safetensors, or set `allow_pickle: true` in the job if you trust it"
        ]
    return []


def check_adapter_path(path: str, what: str, allow_pickle: bool) -> Path:
    """An existing adapter file that may be loaded; raises AdapterFileError with the fix."""
    file = resolve_path(path)
    if file.suffix.lower() not in ADAPTER_SUFFIXES:
        raise AdapterFileError(
            f"{what} {path!r} is not a .safetensors (or, with allow_pickle, .pt/.bin/.ckpt) file"
        )
    if not file.is_file():
        raise AdapterFileError(f"{what} file {path!r} does not exist; check the path")
    for problem in pickle_problems(file, allow_pickle):
        raise AdapterFileError(f"{what} {path!r} {problem}")
    return file


def adapter_library(folder: str | Path) -> dict[str, list[Path]]:
    """Adapter files under `folder` (searched recursively, as A1111 does) by file stem."""
    library: dict[str, list[Path]] = {}
    for file in sorted(resolve_path(folder).rglob("*")):
        if file.is_file() and file.suffix.lower() in ADAPTER_SUFFIXES:
            library.setdefault(file.stem, []).append(file)
    return library


def find_by_name(name: str, library: dict[str, list[Path]], what: str, folder: str) -> Path:
    """The one file called `name` in a library; .safetensors wins over a pickled twin."""
    from sdfleet.batch.errors import suggest_name

    files = library.get(name, [])
    if not files:
        raise AdapterFileError(
            f"{what} {name!r} is not in {folder!r}{suggest_name(name, library)}; put "
            f"{name}.safetensors there or fix the name"
        )
    safe = [f for f in files if f.suffix.lower() == ".safetensors"]
    chosen = safe or files
    if len(chosen) > 1:
        shown = ", ".join(str(f) for f in chosen)
        raise AdapterFileError(f"{what} {name!r} is ambiguous in {folder!r} ({shown}); rename one")
    return chosen[0]


def check_scale(value: Any, what: str) -> float:
    """A finite LoRA scale; raises AdapterFileError naming the value."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if isinstance(value, bool) or not math.isfinite(scale):
        raise AdapterFileError(f"{what}: scale {value!r} is not a finite number; write e.g. 0.8")
    return scale


def file_hash(path: str | Path) -> str:
    """A1111's hash of an adapter file (addnet hash for .safetensors, else sha256), in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if str(path).lower().endswith(".safetensors"):
            length = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def short_hash(full: str) -> str:
    return full[:12]


def hashes_text(named_hashes: list[tuple[str, str]]) -> str:
    """`name: hash, name2: hash2` as A1111 writes `Lora hashes`/`TI hashes` (short hashes;
    colons and commas dropped from names)."""
    parts = []
    for name, full in named_hashes:
        clean = name.replace(":", "").replace(",", "")
        parts.append(f"{clean}: {short_hash(full)}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------- base models


def folder_dims(folder: str | Path) -> BaseDims | None:
    """BaseDims of a diffusers pipeline folder, from its components' config.json files."""
    folder = Path(folder)
    unet = _read_config(folder / "unet" / "config.json")
    if unet is None:
        return None
    texts = [
        _read_config(folder / name / "config.json") for name in ("text_encoder", "text_encoder_2")
    ]
    dims = tuple(int(c["hidden_size"]) for c in texts if c and "hidden_size" in c)
    cross = unet.get("cross_attention_dim")
    return BaseDims(int(cross) if isinstance(cross, int) else None, dims)


def _read_config(path: Path) -> dict | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


_CHECKPOINT_TEXT_KEYS = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",  # SD 1.x
    "cond_stage_model.model.token_embedding.weight",  # SD 2.x
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",  # SDXL
    "conditioner.embedders.1.model.token_embedding.weight",  # SDXL's second encoder
)


def checkpoint_dims(path: str | Path) -> BaseDims | None:
    """BaseDims of a single-file (LDM layout) `.safetensors` checkpoint, from its header."""
    shapes = read_header(path).shapes
    cross = next(
        (s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2),
        None,
    )
    dims = tuple(shapes[k][1] for k in _CHECKPOINT_TEXT_KEYS if len(shapes.get(k, ())) == 2)
    return BaseDims(cross, dims) if cross or dims else None
