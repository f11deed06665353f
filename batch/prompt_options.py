"""The job fields about prompts and adapters, shared by batch and animation jobs (pydantic).

```yaml
prompt_syntax: a1111        # or plain: brackets, <lora:...> and BREAK are literal text
lora_dir: loras/            # where <lora:name:w> tags and names in `loras` are found
loras:                      # applied to every row / frame
  - {name: brand_style, scale: 0.8}
  - {path: extra/soft.safetensors, scale: 0.5, text_encoder_scale: 0.3}
embeddings: [glossy]        # textual inversions: names in embedding_dir, or paths
embedding_dir: embeddings/  # every file in it is loaded, called by its file stem
safety_checker: true        # keep the model's own checker (a hit fails the row, saying so)
refiner: {model: stabilityai/stable-diffusion-xl-refiner-1.0, switch_at: 0.8}   # batch, SDXL
```

`adapter_context` resolves them (relative paths from the job file's folder) into the
`batch.prompt_checks.AdapterContext` that row validation and expansion use; a bad file or name
is a ConfigError naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from sdfleet.batch.adapter_files import BaseDims, checkpoint_dims, folder_dims
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.models import ModelSpec, builtin_folder, resolve_model_source
from sdfleet.batch.paths import resolve_path
from sdfleet.batch.prompt_checks import (
    AdapterContext,
    LoraEntry,
    is_path,
    job_embeddings,
    job_loras,
)


class LoraOption(BaseModel):
    """One job-wide LoRA: a file (`path`) or a name in `lora_dir`, at `scale`."""

    model_config = {"extra": "forbid", "frozen": True}
    path: str | None = None
    name: str | None = None
    scale: float = Field(1.0, allow_inf_nan=False, ge=-10, le=10)
    text_encoder_scale: float | None = Field(None, allow_inf_nan=False, ge=-10, le=10)

    @field_validator("path")
    @classmethod
    def _from_job_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        return absolute(value, info)

    @model_validator(mode="after")
    def _one_source(self) -> LoraOption:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of `path` (a file) or `name` (in lora_dir)")
        return self

    def entry(self) -> LoraEntry:
        te = self.scale if self.text_encoder_scale is None else self.text_encoder_scale
        return LoraEntry(str(self.path or self.name), te, self.scale)


class RefinerOption(BaseModel):
    """An SDXL refiner: `model` runs the last (1 - switch_at) of the denoising steps."""

    model_config = {"extra": "forbid", "frozen": True}
    model: str = Field(min_length=1)
    switch_at: float = Field(0.8, gt=0, lt=1, allow_inf_nan=False)


class PromptOptions(BaseModel):
    """The fields; job models inherit them."""

    prompt_syntax: Literal["a1111", "plain"] = "a1111"
    loras: tuple[LoraOption, ...] = ()
    lora_dir: str | None = None
    embeddings: tuple[str, ...] = ()
    embedding_dir: str | None = None
    safety_checker: bool = True
    _base_dir: Path | None = PrivateAttr(None)  # the job file's folder, where validation knew it

    @field_validator("lora_dir", "embedding_dir")
    @classmethod
    def _folder_from_job_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        return absolute(value, info)

    @field_validator("embeddings")
    @classmethod
    def _files_from_job_folder(cls, value: tuple[str, ...], info: ValidationInfo):
        return tuple(absolute(v, info) if is_path(v) else v for v in value)

    @model_validator(mode="after")
    def _remember_folder(self, info: ValidationInfo) -> PromptOptions:
        base = (info.context or {}).get("base_dir")
        self._base_dir = Path(base) if base is not None else None
        return self

    def uses_adapters(self) -> bool:
        return bool(self.loras or self.lora_dir or self.embeddings or self.embedding_dir)

    def adapters(self, base_dir: Path | None) -> AdapterContext:
        """`adapter_context` with the model's widths read when the job names adapters (a job
        without any reads none: a LoRA file named in a row is then checked when it loads)."""
        from sdfleet.batch.models import model_spec

        base_dir = base_dir or self._base_dir
        if not self.uses_adapters():
            return self.adapter_context(base_dir, None)
        spec = model_spec(self, base_dir, embeddings=())  # type: ignore[arg-type]
        return self.adapter_context(base_dir, model_dims(spec))

    def adapter_context(self, base_dir: Path | None, base: BaseDims | None) -> AdapterContext:
        """The resolved context (files checked, hashed); `base`: the model's widths if known."""
        model = str(getattr(self, "model", ""))
        lora_dir = self._folder(self.lora_dir, base_dir, "lora_dir")
        context = AdapterContext(
            syntax=self.prompt_syntax,
            model=model,
            base=base,
            lora_dir=lora_dir,
            allow_pickle=bool(getattr(self, "allow_pickle", False)),
        )
        loras = job_loras([option.entry() for option in self.loras], context, base_dir)
        folder = self._folder(self.embedding_dir, base_dir, "embedding_dir")
        embeddings = job_embeddings(self.embeddings, folder, context, base_dir)
        return AdapterContext(
            syntax=context.syntax,
            model=model,
            base=base,
            lora_dir=lora_dir,
            allow_pickle=context.allow_pickle,
            loras=loras,
            embeddings=embeddings,
        )

    @staticmethod
    def _folder(value: str | None, base_dir: Path | None, field: str) -> str | None:
        if value is None:
            return None
        folder = resolve_path(value, base_dir)
        if not folder.is_dir():
            raise ConfigError(
                f"{field}: {value!r} is not a folder (read from {base_dir or '.'}); give the "
                "folder holding the files"
            )
        return str(folder.resolve())


def absolute(value: str | None, info: ValidationInfo) -> str | None:
    """A relative path made absolute from the job file's folder (the validation context's
    `base_dir`, as `anim.job_files` does for audio files); unchanged without a context."""
    base = (info.context or {}).get("base_dir")
    if value is None or base is None:
        return value
    return str(resolve_path(value, base).absolute())


def model_dims(spec: ModelSpec) -> BaseDims | None:
    """The widths an adapter must match, read from the model's files without loading it
    (a builtin is built first if needed); None where they cannot be read (hub ids, pickled
    single files, builtin:null)."""
    source = resolve_model_source(spec)
    if source.location == "builtin:null":
        return None
    if source.kind == "builtin":
        return folder_dims(builtin_folder(source.location))
    if source.kind == "folder":
        return folder_dims(source.location)
    if source.kind == "single_file" and source.location.lower().endswith(".safetensors"):
        return checkpoint_dims(source.location)
    return None
