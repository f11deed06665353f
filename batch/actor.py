"""The replica actor: Ray Data's `map_batches` callable class, also called directly by the
`local` executor and by tests (a plain dict of columns in, a dict of result columns out).

A block is made one pipeline call at a time (`plan_calls`: the replica's own grouping), and
each call's images are encoded and written as soon as it returns: the block keeps only small
result rows (paths, hashes, parameters), never its pictures, so an actor's memory does not grow
with `rows_per_block`, and each image file is written when that image was made. Each call is
then reported (`batch.progress.CallDone`), so progress moves per call, not per block.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sdfleet.batch.infotext import InfotextModel
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.outputs import OutputDir, encode_image, results_table, sha256_hex
from sdfleet.batch.progress import CallDone
from sdfleet.batch.prompt_checks import adapter_params
from sdfleet.batch.request import KNOWN_COLUMNS, GenRequest, RowDefaults, expand_row

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything a replica needs, resolved and validated by the job layer; pickles to actors."""

    model: ModelSpec
    defaults: RowDefaults
    out_uri: str
    job_seed: int = 0
    batch_size: int = 4
    pad_batches: bool = True
    cpu_threads: int | None = None  # CPU replicas: torch threads (None: torch's default)
    image_format: str = "png"
    image_quality: int = 95
    embed_image_bytes: bool = False
    manifest_dir: str | None = None  # relative init_image paths are resolved from here


class Reporter(Protocol):
    """Where a replica reports: `batch.progress.RunProgress` in the driver's process, or a
    forwarder to the Ray actor the driver polls (`batch.ray_runner.CounterReporter`)."""

    def loaded(self, seconds: float) -> None: ...

    def call_done(self, call: CallDone) -> None: ...


class GenerateBatch:
    """Load the replica once (`__init__`); map a batch of manifest rows to result rows."""

    def __init__(self, config: RunConfig, progress: Reporter | None = None):
        """`progress`: told of the model's load time and of every finished pipeline call."""
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from sdfleet.batch.replica import Replica

        self.config = config
        self.progress = progress
        self.out = OutputDir(config.out_uri)
        self.replica = Replica(
            config.model, config.batch_size, config.pad_batches, config.cpu_threads
        )
        # the model's own scheduler, before any row swaps it: the infotext names it
        self.infotext_model = InfotextModel.of_loaded(
            config.model, self.replica.pipes.txt2img.scheduler
        )
        if progress is not None:
            progress.loaded(self.replica.load_seconds)
        self.node = socket.gethostname()
        self.ray_node_id = _ray_node_id()
        self.worker = f"{self.node}:{os.getpid()}"
        self.gpu_ids = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def __call__(self, batch: Any):
        """`batch`: a pyarrow Table (Ray `batch_format="pyarrow"`) or a dict of columns."""
        requests = self.expand(columns_to_rows(batch))
        finished: list[dict[str, Any]] = [{}] * len(requests)
        for call in plan_calls(requests, self.call_key, self.config.batch_size):
            started = time.time()
            results = self.generate([requests[i] for i in call])
            for index, result in zip(call, results):  # written now; the picture is let go
                finished[index] = self._finish(result)
            if self.progress is not None:
                self.progress.call_done(CallDone(self.worker, len(call), started, time.time()))
        carried = {
            f.name: f.type for f in getattr(batch, "schema", ()) if f.name not in KNOWN_COLUMNS
        }
        return results_table(rows_to_columns(finished), carried)

    def call_key(self, request: GenRequest) -> Hashable:
        """Requests with one key can share a pipeline call: the replica's own grouping, so a
        planned call is exactly one of its calls."""
        return self.replica.call_key(request)

    def expand(self, rows: list[dict[str, Any]]) -> list[GenRequest]:
        """Manifest rows -> one request per output (`num_images` > 1 makes several)."""
        return expand_rows(rows, self.config)

    def generate(self, requests: list[GenRequest]) -> list[Any]:
        """The replica's results, one per request, in order; a subclass may wrap this step."""
        return self.replica.generate(requests)

    def _finish(self, result) -> dict[str, Any]:
        """Write the image (deterministic name: a retry overwrites) and build the result row."""
        request = result.request
        params = request_params(request, self.config.model.model)
        row = {"id": request.row_id, "output_id": request.output_name, "variant": request.variant}
        row |= {k: v for k, v in request.carried.items() if k not in row}
        row |= params | {"image_path": None, "sha256": None, "seconds": round(result.seconds, 4)}
        row |= {"status": "ok", "error": None} | self._provenance()
        row["nsfw"] = getattr(result, "flagged", None)  # the model's safety checker fired
        if self.config.embed_image_bytes:
            row["image"] = None
        if row["nsfw"]:  # no black square saved as ok: the row says what happened
            return row | {"status": "filtered", "error": result.error}
        if result.error is not None:
            return row | {"status": "error", "error": result.error}
        try:
            data = encode_image(
                result.image,
                self.config.image_format,
                params | stage_params(request.carried),
                self.config.image_quality,
                self.infotext_model,
            )
        except Exception as exc:  # noqa: BLE001 - this image's metadata or pixels
            return row | {"status": "error", "error": f"encode: {type(exc).__name__}: {exc}"}
        relative = f"images/{request.output_name}.{self.config.image_format}"
        self.write_image(relative, data)
        row |= {"image_path": relative, "sha256": sha256_hex(data)}
        if self.config.embed_image_bytes:
            row["image"] = {"bytes": data, "path": relative}
        return row

    def write_image(self, relative: str, data: bytes) -> None:
        """OUT/relative. A failed write (disk full, read-only, a lost mount) is no row's
        error: StorageError stops the batch uncommitted, so a rerun makes its rows."""
        self.out.write_bytes(relative, data)

    def _provenance(self) -> dict[str, Any]:
        """Which node, process and device produced a row."""
        return {
            "node": self.node,
            "worker": self.worker,
            "device": self.replica.device_name,
            "gpu_ids": self.gpu_ids,
            "cpu_threads": self.replica.cpu_threads,
            "ray_node_id": self.ray_node_id,
        }


