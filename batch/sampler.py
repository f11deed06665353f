"""The one call into diffusers: a `Sample` (rows that share every scalar) in, images out.

Batch rows (`batch.replica.Replica`: grouping, padding, OOM retry, row isolation) and animation
frames (`anim.frames.PipelineFrames`: embedding cache, blends) both run through
`Sampler.sample`; neither builds generators nor touches a pipeline's scheduler.

- Mode: ``txt2img`` (a size, or given initial ``latents``), ``img2img`` (``image`` +
  ``strength``) or ``inpaint`` (+ ``mask_image``). Each mode maps to a diffusers auto-pipeline
  class in `PIPELINE_CLASSES`.
- ControlNet: `Sample.control` (per loaded ControlNet: B control images, scale, start, end)
  runs txt2img/img2img on the ControlNet variant of the mode's pipeline, derived with
  ``from_pipe(..., controlnet=Pipelines.controlnet)`` (shared weights; several ControlNets are
  one MultiControlNetModel), so batch and animation reach ControlNet by this one call too.
- Text: prompt strings (`TextPrompts`) or precomputed embeddings (`PromptEmbeds`, with SDXL's
  pooled embeddings where the model has them). Strings are read in the model's prompt syntax
  (`batch.prompt_encoding`): where every row is plain text of at most 75 tokens diffusers
  encodes the strings itself; otherwise all rows go as A1111-style chunked, weighted embeddings.
  Callers group rows by `text_route` so that one call never mixes the two.
- LoRA: `Sample.loras` is the call's adapter set, made active (`batch.adapters.AdapterSlots`,
  loaded once and kept) before the call; the text-embedding cache is keyed by it.
- Refiner: with `Pipelines.refiner`, txt2img/img2img run the base to `refiner_switch` of the
  steps (latents out) and the refiner from there, SDXL's base/refiner split.
- Safety checker: where the model has one, `Sampled.flagged` says per row whether it fired
  (diffusers then returns a black image); None where no checker ran.
- Scheduler by name: a pipeline derived with ``from_pipe`` (shared weights, its own scheduler),
  cached per (mode, scheduler). The loaded pipelines are never mutated; None runs the model's
  own scheduler on the loaded pipeline itself.
- Randomness: one CPU ``torch.Generator`` per row, seeded from the row alone (diffusers
  ``generator=[...]``), so a row's image does not depend on its neighbours.
- Output: images (B, 3, H, W) in [0, 1], or with ``output="latent"`` the latents left on the
  device, which an img2img `Sample` takes as its ``image`` (a hires fix, `batch.hires`).
- Steps x strength: one policy, `batch.schedulers.img2img_steps` (at least one img2img step).

Failure policy: a row whose output holds NaN/inf values (fp16 overflow) gets a `GenerationError`
in `Sampled.errors` and the other rows keep their images; anything the pipeline raises goes to
the caller, which knows whether to retry smaller, isolate rows or fail the frame.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from sdfleet.batch.errors import GenerationError
from sdfleet.batch.schedulers import img2img_steps, make_scheduler

if TYPE_CHECKING:
    from sdfleet.batch.models import Pipelines

logger = logging.getLogger(__name__)

# mode -> diffusers auto-pipeline class derived from the loaded txt2img pipeline
PIPELINE_CLASSES = {
    "txt2img": "AutoPipelineForText2Image",
    "img2img": "AutoPipelineForImage2Image",
    "inpaint": "AutoPipelineForInpainting",  # 9-channel UNets, and 4-channel ones by blending
}
NAN_FIX = "the model output has NaN/inf values (fp16 overflow?); try dtype: float32 or bfloat16"


@dataclass(frozen=True, eq=False)
class TextPrompts:
    """Prompt strings, one per row; the pipeline encodes them."""

    prompt: Sequence[str]
    negative_prompt: Sequence[str]

    @property
    def rows(self) -> int:
        return len(self.prompt)

    def kwargs(self) -> dict[str, Any]:
        return {"prompt": list(self.prompt), "negative_prompt": list(self.negative_prompt)}


@dataclass(frozen=True, eq=False)
class PromptEmbeds:
    """Text-encoder states instead of strings: (B, tokens, dim) each; SDXL adds pooled (B, dim)."""

    prompt_embeds: Any
    negative_prompt_embeds: Any = None
    pooled_prompt_embeds: Any = None
    negative_pooled_prompt_embeds: Any = None

    @property
    def rows(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def kwargs(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, eq=False)
class Control:
    """ControlNet conditioning of one call, per loaded ControlNet (in `Pipelines.controlnet`'s
    order): B control images (RGB PIL at the output size) and its scale and step window."""

    images: Sequence[Sequence[Any]]  # (units, B)
    scales: Sequence[float]  # controlnet_conditioning_scale
    starts: Sequence[float]  # control_guidance_start
    ends: Sequence[float]  # control_guidance_end

    @classmethod
    def of_units(cls, units: Sequence[Any], images: Sequence[Sequence[Any]]) -> Control:
        """For a job's `batch.controlnets.ControlNetUse`s and, per unit, its B images."""
        return cls(
            images=images,
            scales=[unit.scale for unit in units],
            starts=[unit.start for unit in units],
            ends=[unit.end for unit in units],
        )

    def kwargs(self, image_key: str) -> dict[str, Any]:
        """diffusers' arguments: one ControlNet takes scalars and its B images; several take
        lists, and per ControlNet a (B, 3, H, W) tensor in [0, 1] (diffusers' img2img refuses
        a list of image lists), made as diffusers makes one from PIL images."""
        one = len(self.images) == 1
        return {
            image_key: list(self.images[0]) if one else [_stacked(i) for i in self.images],
            "controlnet_conditioning_scale": self.scales[0] if one else list(self.scales),
            "control_guidance_start": self.starts[0] if one else list(self.starts),
            "control_guidance_end": self.ends[0] if one else list(self.ends),
        }


