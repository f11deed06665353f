"""A job field that names one input file: relative paths are read from the job file's folder.

`audio:` and `parseq:` are written either as a plain string (the file) or as a mapping with a
`file` key. `FileField` gives both one rule: the string form becomes `{"file": ...}`, and a
relative `file` is made absolute from the folder `load_animation_job` passes as the validation
context (`base_dir`).
"""

from __future__ import annotations

import json
from pathlib import Path
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


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in a settings or document file (Deforum's settings, Parseq's render).
    ValueError with the reason, phrased to follow "<the file> is not usable: ", when the file
    cannot be read, is not UTF-8, is not JSON (line and column) or holds another JSON value."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    return data
