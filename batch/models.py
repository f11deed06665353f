"""Resolve `model:` to a source and load it as diffusers txt2img + img2img pipelines.

1. `model_spec`: a job's model fields (batch or animation) -> the `ModelSpec` the loader takes.
2. `resolve_model_source` is pure (no torch) so jobs fail before anything loads.
3. `load_model`, the one loader of batch replicas and animation actors: `load_pipelines` through
   one path (`from_pretrained` for folders, builtins included, and hub ids; `from_single_file` for
   `.safetensors`/`.ckpt` checkpoints), then on a CPU the torch thread count pinned and recorded.

Failure policy: anything that cannot load is a `ModelError` naming the `model:` value and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from sdfleet.batch.adapter_files import PICKLE_SUFFIXES, pickle_problems, safetensors_header
from sdfleet.batch.errors import ModelError
from sdfleet.batch.paths import is_uri, resolve_path

logger = logging.getLogger(__name__)

BUILTINS = (
    "builtin:tiny",
    "builtin:tiny-sdxl",
    "builtin:tiny-sdxl-refiner",
    "builtin:shapes",
    "builtin:null",
)
# What a builtin model was made for, where a job leaves it unset (a job's value always wins):
# builtin:shapes draws 64 px pictures and over-guides at the usual 7.5 (docs/SHAPES.md).
RECOMMENDED_SETTINGS = {"builtin:shapes": {"guidance_scale": 3.0, "width": 64, "height": 64}}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """What a job says about its model; the replica's only input besides rows. The scheduler is
    not part of it: it is chosen per call (`batch.sampler`), on the same loaded weights."""

    model: str = "builtin:tiny"
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: float16 on cuda, float32 elsewhere
    allow_pickle: bool = False
    model_config: str | None = None  # single-file only: a local diffusers folder of configs
    revision: str | None = None
    prompt_syntax: str = "a1111"  # how prompts are read (`batch.prompt_syntax`)
    embeddings: tuple = ()  # `batch.adapters.EmbeddingUse`s loaded into the text encoders
    safety_checker: bool = True  # False drops the model's own safety checker, if it has one
    refiner: str | None = None  # an SDXL refiner model, run from `refiner_switch` of the steps
    refiner_switch: float = 0.8
    controlnets: tuple = ()  # `batch.controlnets.ControlNetUse`s, loaded beside the model
    hires: Any = None  # `batch.hires.HiresFix`: A1111's hires fix for txt2img rows
    upscale: Any = None  # `batch.hires.UpscaleStage`: every image through an upscaler model


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["builtin", "folder", "single_file", "hub"]
    location: str


class ModelFields(Protocol):
    """The fields both job kinds use to name their model (a batch job also has model_config)."""

    model: str
    device: str | None
    dtype: str | None
    allow_pickle: bool


def recommended_settings(model: Any) -> dict[str, float]:
    """`RECOMMENDED_SETTINGS` of `model` (none for a model sdfleet did not make)."""
    return dict(RECOMMENDED_SETTINGS.get(model, {})) if isinstance(model, str) else {}


def model_spec(
    job: ModelFields, base_dir: Path | None = None, embeddings: tuple | None = None
) -> ModelSpec:
    """A job's model fields as the loader's `ModelSpec`, for batch and animation jobs alike:
    paths relative to the job file's folder (`base_dir`) made absolute, device "auto" = None.
    `embeddings`: the job's textual inversions, resolved; None resolves the job's own
    (`batch.prompt_options.PromptOptions.adapters`)."""
    if embeddings is None:
        uses = getattr(job, "uses_adapters", None)
        adapters = job.adapters(base_dir) if uses and uses() else None  # type: ignore[attr-defined]
        embeddings = adapters.embeddings if adapters is not None else ()
    config = getattr(job, "model_config_path", None)  # batch jobs only
    refiner = getattr(job, "refiner", None)
    refiner_model = refiner.model if refiner is not None else None
    controlnets = tuple(unit.use() for unit in getattr(job, "controlnets", ()))
    if base_dir is not None:
        model, config = relative_to(job.model, base_dir), relative_to(config, base_dir)
        refiner_model = relative_to(refiner_model, base_dir)
        controlnets = tuple(replace(u, model=relative_to(u.model, base_dir)) for u in controlnets)
    else:
        model = job.model
    return ModelSpec(
        model=model,
        device=None if job.device in (None, "auto") else job.device,
        dtype=job.dtype,
        allow_pickle=job.allow_pickle,
        model_config=config,
        prompt_syntax=getattr(job, "prompt_syntax", "a1111"),
        embeddings=tuple(embeddings),
        safety_checker=getattr(job, "safety_checker", True),
        refiner=refiner_model,
        refiner_switch=refiner.switch_at if refiner is not None else 0.8,
        controlnets=controlnets,
        hires=job.hires.use(base_dir) if getattr(job, "hires", None) else None,
        upscale=job.upscale.use(base_dir) if getattr(job, "upscale", None) else None,
    )


def relative_to(name: str | None, base_dir: Path) -> str | None:
    """A model path written relative to the job file, made absolute when it exists there;
    builtins, hub ids and absolute paths are returned unchanged."""
    if not name or name.startswith("builtin:") or is_uri(name) or Path(name).is_absolute():
        return name
    candidate = resolve_path(name, base_dir)
    return str(candidate.resolve()) if candidate.exists() else name


def resolve_model_source(spec: ModelSpec) -> ModelSource:
    """Classify `spec.model` and refuse what must not load (its ControlNets too); raises
    ModelError with the fix."""
    source = _model_source(spec)
    if spec.controlnets:
        from sdfleet.batch.controlnets import check_controlnet_files

        base = base_unet_config(source)
        check_controlnet_files(spec.controlnets, base, spec.allow_pickle, PICKLE_SUFFIXES)
    return source


def base_unet_config(source: ModelSource) -> dict | None:
    """The model's UNet config read from its folder without loading it; None where it has
    none there (a single file, a hub id: compared once loaded)."""
    if source.location == "builtin:null":
        raise ModelError("controlnets: builtin:null has no UNet to control; use builtin:tiny")
    if source.kind == "builtin":
        folder = builtin_folder(source.location)
    elif source.kind == "folder":
        folder = Path(source.location)
    else:
        return None
    try:
        return json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a UNet model, or unreadable: the load says what is wrong


def _model_source(spec: ModelSpec) -> ModelSource:
    if spec.model_config and not resolve_path(spec.model_config).is_dir():
        raise ModelError(
            f"model_config: {spec.model_config!r} is not a folder; give a local diffusers "
            "folder of the checkpoint's architecture (the one holding model_index.json)."
        )
    name = spec.model
    if name.startswith("builtin:"):
        if name not in BUILTINS:
            raise ModelError(
                f"model: unknown builtin {name!r}; choose one of {', '.join(BUILTINS)}"
            )
        return ModelSource("builtin", name)
    path = resolve_path(name)
    for problem in pickle_problems(path, spec.allow_pickle):
        raise ModelError(f"model: {name!r} {problem}")
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ModelError(
                f"model: folder {name!r} has no model_index.json, so it is not a diffusers "
                "pipeline folder; point at the folder that holds model_index.json, or at a "
                "single .safetensors checkpoint."
            )
        check_model_index(path / "model_index.json")
        return ModelSource("folder", str(path))
    if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        if not path.is_file():
            raise ModelError(f"model: checkpoint file {name!r} does not exist; check the path.")
        if path.suffix.lower() == ".safetensors":
            check_safetensors_header(path)
        return ModelSource("single_file", str(path))
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return ModelSource("hub", name)
    raise ModelError(
        f"model: {name!r} is neither a builtin, an existing folder, a checkpoint file nor a hub "
        "id like 'org/name'; check the path."
    )


def check_model_index(path: Path) -> None:
    """model_index.json is a JSON object naming the pipeline class (what from_pretrained reads
    first); anything else fails before a model loads, naming the file."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model: {str(path)!r} cannot be read as JSON ({exc}); re-save the pipeline with "
            "save_pretrained, or fix the file."
        ) from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ModelError(
            f'model: {str(path)!r} names no pipeline class (no "_class_name"); re-save the '
            "pipeline with save_pretrained, or point at the folder of a complete pipeline."
        )


