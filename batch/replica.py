"""A replica: one loaded pipeline on one device, with one verb: generate a list of requests.

It knows nothing of Ray. Determinism: each request gets its own `torch.Generator` seeded from its
row, and every pipeline call runs at the same batch shape (short groups are padded with copies of
a real request whose outputs are dropped), because CPU and GPU kernels pick different reduction
orders for different batch sizes. So an image depends only on its row and the replica's
`batch_size`, never on its neighbours or on where a batch was cut.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sdfleet.batch.errors import GenerationError
from sdfleet.batch.models import ModelSpec, Pipelines, load_pipelines
from sdfleet.batch.paths import is_uri
from sdfleet.batch.request import GenRequest

logger = logging.getLogger(__name__)


@dataclass
class GenResult:
    request: GenRequest
    image: Any | None  # PIL.Image on success
    error: str | None
    seconds: float  # this request's share of its pipeline call


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS/CPU allocation failures: worth one retry at a smaller sub-batch."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "out of memory" in text or "outofmemory" in text


class Replica:
    """Loads the model once; `generate` groups compatible requests into fixed-shape batches."""

    def __init__(
        self,
        spec: ModelSpec,
        batch_size: int = 4,
        pad_batches: bool = True,
        cpu_threads: int | None = None,
    ):
        import torch

        t0 = time.perf_counter()
        self.spec = spec
        self.batch_size = max(1, batch_size)
        self.pad_batches = pad_batches
        self.pipes: Pipelines = load_pipelines(spec)
        self._base_scheduler = self.pipes.txt2img.scheduler
        self._schedulers: dict[str | None, Any] = {None: self._base_scheduler}
        # CPU kernels split work by thread count, which changes float rounding: the thread
        # count is part of what makes an image reproducible on CPU, so it is set and recorded.
        # Default: every core, also inside Ray workers (where OMP_NUM_THREADS would say 1).
        if self.pipes.device.type == "cpu":
            torch.set_num_threads(cpu_threads or os.cpu_count() or 1)
        self.cpu_threads = torch.get_num_threads() if self.pipes.device.type == "cpu" else None
        self.load_seconds = time.perf_counter() - t0

    @property
    def device_name(self) -> str:
        return str(self.pipes.device)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Results in the order of `requests`; a failing request never fails the others."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[request.group_key()].append(index)
        results: list[GenResult | None] = [None] * len(requests)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, result in zip(chunk, self._run_chunk([requests[i] for i in chunk])):
                    results[index] = result
        return results  # type: ignore[return-value]

    def _run_chunk(
        self, chunk: list[GenRequest], pad_to: int | None = None, may_shrink: bool = True
    ) -> list[GenResult]:
        """One call for the chunk at shape `pad_to`; on failure isolate the cause: out of memory
        is retried once at half the shape (those rows are generated at that shape), any other
        error row by row, so one bad row never fails its neighbours."""
        pad_to = pad_to or self.batch_size
        ready, failed = self._prepare_inputs(chunk)
        if not ready:
            return [failed[id(r)] for r in chunk]
        try:
            results = self._call_pipeline(ready, pad_to)
        except Exception as exc:  # noqa: BLE001 - a row's failure must not stop the job
            if is_out_of_memory(exc) and may_shrink and pad_to > 1:
                results = self._retry_smaller([r for r, _ in ready], max(1, pad_to // 2))
            elif len(ready) == 1:
                results = [_error(ready[0][0], exc)]
            else:
                results = [x for r, _ in ready for x in self._run_chunk([r], pad_to, False)]
        by_request = {id(r.request): r for r in results} | failed
        return [by_request[id(r)] for r in chunk]

    def _retry_smaller(self, requests: list[GenRequest], size: int) -> list[GenResult]:
        logger.warning("out of memory at batch shape %d; retrying at %d", 2 * size, size)
        self._free_memory()
        return [
            result
            for start in range(0, len(requests), size)
            for result in self._run_chunk(requests[start : start + size], size, False)
        ]

    def _prepare_inputs(self, chunk: list[GenRequest]):
        """Decode init images; a request whose image cannot be read fails alone."""
        ready, failed = [], {}
        for request in chunk:
            try:
                image = load_init_image(request) if request.mode == "img2img" else None
                ready.append((request, image))
            except Exception as exc:  # noqa: BLE001
                failed[id(request)] = _error(request, exc, prefix="init_image: ")
        return ready, failed

    def _call_pipeline(self, ready: list[tuple[GenRequest, Any]], pad_to: int) -> list[GenResult]:
        import numpy as np
        import torch

        # 1. pad to the fixed batch shape (see module docstring)
        padding = max(0, pad_to - len(ready)) if self.pad_batches else 0
        padded = ready + [ready[-1]] * padding
        first = padded[0][0]
        # 2. one generator per row, seeded from the row alone
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r, _ in padded]
        kwargs = dict(
            prompt=[r.prompt for r, _ in padded],
            negative_prompt=[r.negative_prompt for r, _ in padded],
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            generator=generators,
            output_type="np",
        )
        if first.mode == "img2img":
            pipe = self.pipes.img2img
            kwargs.update(image=[img for _, img in padded], strength=first.strength)
        else:
            pipe = self.pipes.txt2img
            kwargs.update(width=first.width, height=first.height)
        # 3. run with the requested scheduler
        pipe.scheduler = self._scheduler(first.scheduler)
        t0 = time.perf_counter()
        with torch.inference_mode():
            images = pipe(**kwargs).images  # (B, H, W, 3) float in [0, 1]
        share = (time.perf_counter() - t0) / len(padded)
        # 4. reject NaN outputs (fp16 overflow) instead of saving black squares
        results = []
        for (request, _), array in zip(ready, images):
            if not np.isfinite(array).all():
                err = GenerationError("output has NaN/inf values (try dtype: float32 or bf16)")
                results.append(_error(request, err, seconds=share))
            else:
                results.append(GenResult(request, to_pil(array), None, share))
        return results

    def _scheduler(self, name: str | None):
        if name not in self._schedulers:
            from sdfleet.batch.schedulers import make_scheduler

            self._schedulers[name] = make_scheduler(name, self._base_scheduler.config)
        return self._schedulers[name]

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def to_pil(array):
    """float (H, W, 3) in [0, 1] -> PIL, rounding exactly as diffusers' `numpy_to_pil` does."""
    from PIL import Image

    return Image.fromarray((array * 255).round().astype("uint8"))


def load_init_image(request: GenRequest):
    """A request's init image as an RGB PIL image at the request's size."""
    return read_image(request.init_image, request.width, request.height)


def read_image(source: bytes | str, width: int, height: int):
    """Encoded bytes, a path or a URI -> RGB PIL image at width x height (Lanczos resize)."""
    from PIL import Image

    if isinstance(source, bytes):
        data = source
    elif is_uri(str(source)):
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(str(source))
        with filesystem.open_input_stream(path) as stream:
            data = stream.read()
    else:
        with open(str(source), "rb") as handle:
            data = handle.read()
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _error(request: GenRequest, exc: BaseException, prefix: str = "", seconds: float = 0.0):
    message = f"{prefix}{type(exc).__name__}: {exc}".strip()
    logger.warning("row %s variant %d failed: %s", request.row_id, request.variant, message)
    return GenResult(request, None, message[:1000], seconds)
