"""Where a manifest's rows come from: its Parquet files (local or on any pyarrow filesystem),
the folder relative paths in it are read from, and streaming its rows.

A manifest is a .parquet file, a folder of them (read recursively) or a glob; remote ones are
URIs (s3://, gs://, file://...). Pure: pyarrow only, no torch.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sdfleet.batch.errors import ManifestError
from sdfleet.batch.paths import is_local, is_uri, local_path, resolve_path, uri_scheme
from sdfleet.batch.results_rows import as_manifest_row


def _local_manifest_path(spec: str, base_dir: Path | None) -> Path:
    """The spec as an absolute path (Ray workers may run in another directory)."""
    return resolve_path(spec, base_dir).resolve()


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def find_manifest_files(spec: str, base_dir: Path | None = None) -> list[str]:
    """A Parquet file, a folder of them, or a glob; relative paths are from `base_dir`. A
    name that exists is taken as it is, even with glob characters in it (``run[1].parquet``)."""
    if is_uri(spec):
        return _find_remote_files(spec)
    path = _local_manifest_path(spec, base_dir)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif path.is_file():
        files = [str(path)]
    elif _is_glob(spec):  # only the spec's own characters are a pattern, not base_dir's
        prefix = "" if Path(spec).is_absolute() or base_dir is None else f"{base_dir}/"
        pattern = glob.escape(prefix) + os.path.expanduser(spec)
        files = sorted(str(Path(f).resolve()) for f in glob.glob(pattern, recursive=True))
    else:
        files = []
    if not files:
        raise ManifestError(
            f"manifest: {spec!r} matches no Parquet file (looked at {path}); give a .parquet "
            "file, a folder holding .parquet files, or a glob such as 'data/*.parquet'."
        )
    return files


def manifest_folder(spec: str, base_dir: Path | None = None) -> str | None:
    """The folder that relative init_image paths are read from: the manifest's folder (the
    folder itself when the manifest is one; a file's folder; a glob's folder before its first
    pattern character). None for remote manifests (s3://, ...): give init_image as URIs."""
    if is_uri(spec):
        if not is_local(spec):
            return None
        spec, base_dir = local_path(spec), None
    path = _local_manifest_path(spec, base_dir)
    if path.is_dir():
        return str(path)
    if path.is_file() or not _is_glob(spec):
        return str(path.parent)
    fixed = []
    for part in Path(os.path.expanduser(spec)).parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return str(_local_manifest_path(str(Path(*fixed)) if fixed else ".", base_dir))


def check_out_outside_manifest(spec: str, base_dir: Path | None, out: str) -> None:
    """A folder manifest reads every .parquet below it, so OUT (its results) cannot be there."""
    if is_uri(spec) or is_uri(out):
        return
    folder = _local_manifest_path(spec, base_dir)
    if folder.is_dir() and Path(out).resolve().is_relative_to(folder):
        raise ManifestError(
            f"--out {out!r} is inside the manifest folder {str(folder)!r}: a rerun would read "
            "OUT's results/*.parquet as manifest rows. Put OUT outside that folder, or point "
            "manifest at the Parquet files themselves (a file or a glob)."
        )


def _find_remote_files(uri: str) -> list[str]:
    """A file or folder on any pyarrow filesystem (s3://, gs://, file://...)."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            paths = sorted(i.path for i in found if i.path.endswith(".parquet"))
        else:
            paths = [path] if info.type == fs.FileType.File else []
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"manifest: cannot list {uri!r}: {exc}") from exc
    if not paths:
        raise ManifestError(f"manifest: {uri!r} matches no Parquet file; give a file or a folder")
    scheme = uri_scheme(uri)
    return [f"{scheme}://{p}" for p in paths]


def open_parquet(path: str) -> pq.ParquetFile:
    if is_uri(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        return pq.ParquetFile(filesystem.open_input_file(inner))
    return pq.ParquetFile(path)


def open_manifest_file(path: str) -> pq.ParquetFile:
    """`open_parquet` with a ManifestError naming the file if it is not Parquet."""
    try:
        return open_parquet(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"manifest: cannot read {path!r} as Parquet: {exc}") from exc


def iter_manifest_rows(files: list[str], batch_rows: int = 4096) -> Iterator[tuple[str, int, dict]]:
    """Yield (file, index-in-file, row dict) streaming, without loading whole files."""
    for path in files:
        index = 0
        for record_batch in open_manifest_file(path).iter_batches(batch_size=batch_rows):
            try:
                rows = record_batch.to_pylist()
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, index, record_batch, exc) from None
            for row in rows:
                yield path, index, as_manifest_row(row)  # an earlier run's results too
                index += 1


def _not_utf8(path: str, start: int, batch: pa.RecordBatch, exc: UnicodeDecodeError):
    """ManifestError naming the row and column whose text is not UTF-8."""
    where = f"rows #{start}-#{start + batch.num_rows - 1}"  # text inside a nested column
    for name, column in zip(batch.schema.names, batch.columns):
        found = _first_not_utf8(column)
        if found is not None:
            where = f"row #{start + found[0]}, column {name!r}: {found[1][:40]!r}"
            break
    return ManifestError(
        f"{path}: {where} is not UTF-8 text ({exc.reason}); re-encode the column as UTF-8, "
        "or write it as binary if it is not text"
    )


def _first_not_utf8(column: pa.Array) -> tuple[int, bytes] | None:
    """(index, raw bytes) of a string column's first value that is not UTF-8, or None."""
    if column.type not in (pa.string(), pa.large_string()):
        return None
    binary = pa.binary() if column.type == pa.string() else pa.large_binary()
    for index, value in enumerate(column.view(binary).to_pylist()):
        try:
            value is None or value.decode("utf-8")
        except UnicodeDecodeError:
            return index, value
    return None


def table_from_rows(rows: list[dict]) -> pa.Table:
    """Rows -> Table over the union of their keys (`from_pylist` alone reads row 0's keys only)."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{name: row.get(name) for name in names} for row in rows])