def expand_rows(rows: list[dict[str, Any]], config: RunConfig) -> list[GenRequest]:
    """Manifest rows -> one request per output, as the replica of `config` makes them."""
    base_dir = Path(config.manifest_dir) if config.manifest_dir else None
    requests: list[GenRequest] = []
    for row in rows:
        requests.extend(expand_row(row, config.defaults, config.job_seed, base_dir))
    return requests


def plan_calls(
    requests: list[GenRequest], key: Callable[[GenRequest], Hashable], batch_size: int
) -> list[list[int]]:
    """Indices of `requests`, one list per pipeline call: grouped by `key` (groups in order
    of first appearance), each group cut into calls of `batch_size`, as `Replica.generate`
    runs them."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[key(request)].append(index)
    size = max(1, batch_size)
    return [
        indices[start : start + size]
        for indices in groups.values()
        for start in range(0, len(indices), size)
    ]


def _ray_node_id() -> str | None:
    """The Ray node this replica runs on, or None outside Ray (local executor, tests)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except ImportError:
        return None


def request_params(request: GenRequest, model: str) -> dict[str, Any]:
    """The generation parameters recorded in PNG metadata and in the results row."""
    init = request.init_image
    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "width": request.width,
        "height": request.height,
        "scheduler": request.scheduler,
        "strength": request.strength,
        "mode": request.mode,
        "init_image": init if isinstance(init, str) else (None if init is None else "<bytes>"),
        "mask_blur": request.inpaint.blur if request.inpaint is not None else None,
        "model": model,
        **adapter_params(request.loras, request.embeddings),
    }


STAGE_COLUMNS = ("controlnets", "hires", "upscale", "output_width", "output_height")


def stage_params(carried: dict[str, Any]) -> dict[str, Any]:
    """The job's ControlNet units, hires fix and upscale stage as the results record them
    (`batch.request.expand_row`), for the PNG's `sdfleet` chunk: the JSON columns decoded, so
    the chunk holds what made the picture, not only the row's own settings."""
    out = {}
    for column in STAGE_COLUMNS:
        value = carried.get(column)
        if value is not None:
            out[column] = json.loads(value) if isinstance(value, str) else value
    return out


def columns_to_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray's numpy column dict (or a pyarrow Table / plain lists) -> list of plain-Python rows."""
    if hasattr(batch, "to_pylist"):
        return batch.to_pylist()
    names = list(batch)
    columns = [_to_python(batch[name]) for name in names]
    length = len(columns[0]) if columns else 0
    return [{name: col[i] for name, col in zip(names, columns)} for i in range(length)]


def _to_python(column: Any) -> list:
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    out = []
    for value in values:
        if isinstance(value, float) and value != value:  # NaN stands for null in numpy columns
            value = None
        out.append(value)
    return out


def rows_to_columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    return {name: [row.get(name) for row in rows] for name in names}
