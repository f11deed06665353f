"""A replica: one loaded model on one device, with one verb: generate a list of requests.

It knows nothing of Ray, and it makes no diffusers call itself: `batch.sampler.Sampler` is the
one call (generators, scheduler, NaN check). On top of it the replica

1. groups requests that can share a call (`GenRequest.group_key`: mode, size, steps, LoRA set,
   ...; and the text route, `Sampler.text_route`: strings, or embeddings of n chunks),
2. cuts groups into chunks of `batch_size` and pads short chunks with copies of a real request
   whose outputs are dropped,
3. retries a chunk that ran out of memory once at half the shape, and
4. isolates rows: a bad init image, a NaN output, a safety-checker hit (the row says so) or any
   other error fails its own row only;
5. runs the job's hires fix on txt2img calls and its upscale stage on every image
   (`batch.hires`), the upscaler models loaded on first use.

Why pad: each request gets its own `torch.Generator` seeded from its row, but CPU and GPU kernels
pick different reduction orders for different batch sizes, so every call runs at the same batch
shape. An image then depends only on its row and the replica's `batch_size`, never on its
neighbours or on where a batch was cut. Failure policy: a row's failure becomes its result's
`error` and never an exception out of `generate`.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sdfleet.batch.conditioning import finish_inpaint, mask_size_problems, prepare_inpaint
from sdfleet.batch.controlnets import control_images
from sdfleet.batch.errors import ManifestError
from sdfleet.batch.hires import Upscalers, run_hires, size_problems
from sdfleet.batch.masks import box_mask
from sdfleet.batch.models import ModelSpec, Pipelines, load_model
from sdfleet.batch.paths import is_uri
from sdfleet.batch.request import GenRequest
from sdfleet.batch.sampler import Control, Sample, Sampler, TextPrompts

logger = logging.getLogger(__name__)
INPUT_PREFIX = {"txt2img": "", "img2img": "init_image: ", "inpaint": "init_image or mask: "}
CONTROL_PREFIX = "init_image or control image: "


@dataclass(frozen=True)
class RowInputs:
    """What a request adds to its call: its mode's input (None, the init image, or an
    `InpaintInput`) and a control image per ControlNet unit of the job."""

    main: Any
    controls: tuple = ()


@dataclass
class GenResult:
    request: GenRequest
    image: Any | None  # PIL.Image on success
    error: str | None
    seconds: float  # this request's share of its pipeline call
    flagged: bool | None = None  # the model's safety checker fired (None: the model has none)


SAFETY_FIX = (
    "the model's safety checker flagged this image (diffusers blacks it out), so none was saved; "
    "set `safety_checker: false` in the job to keep the model's output"
)


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
        t0 = time.perf_counter()
        self.spec = spec
        self.batch_size = max(1, batch_size)
        self.pad_batches = pad_batches
        self.pipes: Pipelines = load_model(spec, cpu_threads)  # pins CPU threads (see there)
        self.controlnets = spec.controlnets  # every row runs them (`batch.controlnets`)
        self.hires = getattr(spec, "hires", None)  # txt2img rows: two passes (`batch.hires`)
        self.upscale = getattr(spec, "upscale", None)  # every image: the post stage
        self.upscalers = Upscalers(spec.allow_pickle, self.pipes.device)  # loaded on first use
        self.sampler = Sampler(self.pipes)
        self.cpu_threads = self.pipes.cpu_threads
        self.load_seconds = time.perf_counter() - t0

    @property
    def device_name(self) -> str:
        return str(self.pipes.device)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Results in the order of `requests`; a failing request never fails the others."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[self.call_key(request)].append(index)
        results: list[GenResult | None] = [None] * len(requests)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, result in zip(chunk, self._run_chunk([requests[i] for i in chunk])):
                    results[index] = result
        return results  # type: ignore[return-value]

    def call_key(self, request: GenRequest) -> tuple:
        """Requests with one key share pipeline calls (`generate` groups by it): the same
        scalars and adapters (`GenRequest.group_key`) and the same text route (strings, or
        embeddings of n chunks: `Sampler.text_route`)."""
        try:
            route = self.sampler.text_route(request.prompt, request.negative_prompt)
        except Exception:  # noqa: BLE001 - the row fails alone when its call runs
            route = ("unreadable", request.row_id)
        return (request.group_key(), route)

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
            if self.hires is not None and request.mode == "txt2img":
                size = (request.width, request.height)
                if problems := size_problems(self.hires, *size, f"row {request.row_id!r}"):
                    failed[id(request)] = _error(request, ManifestError(problems[0]))
                    continue
            try:
                ready.append((request, load_row_inputs(request, self.controlnets)))
            except Exception as exc:  # noqa: BLE001
                prefix = CONTROL_PREFIX if self.controlnets else INPUT_PREFIX[request.mode]
                failed[id(request)] = _error(request, exc, prefix=prefix)
        return ready, failed

    def _call_pipeline(self, ready: list[tuple[GenRequest, Any]], pad_to: int) -> list[GenResult]:
        # 1. pad to the fixed batch shape (see module docstring)
        padding = max(0, pad_to - len(ready)) if self.pad_batches else 0
        padded = ready + [ready[-1]] * padding
        # 2. one sampler call for the padded chunk
        t0 = time.perf_counter()
        sample = sample_of(padded, self.controlnets)
        if self.hires is not None and sample.mode == "txt2img":
            sampled = run_hires(self.sampler, sample, self.hires, self.upscalers)
        else:
            sampled = self.sampler.sample(sample)
        share = (time.perf_counter() - t0) / len(padded)
        # 3. a row whose output is unusable (NaN/inf) fails alone; padding rows are dropped
        results = []
        flags = sampled.flagged or [None] * len(padded)
        for (request, inputs), image, error, flag in zip(
            ready, sampled.images, sampled.errors, flags
        ):
            if error is not None:
                results.append(_error(request, error, seconds=share))
                continue
            if flag:  # a black square is no image: the row says why
                results.append(GenResult(request, None, SAFETY_FIX, share, flagged=True))
                continue
            picture = to_pil(image.permute(1, 2, 0).numpy())  # (3, H, W) -> (H, W, 3)
            if request.mode == "inpaint":  # paste back, the source kept outside the mask
                picture = finish_inpaint(inputs.main, picture)
            if self.upscale is not None:  # the upscale-only post stage
                stage = self.upscale
                size = stage.output_size(*picture.size)
                picture = self.upscalers.upscale_to(stage.model, picture, size, stage.tile)
            results.append(GenResult(request, picture, None, share, flagged=flag))
        return results

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sample_of(rows: list[tuple[GenRequest, RowInputs]], controlnets: tuple = ()) -> Sample:
    """The sampler call of rows that share a group key (so every scalar is the first row's);
    `controlnets`: the job's units, whose images each row's `RowInputs.controls` holds."""
    first = rows[0][0]
    text = TextPrompts([r.prompt for r, _ in rows], [r.negative_prompt for r, _ in rows])
    common: dict[str, Any] = {
        "seeds": [r.seed for r, _ in rows],
        "text": text,
        "num_inference_steps": first.num_inference_steps,
        "guidance_scale": first.guidance_scale,
        "scheduler": first.scheduler,
        "loras": first.loras,
    }
    if controlnets:
        images = [[p.controls[k] for _, p in rows] for k in range(len(controlnets))]
        common["control"] = Control.of_units(controlnets, images)  # (units, B)
    if first.mode == "img2img":
        return Sample(**common, image=[p.main for _, p in rows], strength=first.strength)
    if first.mode == "inpaint":
        images, masks = [p.main.image for _, p in rows], [p.main.mask for _, p in rows]
        return Sample(**common, image=images, mask_image=masks, strength=first.strength)
    return Sample(**common, width=first.width, height=first.height)


def to_pil(array):
    """float (H, W, 3) in [0, 1] -> PIL, rounding exactly as diffusers' `numpy_to_pil` does."""
    from PIL import Image

    return Image.fromarray((array * 255).round().astype("uint8"))


def load_row_inputs(request: GenRequest, controlnets: tuple = ()) -> RowInputs:
    """A request's mode input and, per ControlNet unit, its control image at the output size
    (`batch.controlnets.control_images`: from the unit's column, else from the init image)."""
    main = load_inputs(request)
    if not controlnets:
        return RowInputs(main)
    size = (request.width, request.height)
    controls = control_images(
        controlnets, request.control_sources, main, size, request.seed, read_image
    )
    return RowInputs(main, controls)


def load_inputs(request: GenRequest) -> Any:
    """What a request's mode adds to the call: nothing, its init image, or its `InpaintInput`."""
    if request.mode == "txt2img":
        return None
    if request.mode == "img2img":
        return load_init_image(request)
    spec = request.inpaint
    image = read_image(request.init_image)  # the mask's size rule is on the original size
    if spec.mask_image is not None:
        mask = read_image(spec.mask_image)
        if problems := mask_size_problems(mask.size, image.size):
            raise ManifestError(f"mask_image: {problems[0]}")
    else:
        mask = box_mask(image.size, spec.boxes, spec.units, spec.invert)
    size = (request.width, request.height)
    return prepare_inpaint(image, mask, size, spec.blur, spec.only_masked, spec.padding)


def load_init_image(request: GenRequest):
    """A request's init image as an RGB PIL image at the request's size."""
    return read_image(request.init_image, request.width, request.height)


def read_image(source: bytes | str, width: int | None = None, height: int | None = None):
    """Encoded bytes, a path or a URI -> RGB PIL image, at width x height where given (Lanczos
    resize)."""
    from PIL import Image

    from sdfleet.batch.images import decode_rgb

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
    image = decode_rgb(data)  # 16-bit, palette, CMYK, alpha: to 8-bit RGB correctly
    if width is not None and image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _error(request: GenRequest, exc: BaseException, prefix: str = "", seconds: float = 0.0):
    message = f"{prefix}{type(exc).__name__}: {exc}".strip()
    logger.warning("row %s variant %d failed: %s", request.row_id, request.variant, message)
    return GenResult(request, None, message[:1000], seconds)
