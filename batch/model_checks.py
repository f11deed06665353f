"""What would stop a model from loading, found on the driver without loading it.

`check_model_files` runs where the job is checked (`sdfleet validate`, and `run` before any
replica starts), for both executors: on Ray a model that cannot load fails inside every
actor, after Ray's restarts, so what can be known from the files is known here first, with
the same message the local executor prints.

- a diffusers folder: every component model_index.json names has its folder and config, and
  each model component has weights that load without pickle (unless ``allow_pickle``);
- a hub id: in the local Hugging Face cache, or (hub reachable) present on the hub; offline
  and not cached is refused at once, with the fix.

Pure: the standard library (huggingface_hub, for a hub id only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sdfleet.batch.errors import ModelError
from sdfleet.batch.models import PICKLE_SUFFIXES, ModelSpec, resolve_model_source

HUB_TIMEOUT_S = 10.0
_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def check_model_files(spec: ModelSpec) -> None:
    """ModelError (naming the `model:` value, what is missing and the fix) for a model that
    would fail to load; `resolve_model_source`'s checks first."""
    source = resolve_model_source(spec)
    if source.kind == "folder":
        check_pipeline_folder(Path(source.location), spec.model, spec.allow_pickle)
    elif source.kind == "hub":
        check_hub_model(source.location, spec.revision)


def check_pipeline_folder(folder: Path, name: str, allow_pickle: bool) -> None:
    """Each component of model_index.json: its folder, its config file, loadable weights."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    for component, (library, class_name) in _components(index):
        where = folder / component
        config = _config_names(class_name)
        if not where.is_dir() or not any((where / c).is_file() for c in config):
            missing = f"{component}/" if not where.is_dir() else f"{component}/{config[0]}"
            raise ModelError(
                f"model: folder {name!r} is missing {missing} (model_index.json names "
                f"{component}: {library}.{class_name}); copy the complete pipeline folder, or "
                "re-save it with save_pretrained."
            )
        if config == ("config.json",):  # a model: it has weights
            _check_weights(where, name, component, allow_pickle)


def _components(index: dict[str, Any]) -> list[tuple[str, tuple[str, str]]]:
    """(name, (library, class)) of every component the pipeline loads (null ones skipped)."""
    found = []
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if isinstance(value[0], str) and isinstance(value[1], str):
            found.append((key, (value[0], value[1])))
    return found


def _config_names(class_name: str) -> tuple[str, ...]:
    """The file(s) a component's `from_pretrained` reads first; any one will do."""
    if class_name.endswith("Scheduler"):
        return ("scheduler_config.json",)
    if "Tokenizer" in class_name:
        return ("tokenizer_config.json", "tokenizer.json", "vocab.json")
    # transformers without torchvision saves CLIPImageProcessorPil (its PIL fallback class)
    if class_name.removesuffix("Pil").endswith(("FeatureExtractor", "ImageProcessor", "Processor")):
        return ("preprocessor_config.json",)
    return ("config.json",)


def _check_weights(where: Path, name: str, component: str, allow_pickle: bool) -> None:
    files = [p.name for p in where.iterdir() if p.is_file()]
    safe = [f for f in files if f.endswith(".safetensors")]
    pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if safe or (pickled and allow_pickle):
        return
    if pickled:
        raise ModelError(
            f"model: folder {name!r}: {component}/ has no .safetensors weights, only pickled "
            f"{', '.join(sorted(pickled)[:3])}, which can run code when loaded. Convert them "
            "to .safetensors, or set `allow_pickle: true` in the job if you trust the files."
        )
    raise ModelError(
        f"model: folder {name!r}: {component}/ holds no weights (no .safetensors file); copy "
        "the complete pipeline folder, or re-save it with save_pretrained."
    )


def check_hub_model(repo_id: str, revision: str | None = None) -> None:
    """A hub id loads from the local cache, or from the hub when it can be reached."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _OFFLINE_VALUES:
        raise _not_cached(repo_id, "HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - unreachable, unknown repo, gated...: one answer
        first = (str(exc).splitlines() or [""])[0][:200]
        raise _not_cached(repo_id, f"the hub said {type(exc).__name__}: {first}") from None


def _not_cached(repo_id: str, why: str) -> ModelError:
    return ModelError(
        f"model: hub id {repo_id!r} is not in the local Hugging Face cache and cannot be "
        f"fetched ({why}). Point `model:` at a local diffusers folder or a .safetensors "
        f"file, or download it where the hub is reachable (`hf download {repo_id}`) and copy "
        "the cache (HF_HOME) here."
    )
