"""Prompts and adapters of a job and its rows: checked and resolved before any model loads.

Pure (no torch). A job builds one `AdapterContext` (its prompt syntax, `lora_dir`, job-wide
LoRAs and embeddings, the base model's widths when they can be read from files); manifest
validation asks `row_prompt_issues` for each row's prompt, negative prompt and `loras` column,
and `expand_row` asks `row_loras` for the row's resolved adapter set.

A row's LoRAs are the job's `loras`, then its `loras` column, then its prompt's `<lora:...>`
tags; naming the same file again replaces the earlier weight. Names are file stems in
`lora_dir` (searched recursively, as A1111 does); an entry ending in `.safetensors` (or a
pickled suffix) is a path, relative to the manifest's folder for rows and to the job file's
folder for the job. The `loras` column holds `"name:0.8, other"` (weight 1 where none is given).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdfleet.batch.adapter_files import (
    ADAPTER_SUFFIXES,
    AdapterFileError,
    BaseDims,
    adapter_library,
    check_adapter_path,
    check_scale,
    embedding_fit_problems,
    file_hash,
    find_by_name,
    hashes_text,
    lora_fit_problems,
    read_header,
)
from sdfleet.batch.adapters import EmbeddingUse, LoraUse
from sdfleet.batch.paths import resolve_path
from sdfleet.batch.prompt_syntax import PromptSyntax, parse_prompt, prompt_problems

Issue = tuple[str, Any, str]  # (column, value, fix), as batch.manifest reports them


@dataclass(frozen=True)
class LoraEntry:
    """A LoRA as a job or row names it, before resolution."""

    ref: str  # a name in lora_dir, or a path
    te_weight: float = 1.0
    unet_weight: float = 1.0


@dataclass(frozen=True)
class AdapterContext:
    """Everything about prompts and adapters that is the same for every row of a job."""

    syntax: PromptSyntax = "a1111"
    model: str = ""
    base: BaseDims | None = None  # None: the model's widths cannot be read without loading it
    lora_dir: str | None = None
    allow_pickle: bool = False
    loras: tuple[LoraUse, ...] = ()  # the job's, resolved
    embeddings: tuple[EmbeddingUse, ...] = ()
    _library: dict = field(default_factory=dict, compare=False, repr=False)

    def library(self) -> dict[str, list[Path]]:
        if self.lora_dir and not self._library:
            self._library.update(adapter_library(self.lora_dir))
        return self._library


@functools.lru_cache(maxsize=1024)
def _hash_of(path: str, size: int, mtime_ns: int) -> str:
    return file_hash(path)


def cached_hash(path: str | Path) -> str:
    """A1111's hash of a file, computed once per file version in this process."""
    stat = os.stat(path)
    return _hash_of(str(path), stat.st_size, stat.st_mtime_ns)


# ------------------------------------------------------------------------------- resolution


def resolve_lora(entry: LoraEntry, ctx: AdapterContext, base_dir: Path | None) -> LoraUse:
    """The file of a LoRA entry, checked (exists, may load, fits the base), with its hash."""
    path = _lora_path(entry.ref, ctx, base_dir)
    if path.suffix.lower() == ".safetensors" and ctx.base is not None:
        problems = lora_fit_problems(_header(str(path)), ctx.base, ctx.model)
        if problems:
            raise AdapterFileError(problems[0])
    name = Path(entry.ref).stem if is_path(entry.ref) else entry.ref
    return LoraUse(name, str(path), cached_hash(path), entry.te_weight, entry.unet_weight)


def _lora_path(ref: str, ctx: AdapterContext, base_dir: Path | None) -> Path:
    if is_path(ref):
        candidate = resolve_path(ref, base_dir)
        return check_adapter_path(str(candidate), "LoRA", ctx.allow_pickle).resolve()
    if not ctx.lora_dir:
        raise AdapterFileError(
            f"LoRA {ref!r} is a name, but the job sets no lora_dir; set `lora_dir:` to the "
            "folder holding it, or give a path ending in .safetensors"
        )
    path = find_by_name(ref, ctx.library(), "LoRA", ctx.lora_dir)
    return check_adapter_path(str(path), "LoRA", ctx.allow_pickle).resolve()