@dataclass(frozen=True, eq=False)
class Sample:
    """One pipeline call: B rows sharing every scalar (steps, guidance, size, strength, ...)."""

    seeds: Sequence[int]  # one generator per row
    text: TextPrompts | PromptEmbeds
    num_inference_steps: int
    guidance_scale: float
    scheduler: str | None = None  # a name of `batch.schedulers.SCHEDULERS`; None: the model's
    width: int | None = None  # txt2img: the pipeline's default size where None
    height: int | None = None
    latents: Any = None  # txt2img: initial noise (B, C, H/f, W/f) instead of the seeds' noise
    image: Any = None  # img2img: B PIL images, or (B, 3, H, W) in [0, 1]
    strength: float | None = None  # img2img: the share denoised (diffusers' meaning)
    mask_image: Any = None  # inpaint: B "L" masks the size of `image`, white = repaint
    loras: tuple = ()  # `batch.adapters.LoraUse`s active for this call (none: LoRA off)
    control: Control | None = None  # ControlNet (txt2img, img2img)
    output: str = "pt"  # "latent": `Sampled.images` are the latents (a hires fix's first pass)

    @property
    def mode(self) -> str:
        if self.image is None:
            return "txt2img"
        return "img2img" if self.mask_image is None else "inpaint"


@dataclass(frozen=True, eq=False)
class Sampled:
    """What one call made: images (B, 3, H, W) float32 in [0, 1] on the CPU, and per row the
    error that makes its image unusable (None where the image is good)."""

    images: Any
    errors: tuple[GenerationError | None, ...]
    flagged: tuple[bool | None, ...] = ()  # the model's safety checker fired (None: no checker)


def check_sample(sample: Sample) -> None:
    """A caller's mistake (not a user's): raises ValueError naming the field."""
    rows = sample.text.rows
    if len(sample.seeds) != rows:
        raise ValueError(f"Sample.seeds: {len(sample.seeds)} seeds for {rows} rows of text")
    if sample.mode != "txt2img" and sample.strength is None:
        raise ValueError("Sample.strength: img2img needs a strength")
    if sample.mode != "txt2img" and sample.latents is not None:
        raise ValueError("Sample.latents: initial noise is for txt2img; img2img noises its image")
    if sample.output not in ("pt", "latent"):
        raise ValueError(f"Sample.output: {sample.output!r} is 'pt' or 'latent'")
    if sample.control is not None:
        if sample.mode == "inpaint":
            raise ValueError("Sample.control: ControlNet runs txt2img and img2img, not inpaint")
        if any(len(images) != rows for images in sample.control.images):
            raise ValueError(f"Sample.control.images: each ControlNet needs {rows} images")