def check_safetensors_header(path: Path) -> None:
    """A .safetensors file starts with an 8-byte little-endian length and that much JSON;
    a truncated or mislabelled file fails here, before a model loads."""
    try:
        safetensors_header(path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model: {str(path)!r} is not a readable .safetensors file ({exc}); check that "
            "the download is complete and the file really is safetensors."
        ) from None


def choose_device_dtype(spec: ModelSpec) -> tuple[Any, Any]:
    """fp32 on CPU, fp16 on CUDA, unless the job says otherwise."""
    import torch

    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if spec.dtype is None:
        return device, torch.float16 if device.type == "cuda" else torch.float32
    if spec.dtype not in names:
        raise ModelError(f"dtype: unknown {spec.dtype!r}; choose one of {', '.join(names)}")
    return device, names[spec.dtype]


@dataclass
class Pipelines:
    """The loaded pipelines of one replica; img2img shares every component with txt2img."""

    txt2img: Any
    img2img: Any
    device: Any
    dtype: Any
    name: str
    cpu_threads: int | None = None  # torch threads on a CPU (set by `load_model`)
    refiner: Any = None  # an SDXL img2img refiner pipeline (`ModelSpec.refiner`)
    refiner_switch: float = 0.8
    prompt_syntax: str = "a1111"  # how the sampler reads prompts (`ModelSpec.prompt_syntax`)
    adapter_slots: Any = None  # `batch.adapters.AdapterSlots` of txt2img, made on first LoRA use
    controlnet: Any = None  # a ControlNetModel, or a MultiControlNetModel of several, or None