def is_path(ref: str) -> bool:
    return ref.lower().endswith(ADAPTER_SUFFIXES) or "/" in ref or os.sep in ref


@functools.lru_cache(maxsize=256)
def _header(path: str):
    return read_header(path)


def check_embedding(path: Path, name: str, ctx: AdapterContext) -> EmbeddingUse:
    """A textual-inversion file, checked like a LoRA, called by `name` in prompts."""
    file = check_adapter_path(str(path), "embedding", ctx.allow_pickle).resolve()
    if file.suffix.lower() == ".safetensors" and ctx.base is not None:
        problems = embedding_fit_problems(_header(str(file)), ctx.base, ctx.model)
        if problems:
            raise AdapterFileError(problems[0])
    if not name or any(c.isspace() for c in name) or name != name.strip("()[]<>:,\\"):
        raise AdapterFileError(
            f"embedding name {name!r} must be one word without brackets; rename the file"
        )
    return EmbeddingUse(name, str(file), cached_hash(file))


def parse_lora_column(value: Any) -> list[LoraEntry]:
    """A row's `loras` value: "name:0.8, other" (or a list of such strings) -> entries."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(i, str) for i in items):
        raise AdapterFileError(
            f"loras {value!r} must be text like 'name:0.8, other' (or a list of such strings)"
        )
    entries = []
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            ref, weights = _split_weights(part)
            if _split_weights(ref)[1]:
                raise AdapterFileError(
                    f"loras {part!r}: write name:weight or name:te_weight:unet_weight"
                )
            scales = [check_scale(w, f"loras {part!r}") for w in weights] or [1.0]
            entries.append(LoraEntry(ref, scales[0], scales[-1]))
    return entries


def _split_weights(part: str) -> tuple[str, list[str]]:
    """ "name:0.8" -> ("name", ["0.8"]); "name:1:0.5" -> text encoder 1, UNet 0.5. A part after
    a colon holding a path separator belongs to a path (C:\\..., s3://...), not a weight."""
    ref, weights = part, []
    while len(weights) < 2:
        head, sep, tail = ref.rpartition(":")
        if not sep or not head or "/" in tail or "\\" in tail:
            break
        ref, weights = head, [tail.strip(), *weights]
    return ref.strip(), weights


def merged(uses: Sequence[LoraUse]) -> tuple[LoraUse, ...]:
    """One use per file: a later one replaces an earlier one's weights."""
    by_file: dict[str, LoraUse] = {}
    for use in uses:
        by_file.pop(use.path, None)
        by_file[use.path] = use
    return tuple(by_file.values())


def row_loras(
    prompt: str, column: Any, ctx: AdapterContext, base_dir: Path | None = None
) -> tuple[LoraUse, ...]:
    """The adapter set of a row (see the module docstring); the row must have passed
    `row_prompt_issues`."""
    entries = parse_lora_column(column)
    tags = parse_prompt(prompt, ctx.syntax).loras
    entries += [LoraEntry(t.name, t.te_weight, t.unet_weight) for t in tags]
    return merged([*ctx.loras, *(resolve_lora(e, ctx, base_dir) for e in entries)])


# ------------------------------------------------------------------------------- row checks


def row_prompt_issues(
    prompt: Any, negative: Any, column: Any, ctx: AdapterContext, base_dir: Path | None = None
) -> list[Issue]:
    """Problems of a row's prompt, negative prompt and `loras` column, one per column."""
    issues: list[Issue] = []
    if isinstance(prompt, str):
        issues += [("prompt", prompt, p) for p in prompt_problems(prompt, ctx.syntax)[:1]]
    if isinstance(negative, str):
        found = prompt_problems(negative, ctx.syntax, allow_loras=False)
        issues += [("negative_prompt", negative, p) for p in found[:1]]
    if issues:
        return issues
    try:
        for entry in parse_lora_column(column):
            resolve_lora(entry, ctx, base_dir)
    except AdapterFileError as exc:
        issues.append(("loras", column, str(exc)))
    tags = parse_prompt(prompt, ctx.syntax).loras if isinstance(prompt, str) else ()
    for tag in tags:
        try:
            resolve_lora(LoraEntry(tag.name, tag.te_weight, tag.unet_weight), ctx, base_dir)
        except AdapterFileError as exc:
            issues.append(("prompt", tag.tag, str(exc)))
            break
    return issues


# ------------------------------------------------------------------------------- job level


def job_loras(entries: Sequence[LoraEntry], ctx: AdapterContext, base_dir: Path | None):
    """The job's `loras:` resolved; a ConfigError names `loras[i]` and the fix."""
    from sdfleet.batch.errors import ConfigError

    uses = []
    for index, entry in enumerate(entries):
        try:
            uses.append(resolve_lora(entry, ctx, base_dir))
        except AdapterFileError as exc:
            raise ConfigError(f"loras[{index}]: {exc}") from None
    return merged(uses)


def job_embeddings(
    refs: Sequence[str], folder: str | None, ctx: AdapterContext, base_dir: Path | None
) -> tuple[EmbeddingUse, ...]:
    """The job's `embeddings:` (paths, or names in `embedding_dir`) and every file in
    `embedding_dir` (A1111 loads its whole embeddings folder), each called by its file stem."""
    from sdfleet.batch.errors import ConfigError

    library = adapter_library(folder) if folder else {}
    chosen: dict[str, Path] = {}
    for index, ref in enumerate(refs):
        try:
            if is_path(ref):
                path = resolve_path(ref, base_dir)
            elif folder:
                path = find_by_name(ref, library, "embedding", folder)
            else:
                raise AdapterFileError(
                    f"embedding {ref!r} is a name, but the job sets no embedding_dir; set it, "
                    "or give a path ending in .safetensors"
                )
            chosen[path.stem] = path
        except AdapterFileError as exc:
            raise ConfigError(f"embeddings[{index}]: {exc}") from None
    for name, files in library.items():
        chosen.setdefault(name, files[0])
    uses = []
    for name, path in sorted(chosen.items()):
        try:
            uses.append(check_embedding(path, name, ctx))
        except AdapterFileError as exc:
            raise ConfigError(f"embeddings: {exc}") from None
    return tuple(uses)


def used_embeddings(prompt: str, negative: str, ctx: AdapterContext) -> tuple[EmbeddingUse, ...]:
    """The job's embeddings whose word occurs in the prompt or negative prompt (what A1111
    lists as `TI hashes`)."""
    import re

    text = f"{prompt}\n{negative}"
    return tuple(
        use for use in ctx.embeddings if re.search(rf"(?<!\w){re.escape(use.name)}(?!\w)", text)
    )


def lora_column_text(uses: Sequence[LoraUse]) -> str | None:
    """A LoRA set as the `loras` column writes it: `name:w` (`name:te:unet` where they differ)."""
    parts = [
        f"{u.name}:{u.unet_weight:g}"
        if u.te_weight == u.unet_weight
        else f"{u.name}:{u.te_weight:g}:{u.unet_weight:g}"
        for u in uses
    ]
    return ", ".join(parts) or None


def adapter_params(loras: Sequence[LoraUse], embeddings: Sequence[EmbeddingUse]) -> dict:
    """What a result row and its infotext record of a row's adapters (None where it has none):
    the LoRA set in the `loras` column's form, and A1111's `Lora hashes` / `TI hashes`."""
    lora_hashes = hashes_text([(u.name, u.sha256) for u in loras])
    ti_hashes = hashes_text([(u.name, u.sha256) for u in embeddings])
    return {
        "loras": lora_column_text(loras),
        "lora_hashes": lora_hashes or None,
        "ti_hashes": ti_hashes or None,
    }