class Sampler:
    """Runs `Sample`s on one loaded model (`batch.models.Pipelines`)."""

    def __init__(self, pipes: Pipelines) -> None:
        self.pipes = pipes
        self._derived: dict[tuple[str, str], Any] = {}
        self._schedulers: dict[str, Any] = {}
        self._text: dict[str, Any] = {}  # "base" / "refiner" -> PromptEncoder, made on first use

    # -------------------------------------------------------------------------- the call

    def sample(self, sample: Sample) -> Sampled:
        """Run one pipeline call; see the module docstring for the failure policy."""
        import torch

        # 1. check inputs and choose the pipeline (mode x scheduler, derived once)
        check_sample(sample)
        pipe = self.pipeline(sample.mode, sample.scheduler, sample.control is not None)
        # 2. the call's adapter set, then its text (strings, or embeddings under that set)
        self.use_loras(sample.loras)
        text = self.text_kwargs(sample.text)
        # 3. one generator per row, seeded from the row alone
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in sample.seeds]
        # 4. the mode's arguments: size and noise, or image, strength and the steps policy
        kwargs = self._mode_kwargs(pipe, sample)
        common = {"guidance_scale": sample.guidance_scale, "generator": generators}
        # 5. run; the postprocessor gives (B, 3, H, W) in [0, 1] ("pt": no float -> uint8 trip)
        with torch.inference_mode():
            refine = sample.mode != "inpaint" and sample.control is None  # the job refuses both
            if self.pipes.refiner is not None and refine:
                output = self._refined(pipe, sample, text, common | kwargs)
            else:
                output = pipe(**text, output_type=sample.output, **common, **kwargs)
        images = output.images  # latents stay where they are, for the next call
        images = images.float().cpu() if sample.output == "pt" else images  # (B, 3, H, W)
        flagged = getattr(output, "nsfw_content_detected", None) or [None] * len(images)
        # 6. a row with NaN/inf values is an error, not a black square
        finite = torch.isfinite(images).flatten(1).all(dim=1).tolist()
        errors = tuple(None if ok else GenerationError(NAN_FIX) for ok in finite)
        return Sampled(images, errors, tuple(flagged))

    def _refined(self, pipe: Any, sample: Sample, text: dict, kwargs: dict) -> Any:
        """SDXL's split: the base denoises to `refiner_switch` (latents out), the refiner
        (its own text encoder, the same generators) denoises the rest."""
        switch = self.pipes.refiner_switch
        latents = pipe(**text, output_type="latent", denoising_end=switch, **kwargs).images
        if not isinstance(sample.text, TextPrompts):
            raise ValueError("Sample.text: a refiner needs prompt strings (it has its own encoder)")
        refiner = self._refiner(sample.scheduler)
        refiner_text = self._encoder("refiner", refiner).call_kwargs(
            sample.text.prompt, sample.text.negative_prompt
        )
        keep = {"guidance_scale", "generator", "num_inference_steps"}
        rest = {k: v for k, v in kwargs.items() if k in keep}
        return refiner(
            **refiner_text, image=latents, denoising_start=switch, output_type=sample.output, **rest
        )

    def _refiner(self, scheduler: str | None) -> Any:
        """The refiner with the call's scheduler (derived with from_pipe, made once)."""
        if scheduler is None:
            return self.pipes.refiner
        key = ("refiner", scheduler)
        if key not in self._derived:
            from diffusers import AutoPipelineForImage2Image

            made = make_scheduler(scheduler, self.pipes.refiner.scheduler.config)
            derived = AutoPipelineForImage2Image.from_pipe(self.pipes.refiner, scheduler=made)
            derived.set_progress_bar_config(disable=True)
            self._derived[key] = derived
        return self._derived[key]

    def _mode_kwargs(self, pipe: Any, sample: Sample) -> dict[str, Any]:
        """The mode's own arguments, with the steps x strength policy for img2img."""
        if sample.mode == "txt2img":
            kwargs: dict[str, Any] = {"num_inference_steps": sample.num_inference_steps}
            kwargs |= {"width": sample.width, "height": sample.height}
            if sample.latents is not None:
                latents = sample.latents.to(device=self.pipes.device, dtype=pipe.unet.dtype)
                kwargs["latents"] = latents  # (B, C, H/f, W/f)
            if sample.control is not None:
                kwargs |= sample.control.kwargs("image")
            return kwargs
        steps = self.img2img_steps(pipe, sample.num_inference_steps, sample.strength)
        kwargs = {"image": sample.image, "strength": sample.strength, "num_inference_steps": steps}
        if sample.control is not None:  # the size is the image's, as for inpainting
            width, height = self._image_size(sample.image)
            kwargs |= sample.control.kwargs("control_image") | {"width": width, "height": height}
        if sample.mode == "inpaint":  # the size is the image's (diffusers' default is the UNet's)
            width, height = _image_size(sample.image)
            kwargs |= {"mask_image": sample.mask_image, "width": width, "height": height}
        return kwargs

    def _image_size(self, images: Any) -> tuple[int, int]:
        """(width, height) in pixels of B PIL images, a (B, 3, H, W) tensor or latents."""
        width, height = _image_size(images)
        if not (hasattr(images[0], "size") and not callable(images[0].size)):
            if int(images.shape[1]) != 3:  # latents (B, C, H/f, W/f)
                return width * self.vae_scale_factor, height * self.vae_scale_factor
        return width, height

    @property
    def vae_scale_factor(self) -> int:
        """The VAE's down-sampling factor f (latents are 1/f of the image's size)."""
        return int(self.pipes.txt2img.vae_scale_factor)

    def train_timesteps(self, scheduler: str | None) -> int:
        """The training steps of img2img with `scheduler`: no schedule has more steps, so a
        strength below 1 / this reaches no denoising step (`batch.schedulers.img2img_steps`)."""
        return self.pipeline("img2img", scheduler).scheduler.config.num_train_timesteps

    @staticmethod
    def img2img_steps(pipe: Any, steps: int, strength: float) -> int:
        """`batch.schedulers.img2img_steps` for this pipeline's scheduler; raises
        GenerationError where no step can run (validation refuses that case earlier)."""
        max_steps = pipe.scheduler.config.num_train_timesteps
        needed = img2img_steps(steps, strength, max_steps)
        if needed is None:
            raise GenerationError(
                f"strength {strength:g} is too small for any denoising step of a {max_steps}-step "
                f"schedule; use strength >= {1 / max_steps:g}"
            )
        if needed != steps:
            logger.info(
                "img2img: %d steps at strength %g would run none; running %d (one step)",
                steps,
                strength,
                needed,
            )
        return needed

    # -------------------------------------------------------------------------- pipelines

    def pipeline(self, mode: str, scheduler: str | None, controlled: bool = False) -> Any:
        """The pipeline for `mode` with `scheduler` (and the ControlNets where `controlled`):
        the loaded one for the model's own scheduler, else one derived with ``from_pipe``
        (shared weights), made once."""
        if mode not in PIPELINE_CLASSES:
            raise ValueError(f"mode: {mode!r}; choose one of {', '.join(PIPELINE_CLASSES)}")
        if controlled and self.pipes.controlnet is None:
            raise ValueError("Sample.control: this model was loaded without ControlNets")
        if scheduler is None and not controlled and hasattr(self.pipes, mode):
            return getattr(self.pipes, mode)
        key = (mode, scheduler) if not controlled else (f"controlnet-{mode}", scheduler)
        if key not in self._derived:
            made = None if scheduler is None else self.scheduler(scheduler)
            self._derived[key] = self._derive(mode, made, controlled)
        return self._derived[key]

    def scheduler(self, name: str) -> Any:
        """Scheduler `name` from the model's own scheduler config (one object per name)."""
        if name not in self._schedulers:
            base = self.pipes.txt2img.scheduler.config
            self._schedulers[name] = make_scheduler(name, base)
        return self._schedulers[name]

    def _derive(self, mode: str, scheduler: Any, controlled: bool = False) -> Any:
        """`mode`'s pipeline on the loaded weights; `scheduler` None keeps the model's own;
        `controlled`: its ControlNet variant (diffusers' auto-pipelines pick the class)."""
        import diffusers

        base = self.pipes.txt2img
        if scheduler is None:
            scheduler = base.scheduler
        if not isinstance(base, diffusers.DiffusionPipeline):  # builtin:null has no from_pipe
            derived = copy.copy(getattr(self.pipes, mode, self.pipes.img2img))
            derived.scheduler = scheduler  # on the copy: the loaded pipeline stays as it is
            return derived
        extra = {"controlnet": self.pipes.controlnet} if controlled else {}
        auto = getattr(diffusers, PIPELINE_CLASSES[mode])
        derived = auto.from_pipe(base, scheduler=scheduler, **extra)
        derived.set_progress_bar_config(disable=True)
        return derived

    # -------------------------------------------------------------------------- text and noise

    def encode_text(self, text: str) -> Any:
        """(1, tokens, dim) text-encoder states of one text in the model's prompt syntax."""
        return self.embed(text).embeds

    def embed(self, text: str) -> Any:
        """A `batch.prompt_encoding.TextEmbedding` of one text: states and SDXL's pooled."""
        return self._encoder("base", self.pipes.txt2img).encode(text)

    @property
    def prompts(self) -> Any:
        """The base model's `batch.prompt_encoding.PromptEncoder` (cache, chunk padding)."""
        return self._encoder("base", self.pipes.txt2img)

    def text_route(self, prompt: str, negative: str) -> tuple:
        """How a row's text goes to the pipeline (rows of one call must share it)."""
        if not _has_text_encoder(self.pipes.txt2img):
            return ("text",)
        return self._encoder("base", self.pipes.txt2img).route(prompt, negative)

    def text_kwargs(self, text: TextPrompts | PromptEmbeds) -> dict[str, Any]:
        """The pipeline's text arguments: embeddings as given; strings as the syntax reads
        them (`batch.prompt_encoding.PromptEncoder.call_kwargs`)."""
        if isinstance(text, PromptEmbeds) or not _has_text_encoder(self.pipes.txt2img):
            return text.kwargs()
        encoder = self._encoder("base", self.pipes.txt2img)
        return encoder.call_kwargs(text.prompt, text.negative_prompt)

    def _encoder(self, name: str, pipe: Any) -> Any:
        """The PromptEncoder of the base or the refiner; the base's cache follows the active
        LoRA set (the refiner has no LoRA)."""
        if name not in self._text:
            from sdfleet.batch.prompt_encoding import PromptEncoder

            self._text[name] = PromptEncoder(pipe, self.pipes.prompt_syntax)
        if name == "base":
            slots = self.pipes.adapter_slots
            self._text[name].adapter_key = slots.active_key if slots is not None else ()
        return self._text[name]

    @property
    def adapters(self) -> Any:
        """The `batch.adapters.AdapterSlots` of the loaded model (LoRAs loaded into its base
        pipeline): one per `Pipelines`, shared by every sampler on it, since the adapters
        live in the shared modules."""
        if self.pipes.adapter_slots is None:
            from sdfleet.batch.adapters import AdapterSlots

            self.pipes.adapter_slots = AdapterSlots(self.pipes.txt2img)
        return self.pipes.adapter_slots

    def use_loras(self, loras: tuple) -> None:
        """Make `loras` the active set; the embedding cache follows it."""
        if not loras and self.pipes.adapter_slots is None:
            return  # nothing was ever loaded: LoRA is off already
        self.adapters.activate(tuple(loras))

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """(C, H/f, W/f) of the initial noise (f = the VAE's down-sampling factor)."""
        base = self.pipes.txt2img
        factor = base.vae_scale_factor
        return base.unet.config.in_channels, height // factor, width // factor


def _stacked(images: Sequence[Any]) -> Any:
    """B RGB PIL images -> (B, 3, H, W) float32 in [0, 1], by diffusers' own conversion."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.numpy_to_pt(VaeImageProcessor.pil_to_numpy(list(images)))


def _has_text_encoder(pipe: Any) -> bool:
    return getattr(pipe, "tokenizer", None) is not None or hasattr(pipe, "text_encoder_2")


def _image_size(images: Any) -> tuple[int, int]:
    """(width, height) of B PIL images or a (B, 3, H, W) tensor."""
    first = images[0]
    if hasattr(first, "size") and not callable(first.size):
        return first.size
    return int(images.shape[-1]), int(images.shape[-2])