def load_model(spec: ModelSpec, cpu_threads: int | None = None) -> Pipelines:
    """The model of one replica or animation actor: `load_pipelines`, and on a CPU the torch
    thread count pinned (`cpu_threads`, default every core) and recorded in `Pipelines`.

    CPU kernels split work by thread count, which changes float rounding, so the thread count is
    part of what makes an image reproducible on CPU. Every core is the default also inside Ray
    workers (where OMP_NUM_THREADS would say 1).
    """
    import torch

    pipes = load_pipelines(spec)
    if pipes.device.type == "cpu":
        torch.set_num_threads(cpu_threads or os.cpu_count() or 1)
        pipes.cpu_threads = torch.get_num_threads()
    return pipes


def load_pipelines(spec: ModelSpec) -> Pipelines:
    """Load the model once and derive the img2img pipeline from it (shared weights)."""
    from diffusers import AutoPipelineForImage2Image

    source = resolve_model_source(spec)
    device, dtype = choose_device_dtype(spec)
    quiet_loading()
    if source.location == "builtin:null":
        from sdfleet.batch.null_model import NullPipeline

        pipe = NullPipeline()
        return Pipelines(pipe, pipe, device, dtype, spec.model)
    txt2img = _load_txt2img(source, spec, dtype)
    txt2img.to(device)
    txt2img.set_progress_bar_config(disable=True)
    prepare_pipeline(txt2img, spec)
    img2img = AutoPipelineForImage2Image.from_pipe(txt2img)
    img2img.set_progress_bar_config(disable=True)
    refiner = load_refiner(spec, device, dtype) if spec.refiner else None
    controlnet = load_controlnets(spec, txt2img.unet.config, device, dtype)
    return Pipelines(
        txt2img,
        img2img,
        device,
        dtype,
        spec.model,
        refiner=refiner,
        refiner_switch=spec.refiner_switch,
        prompt_syntax=spec.prompt_syntax,
        controlnet=controlnet,
    )


