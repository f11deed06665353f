"""Output layout: image names, image files with metadata, results Parquet, summary.

OUT/job.yaml, OUT/images/<id>.png (variant k: <id>_<k>.png), OUT/results/*.parquet,
OUT/summary.json. OUT may be a local path or any pyarrow filesystem URI (s3://, gs://, ...).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from sdfleet.batch.datasets_io import with_datasets_features
from sdfleet.batch.errors import StorageError
from sdfleet.batch.infotext import (
    InfotextModel,
    exif_user_comment,
    generation_fields,
    infotext,
)
from sdfleet.batch.paths import is_local, is_uri, join_uri, local_path, write_atomic

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def output_name(row_id: str, variant: int, num_images: int) -> str:
    """File stem of one output: `<id>` for single-image rows, `<id>_<k>` for variants."""
    return row_id if num_images == 1 else f"{row_id}_{variant}"


@dataclass(frozen=True)
class OutputDir:
    """A root folder on a pyarrow filesystem; every path inside is '/'-joined."""

    uri: str

    def filesystem(self):
        """(pyarrow FileSystem, root path) - built on demand so the object pickles cleanly."""
        import os

        from pyarrow import fs

        if not self.is_local():
            return fs.FileSystem.from_uri(self.uri)
        return fs.LocalFileSystem(), os.path.abspath(local_path(self.uri))

    def is_local(self) -> bool:
        return is_local(self.uri)

    def child_uri(self, name: str) -> str:
        """OUT/name in the form OUT was given (a URI stays a URI, so Ray nodes can reach it)."""
        return join_uri(self.uri, name) if is_uri(self.uri) else self.path(name)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.filesystem()[1], *parts)

    def write_bytes(self, relative: str, data: bytes) -> None:
        """OUT/relative, atomically (`batch.paths.write_atomic`: a reader never sees half).
        StorageError (a PipelineError: the run stops, a rerun resumes) when it cannot be
        written: a full disk is no row's fault."""
        filesystem, root = self.filesystem()
        try:
            write_atomic(posixpath.join(root, relative), data, filesystem)
        except OSError as exc:
            raise StorageError.writing(self.child_uri(relative), exc) from exc

    def read_bytes(self, relative: str) -> bytes:
        filesystem, root = self.filesystem()
        with filesystem.open_input_stream(posixpath.join(root, relative)) as stream:
            return stream.read()

    def exists(self, relative: str) -> bool:
        from pyarrow import fs

        filesystem, root = self.filesystem()
        info = filesystem.get_file_info(posixpath.join(root, relative))
        return info.type != fs.FileType.NotFound


PENDING_SUFFIX = ".pending.parquet"  # Ray Data's uncommitted checkpoint files (two-phase)


def parquet_files(folder_uri: str, committed: bool = False) -> tuple[Any, list[str]]:
    """(pyarrow filesystem, paths of the .parquet files directly in the folder); no folder,
    no files. Results parts and Ray's checkpoint both lie flat in their folders. `committed`
    leaves out Ray's pending checkpoint files: ids of a write that may not have finished,
    which Ray deletes, with the result files they name, before its next execution."""
    from pyarrow import fs

    filesystem, root = OutputDir(folder_uri).filesystem()
    found = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    paths = [info.path for info in found if info.path.endswith(".parquet")]
    if committed:
        paths = [path for path in paths if not path.endswith(PENDING_SUFFIX)]
    return filesystem, paths


def a1111_parameters(params: dict[str, Any], model: InfotextModel | None = None) -> str:
    """The `parameters` text A1111 writes (`batch.infotext`), so PNG Info, civitai and other
    A1111 readers read it; `model`: what the replica knows of its loaded model."""
    fields = generation_fields(params, model)
    return infotext(params["prompt"], params.get("negative_prompt"), fields)


def encode_image(
    image, fmt: str, params: dict[str, Any], quality: int = 95, model: InfotextModel | None = None
) -> bytes:
    """Encode a PIL image with A1111's parameters: PNG in a `parameters` text chunk (plus an
    `sdfleet` chunk, JSON of the row), JPEG/WEBP in the Exif UserComment, as A1111 writes it."""
    from PIL import PngImagePlugin

    buffer = io.BytesIO()
    pil_format = IMAGE_FORMATS[fmt]
    text = a1111_parameters(params, model)
    if pil_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        info.add_itxt("sdfleet", json.dumps(params, default=str, sort_keys=True))
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        image.save(buffer, format=pil_format, quality=quality, exif=exif_user_comment(text))
    return buffer.getvalue()


def read_user_comment(image) -> str:
    """The A1111 parameters of a jpg/webp written by `encode_image`."""
    from PIL import ExifTags

    raw = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    return raw.removeprefix(b"UNICODE\x00").decode("utf-16-be")


def read_png_metadata(data: bytes) -> dict[str, Any]:
    """Return {'parameters': str, 'sdfleet': dict} from PNG bytes written by `encode_image`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        text = dict(image.text)
    return {"parameters": text.get("parameters"), "sdfleet": json.loads(text["sdfleet"])}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_json(out: OutputDir, relative: str, payload: dict[str, Any]) -> None:
    out.write_bytes(relative, json.dumps(payload, indent=2, default=str).encode() + b"\n")


def result_types():
    """Arrow types of the fixed result columns (carried columns keep their own types)."""
    import pyarrow as pa

    return {
        "id": pa.string(),
        "output_id": pa.string(),
        "variant": pa.int32(),
        "prompt": pa.string(),
        "negative_prompt": pa.string(),
        "seed": pa.int64(),
        "num_inference_steps": pa.int32(),
        "guidance_scale": pa.float64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "scheduler": pa.string(),
        "strength": pa.float64(),
        "mode": pa.string(),
        "init_image": pa.string(),
        "mask_blur": pa.float64(),  # inpainting rows
        "model": pa.string(),
        "loras": pa.string(),
        "lora_hashes": pa.string(),
        "ti_hashes": pa.string(),
        "nsfw": pa.bool_(),
        "image_path": pa.string(),
        "sha256": pa.string(),
        "seconds": pa.float64(),
        "status": pa.string(),
        "error": pa.string(),
        "node": pa.string(),
        "worker": pa.string(),
        "device": pa.string(),
        "gpu_ids": pa.string(),
        "cpu_threads": pa.int32(),
        "ray_node_id": pa.string(),
        "image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    }


def results_table(columns: dict[str, list], carried_types: dict[str, Any] | None = None):
    """A pyarrow Table with fixed types for result columns and the manifest's own types for
    carried columns, so every part has one schema (an all-null chunk stays a string column);
    with an `image` column, the schema metadata that makes `datasets` read it as an Image."""
    import pyarrow as pa

    types = (carried_types or {}) | result_types()
    arrays, names = [], []
    for name, values in columns.items():
        arrays.append(pa.array(values, type=types.get(name)))
        names.append(name)
    return with_datasets_features(pa.Table.from_arrays(arrays, names=names))
