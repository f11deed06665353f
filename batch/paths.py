"""Paths, URIs and atomic writes: the one home for each.

- A *URI* is ``scheme://...`` (``s3://bucket/x``, ``gs://``, ``file:///mnt/x``); anything else is
  a local path. ``file://`` URIs name local files too, written so that every node of a cluster
  takes them as one shared mount (`batch.pool.check_shared_storage`).
- A relative path is read from a base folder (the job file's or the manifest's), with ``~``
  expanded: `resolve_path`.
- A file is written atomically - temporary name, flushed and fsynced, renamed over the target -
  so a reader or a resume never sees half a file: `write_atomic`.

Pure: the standard library only (pyarrow is imported inside the functions that use a
filesystem).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")  # scheme://...
FILE_SCHEME = "file"


def uri_scheme(value: str) -> str | None:
    """The scheme of a URI (``s3`` for ``s3://b/x``); None for a plain path."""
    match = _URI.match(value)
    return match.group(1).lower() if match else None


def is_uri(value: str) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain path."""
    return _URI.match(value) is not None


def is_local(value: str) -> bool:
    """A plain path or a ``file://`` URI: something this machine reads as a file."""
    return uri_scheme(value) in (None, FILE_SCHEME)


def local_path(value: str) -> str:
    """A local location without its ``file://`` prefix (a plain path is returned as it is).
    ValueError for another scheme: the caller must check `is_local` first."""
    scheme = uri_scheme(value)
    if scheme is None:
        return value
    if scheme != FILE_SCHEME:
        raise ValueError(f"{value!r} is a {scheme}:// URI, not a local path")
    return value[len(FILE_SCHEME) + 3 :]


# URI schemes the readers can open (pyarrow filesystems), by the class that must be built in
READABLE_SCHEMES = {
    "file": "LocalFileSystem",
    "s3": "S3FileSystem",
    "gs": "GcsFileSystem",
    "gcs": "GcsFileSystem",
    "hdfs": "HadoopFileSystem",
    "viewfs": "HadoopFileSystem",
    "abfs": "AzureFileSystem",
    "abfss": "AzureFileSystem",
}


def uri_read_problems(value: str) -> list[str]:
    """Why a URI cannot be read here (its scheme is none pyarrow opens, or, for ``file://``,
    nothing is there), with the fix; [] when it can be tried. Object stores are not asked
    (no network at validation): a missing object fails its own row."""
    from pyarrow import fs

    scheme = uri_scheme(value) or ""
    if not hasattr(fs, READABLE_SCHEMES.get(scheme, "-")):
        known = ", ".join(f"{s}://" for s in READABLE_SCHEMES if hasattr(fs, READABLE_SCHEMES[s]))
        return [f"{scheme}:// cannot be read here; use a local path or one of {known}"]
    if scheme == FILE_SCHEME and not os.path.isfile(local_path(value)):
        return [f"no file at {local_path(value)}; fix the path (file:// URIs are absolute)"]
    return []


def join_uri(base: str, name: str) -> str:
    """``base/name`` in the form base was given: a URI stays a URI, a path a path."""
    if is_uri(base):
        return f"{base.rstrip('/')}/{name}"
    return posixpath.join(base, name)


def resolve_path(value: str | Path, base_dir: str | Path | None = None) -> Path:
    """A local path with ``~`` expanded and, when relative, read from `base_dir` (kept
    relative when there is no base). Links and ``..`` are left as written; call
    ``.resolve()`` on the result for the canonical absolute path."""
    path = Path(os.path.expanduser(str(value)))
    if path.is_absolute() or base_dir is None:
        return path
    return Path(base_dir) / path


def write_atomic(path: str | Path, data: bytes, filesystem: Any = None) -> None:
    """Write `data` to `path` through a temporary name: flushed, fsynced, then renamed over
    the target, so a reader (or a resume after a kill or power cut) sees the old file or the
    new one, never half of one. Parent folders are made.

    `filesystem` is a pyarrow filesystem for OUT folders that may be remote; a local one (or
    None) takes the fsync path above. An object store has no fsync: a finished upload is
    durable there, and the same temporary-name-and-move keeps readers off partial objects.
    """
    if filesystem is not None and not _is_local_filesystem(filesystem):
        _write_via_filesystem(filesystem, str(path), data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:  # disk full, a kill signal...: no stray temporary file
        tmp.unlink(missing_ok=True)
        raise


def _is_local_filesystem(filesystem: Any) -> bool:
    from pyarrow import fs

    return isinstance(filesystem, fs.LocalFileSystem)


def _write_via_filesystem(filesystem: Any, path: str, data: bytes) -> None:
    filesystem.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.tmp"
    try:
        with filesystem.open_output_stream(tmp) as stream:
            stream.write(data)
        filesystem.move(tmp, path)
    except BaseException:
        _delete_quietly(filesystem, tmp)
        raise


def _delete_quietly(filesystem: Any, path: str) -> None:
    try:
        filesystem.delete_file(path)
    except OSError:
        pass  # never made, or the store is gone: the original error is the one to report
