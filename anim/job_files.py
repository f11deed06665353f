"""A job field that names one input file: relative paths are read from the job file's folder.

`audio:` and `parseq:` are written either as a plain string (the file) or as a mapping with a
`file` key. `FileField` gives both one rule: the string form becomes `{"file": ...}`, and a
relative `file` is made absolute from the folder `load_animation_job` passes as the validation
context (`base_dir`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from sdfleet.batch.paths import resolve_path


class FileField(BaseModel):
    """Base of job fields with a `file`; subclasses declare `file` with their own description."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str | None = None

    @field_validator("file")
    @classmethod
    def _from_job_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir")
        if value is None or base is None:
            return value
        return str(resolve_path(value, base).absolute())

    @model_validator(mode="before")
    @classmethod
    def _file_only(cls, value: Any) -> Any:
        return {"file": value} if isinstance(value, str) else value
