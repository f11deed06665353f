"""The diffusers step of the animation: plan records in, frames out (2D frames and walk batches).

`PipelineFrames` is the ``step_fn`` of `anim.render` (one 2D frame: img2img, or txt2img for
frame 0) and the batch step of `anim.walk` (txt2img frames with given initial noise). It wraps a
loaded `batch.models.Pipelines` and never mutates it: the job's scheduler goes into pipelines
derived with `from_pipe`, which share the weights.

- Prompts go in as embeddings. Each text is encoded once (cached); a record that blends prompts
  (``blend_prompt`` at ``blend_weight``, walks and 2D ``prompt_transition: blend``) gets the lerp
  of the two texts' embeddings, for the positive and for the negative prompt.
- Each frame gets its own ``torch.Generator`` (CPU) seeded from ``record.seed``.
- img2img ``strength`` (diffusers: the share denoised) is ``record.denoise`` = 1 - Deforum's
  strength. diffusers runs ``int(steps * denoise)`` of the ``steps`` steps; when that is 0 it
  would fail, so the frame runs ``ceil(1 / denoise)`` steps instead: exactly one denoising step,
  at the noise level that denoise asks for (`img2img_steps`). denoise 0 (strength 1: keep the
  previous frame entirely) runs no model: the prepared picture is the frame.
- Outputs with NaN/inf values (fp16 overflow) raise `GenerationError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from sdfleet.anim.plan import FrameRecord
from sdfleet.batch.errors import GenerationError
from sdfleet.batch.schedulers import make_scheduler

if TYPE_CHECKING:
    from sdfleet.anim.spec import AnimationJob
    from sdfleet.batch.models import Pipelines

logger = logging.getLogger(__name__)


def img2img_steps(steps: int, denoise: float, max_steps: int = 1000) -> int | None:
    """num_inference_steps to pass so that img2img runs at least one step at `denoise`.

    diffusers runs int(steps * denoise) steps; if that is 0, ceil(1 / denoise) steps give one.
    None means run no step: denoise is 0, or so small that more than `max_steps` (the
    scheduler's training steps) would be needed; the frame is then the prepared picture.
    """
    if denoise <= 0:
        return None
    if int(steps * denoise) >= 1:
        return steps
    needed = math.ceil(1.0 / denoise)
    while int(needed * denoise) < 1:  # float rounding in the product
        needed += 1
    return needed if needed <= max_steps else None


def lerp_embeds(start: torch.Tensor, end: torch.Tensor | None, weight: float) -> torch.Tensor:
    """(1 - weight) * start + weight * end; start itself when there is no partner or weight 0."""
    if end is None or weight == 0:
        return start
    return torch.lerp(start, end, weight)


class PipelineFrames:
    """Frames from a loaded pipeline pair for one clip (its size and scheduler)."""

    def __init__(self, pipes: Pipelines, width: int, height: int, scheduler: str | None) -> None:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

        self.width, self.height = width, height
        self.device = pipes.device
        overrides: dict[str, Any] = {}
        if scheduler is not None:
            overrides["scheduler"] = make_scheduler(scheduler, pipes.txt2img.scheduler.config)
        self.txt2img = AutoPipelineForText2Image.from_pipe(pipes.txt2img, **overrides)
        self.img2img = AutoPipelineForImage2Image.from_pipe(pipes.txt2img, **overrides)
        for pipe in (self.txt2img, self.img2img):
            pipe.set_progress_bar_config(disable=True)
        self._texts: dict[str, torch.Tensor] = {}

    @classmethod
    def for_job(cls, pipes: Pipelines, job: AnimationJob) -> PipelineFrames:
        return cls(pipes, job.width, job.height, job.scheduler)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H/f, W/f) of the initial noise (f = the VAE's down-sampling factor)."""
        factor = self.txt2img.vae_scale_factor
        channels = self.txt2img.unet.config.in_channels
        return channels, self.height // factor, self.width // factor

    # -------------------------------------------------------------------------- prompts

    def embed_text(self, text: str) -> torch.Tensor:
        """(1, tokens, dim) text-encoder states of one text, cached per clip."""
        if text not in self._texts:
            with torch.inference_mode():
                embeds = self.txt2img.encode_prompt(
                    prompt=text,
                    device=self.device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=False,
                )[0]
            self._texts[text] = embeds
        return self._texts[text]

    def prompt_embeds(self, records: Sequence[FrameRecord]) -> dict[str, torch.Tensor]:
        """prompt_embeds / negative_prompt_embeds (B, tokens, dim), blends lerped."""
        positive, negative = [], []
        for record in records:
            partner = record.blend_prompt
            partner_neg = record.blend_negative_prompt
            positive.append(
                lerp_embeds(
                    self.embed_text(record.prompt), self._maybe(partner), record.blend_weight
                )
            )
            negative.append(
                lerp_embeds(
                    self.embed_text(record.negative_prompt),
                    self._maybe(partner_neg),
                    record.blend_weight,
                )
            )
        return {"prompt_embeds": torch.cat(positive), "negative_prompt_embeds": torch.cat(negative)}

    def _maybe(self, text: str | None) -> torch.Tensor | None:
        return None if text is None else self.embed_text(text)

    # -------------------------------------------------------------------------- steps

    def __call__(self, record: FrameRecord, init: torch.Tensor | None) -> torch.Tensor:
        """One 2D frame: txt2img when init is None, else img2img of init (3, H, W) in [0, 1]."""
        if init is None:
            return self._run(self.txt2img, [record], width=self.width, height=self.height)[0]
        max_steps = self.img2img.scheduler.config.num_train_timesteps
        steps = img2img_steps(record.steps, record.denoise, max_steps)
        if steps is None:
            logger.info(
                "frame %d: denoise %g runs no step; the prepared picture is the frame",
                record.frame,
                record.denoise,
            )
            return init
        if steps != record.steps:
            logger.info(
                "frame %d: %d steps at denoise %g would run none; running %d (one step)",
                record.frame,
                record.steps,
                record.denoise,
                steps,
            )
        return self._run(
            self.img2img,
            [record],
            image=init.unsqueeze(0),
            strength=record.denoise,
            num_inference_steps=steps,
        )[0]

    def walk(self, records: Sequence[FrameRecord], noise: torch.Tensor) -> torch.Tensor:
        """txt2img of records sharing steps and cfg, from initial noise (B, C, h, w)."""
        latents = noise.to(device=self.device, dtype=self.txt2img.unet.dtype)
        return self._run(
            self.txt2img, records, latents=latents, width=self.width, height=self.height
        )

    def _run(self, pipe: Any, records: Sequence[FrameRecord], **kwargs: Any) -> torch.Tensor:
        """One pipeline call; (B, 3, H, W) float32 in [0, 1] on the CPU."""
        first = records[0]
        kwargs.setdefault("num_inference_steps", first.steps)
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in records]
        with torch.inference_mode():
            images = pipe(
                **self.prompt_embeds(records),
                guidance_scale=first.cfg_scale,
                generator=generators,
                output_type="pt",
                **kwargs,
            ).images
        images = images.float().cpu()  # (B, 3, H, W)
        if not torch.isfinite(images).all():
            frames = ", ".join(str(r.frame) for r in records)
            raise GenerationError(
                f"frame(s) {frames}: the model output has NaN/inf values "
                "(fp16 overflow?); try dtype: float32 or bfloat16"
            )
        return images