def load_controlnets(spec: ModelSpec, unet_config: Any, device: Any, dtype: Any) -> Any:
    """The job's ControlNets, through the loader of every other folder (safetensors unless
    allow_pickle), checked against the loaded UNet; several as one MultiControlNetModel."""
    if not spec.controlnets:
        return None
    from diffusers.models.controlnets import MultiControlNetModel

    from sdfleet.batch.controlnets import check_fits_base

    loaded = []
    for index, unit in enumerate(spec.controlnets):
        try:
            model = _from_pretrained(unit.model, spec, dtype, True, auto="ControlNetModel")
        except ModelError as exc:
            raise ModelError(f"controlnets[{index}].{exc}") from exc
        check_fits_base(dict(model.config), dict(unet_config), unit.model, index)
        loaded.append(model.to(device))
    return loaded[0] if len(loaded) == 1 else MultiControlNetModel(loaded)


def prepare_pipeline(pipe: Any, spec: ModelSpec) -> None:
    """The job's textual inversions loaded; the model's safety checker dropped if asked."""
    from sdfleet.batch.adapters import load_embeddings

    if not spec.safety_checker and getattr(pipe, "safety_checker", None) is not None:
        pipe.register_modules(safety_checker=None)
        logger.info("model %s: its safety checker is off (safety_checker: false)", spec.model)
    load_embeddings(pipe, spec.embeddings)


def load_refiner(spec: ModelSpec, device: Any, dtype: Any) -> Any:
    """The refiner as an img2img pipeline (SDXL's refiner conditions on an aesthetic score, a
    setting only its img2img pipeline class reads)."""
    from diffusers import AutoPipelineForImage2Image

    refiner_spec = ModelSpec(
        model=str(spec.refiner), allow_pickle=spec.allow_pickle, safety_checker=False
    )
    source = resolve_model_source(refiner_spec)
    if source.kind == "single_file":
        loaded = _from_single_file(source.location, refiner_spec, dtype)
        pipe = AutoPipelineForImage2Image.from_pipe(loaded)
    else:  # a hub refiner must be in the local cache
        where = builtin_folder(source.location) if source.kind == "builtin" else source.location
        pipe = _from_pretrained(str(where), refiner_spec, dtype, True, IMG2IMG)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def builtin_folder(name: str) -> Path:
    """The diffusers folder of a builtin model, built on first use."""
    from sdfleet.batch.shapes import shapes_model_dir
    from sdfleet.batch.tiny import tiny_model_dir
    from sdfleet.batch.tiny_sdxl import tiny_sdxl_dir, tiny_sdxl_refiner_dir

    folders = {
        "builtin:tiny": tiny_model_dir,
        "builtin:tiny-sdxl": tiny_sdxl_dir,
        "builtin:tiny-sdxl-refiner": tiny_sdxl_refiner_dir,
        "builtin:shapes": shapes_model_dir,
    }
    if name not in folders:
        raise ModelError(f"model: {name!r} has no folder; choose one of {', '.join(folders)}")
    return folders[name]()


def quiet_loading() -> None:
    """No per-component progress bars from diffusers/transformers inside replicas."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def _load_txt2img(source: ModelSource, spec: ModelSpec, dtype: Any):
    if source.kind == "builtin":
        return _from_pretrained(str(builtin_folder(source.location)), spec, dtype, True)
    if source.kind == "folder":
        return _from_pretrained(source.location, spec, dtype, local_only=True)
    if source.kind == "single_file":
        return _from_single_file(source.location, spec, dtype)
    return _from_hub(source.location, spec, dtype)


TXT2IMG, IMG2IMG = "AutoPipelineForText2Image", "AutoPipelineForImage2Image"


def _from_pretrained(
    location: str, spec: ModelSpec, dtype: Any, local_only: bool, auto: str = TXT2IMG
):
    import diffusers

    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local_only}
    if not spec.allow_pickle:
        kwargs["use_safetensors"] = True
    if spec.revision:
        kwargs["revision"] = spec.revision
    try:
        return getattr(diffusers, auto).from_pretrained(location, **kwargs)
    except Exception as exc:  # a broken folder fails in many ways inside diffusers
        pickled_only = not any(Path(location).rglob("*.safetensors"))  # a hub id: none here
        if "safetensors" in str(exc) and not spec.allow_pickle and pickled_only:
            raise ModelError(
                f"model: {location!r} has no .safetensors weights (only pickled .bin/.ckpt). "
                "Convert them, or set `allow_pickle: true` if you trust the files."
            ) from exc
        if not Path(location).is_dir():
            raise  # a hub id: `_from_hub` says what to do
        raise _folder_error(location, exc) from exc


def _folder_error(location: str, exc: Exception) -> ModelError:
    return ModelError(
        f"model: the diffusers folder {location!r} could not be loaded ({type(exc).__name__}: "
        f"{_first_line(exc)[:300]}); check that every component folder named in "
        "model_index.json is complete, or re-save the pipeline with save_pretrained."
    )


def _from_hub(repo_id: str, spec: ModelSpec, dtype: Any):
    """Use the local HF cache first; go online only if allowed, and fail fast with the fix."""
    try:
        return _from_pretrained(repo_id, spec, dtype, local_only=True)
    except (OSError, ValueError) as cached_exc:
        if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
            raise _offline_error(repo_id, cached_exc) from cached_exc
    try:
        return _from_pretrained(repo_id, spec, dtype, local_only=False)
    except Exception as exc:  # network errors come in many types; all mean the same here
        raise _offline_error(repo_id, exc) from exc


def _offline_error(repo_id: str, exc: Exception) -> ModelError:
    return ModelError(
        f"model: hub id {repo_id!r} is not in the local Hugging Face cache and the hub could not "
        f"be reached ({type(exc).__name__}: {_first_line(exc)[:200]}). Point `model:` at "
        "a local diffusers folder or a .safetensors file, or download it where the hub is "
        f"reachable (`hf download {repo_id}`) and copy the cache (HF_HOME) here."
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def _from_single_file(path: str, spec: ModelSpec, dtype: Any):
    """SD 1.x/2.x or SDXL single-file checkpoint; the model type is read from its keys."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import (
        infer_diffusers_model_type,
        load_single_file_checkpoint,
    )

    try:
        checkpoint = load_single_file_checkpoint(path, local_files_only=True)
        model_type = infer_diffusers_model_type(checkpoint)
    except Exception as exc:
        raise ModelError(
            f"model: {path!r} could not be read as a Stable Diffusion checkpoint "
            f"({type(exc).__name__}: {_first_line(exc)[:300]}); check that the file is complete "
            "and is an SD 1.x/2.x or SDXL checkpoint."
        ) from exc
    pipeline_cls = (
        StableDiffusionXLPipeline if model_type.startswith("xl") else StableDiffusionPipeline
    )
    if model_type == "xl_refiner":  # its aesthetic-score setting lives on the img2img class
        from diffusers import StableDiffusionXLImg2ImgPipeline as pipeline_cls
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if spec.model_config:
        kwargs["config"] = spec.model_config
    try:
        return pipeline_cls.from_single_file(path, **kwargs)
    except Exception as exc:
        raise ModelError(
            f"model: could not load single-file checkpoint {path!r} (detected type "
            f"{model_type!r}): {type(exc).__name__}: {_first_line(exc)[:300]}. "
            "Its component configs come from `model_config:` (a local diffusers folder of the "
            "same architecture) or from the Hugging Face cache of the matching base model."
        ) from exc
