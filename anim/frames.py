"""The diffusers step of the animation: plan records in, frames out (2D frames and walk batches).

`PipelineFrames` is the ``step_fn`` of `anim.render` (one 2D frame: img2img, or txt2img for
frame 0) and the batch step of `anim.walk` (txt2img frames with given initial noise). It makes no
diffusers call itself: every frame is one `batch.sampler.Sampler` call (generators, the job's
scheduler on a pipeline derived with `from_pipe`, the NaN check); on top of it this module

1. encodes each text once per clip (cached) and passes prompts as embeddings (B, tokens, dim);
   a record that blends prompts (``blend_prompt`` at ``blend_weight``: walks and 2D
   ``prompt_transition: blend``) gets the lerp of the two texts' embeddings, positive and
   negative;
2. maps a record to the call: frame seed -> the row's seed, ``steps``, ``cfg_scale``, and for
   img2img ``strength`` = ``record.denoise`` (diffusers: the share denoised) = 1 - Deforum's
   strength. Steps x strength follow the one policy (`batch.schedulers.img2img_steps`): too few
   steps for one denoising step run the fewest that give one; a denoise that no step can reach
   (0: Deforum's strength 1, keep the previous frame) runs no model, the prepared picture is the
   frame.

Failure policy: a frame whose output has NaN/inf values (fp16 overflow) raises
`GenerationError` naming the frame(s); the clip runner decides what that means for the clip.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from sdfleet.anim.plan import FrameRecord
from sdfleet.batch.errors import GenerationError
from sdfleet.batch.sampler import NAN_FIX, PromptEmbeds, Sample, Sampler
from sdfleet.batch.schedulers import img2img_steps

if TYPE_CHECKING:
    from sdfleet.anim.spec import AnimationJob
    from sdfleet.batch.models import Pipelines

logger = logging.getLogger(__name__)


def lerp_embeds(start: torch.Tensor, end: torch.Tensor | None, weight: float) -> torch.Tensor:
    """(1 - weight) * start + weight * end; start itself when there is no partner or weight 0."""
    if end is None or weight == 0:
        return start
    return torch.lerp(start, end, weight)


class PipelineFrames:
    """Frames from one loaded model for one clip (its size and scheduler)."""

    def __init__(
        self, model: Sampler | Pipelines, width: int, height: int, scheduler: str | None
    ) -> None:
        # a Sampler is shared by the clips of one actor (its derived pipelines are cached)
        self.sampler = model if isinstance(model, Sampler) else Sampler(model)
        self.width, self.height = width, height
        self.scheduler = scheduler
        self._texts: dict[str, torch.Tensor] = {}

    @classmethod
    def for_job(cls, model: Sampler | Pipelines, job: AnimationJob) -> PipelineFrames:
        return cls(model, job.width, job.height, job.scheduler)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H/f, W/f) of the initial noise (f = the VAE's down-sampling factor)."""
        return self.sampler.latent_shape(self.width, self.height)

    # -------------------------------------------------------------------------- prompts

    def embed_text(self, text: str) -> torch.Tensor:
        """(1, tokens, dim) text-encoder states of one text, cached per clip."""
        if text not in self._texts:
            self._texts[text] = self.sampler.encode_text(text)
        return self._texts[text]

    def prompt_embeds(self, records: Sequence[FrameRecord]) -> dict[str, torch.Tensor]:
        """prompt_embeds / negative_prompt_embeds (B, tokens, dim), blends lerped. A text longer
        than one 77-token window has several chunks: every text of the call is padded with
        empty chunks to the longest (as A1111 pads a negative to its prompt's length)."""
        texts = [
            (
                record.prompt,
                record.blend_prompt,
                record.negative_prompt,
                record.blend_negative_prompt,
            )
            for record in records
        ]
        tokens = max(self.embed_text(t).shape[1] for row in texts for t in row if t is not None)
        positive, negative = [], []
        for record, (start, end, neg_start, neg_end) in zip(records, texts):
            weight = record.blend_weight
            positive.append(
                lerp_embeds(self._padded(start, tokens), self._maybe(end, tokens), weight)
            )
            negative.append(
                lerp_embeds(self._padded(neg_start, tokens), self._maybe(neg_end, tokens), weight)
            )
        return {"prompt_embeds": torch.cat(positive), "negative_prompt_embeds": torch.cat(negative)}

    def _padded(self, text: str, tokens: int) -> torch.Tensor:
        embeds = self.embed_text(text)
        if embeds.shape[1] >= tokens:
            return embeds
        empty = self.embed_text("")  # one chunk: BOS, EOS, padding
        repeats = (tokens - embeds.shape[1]) // empty.shape[1]
        return torch.cat([embeds, empty.repeat(1, repeats, 1)], dim=1)

    def _maybe(self, text: str | None, tokens: int) -> torch.Tensor | None:
        return None if text is None else self._padded(text, tokens)

    # -------------------------------------------------------------------------- steps

    def __call__(self, record: FrameRecord, init: torch.Tensor | None) -> torch.Tensor:
        """One 2D frame: txt2img when init is None, else img2img of init (3, H, W) in [0, 1]."""
        if init is None:
            return self._run([record], width=self.width, height=self.height)[0]
        max_steps = self.sampler.train_timesteps(self.scheduler)
        if img2img_steps(record.steps, record.denoise, max_steps) is None:
            logger.info(
                "frame %d: denoise %g runs no step; the prepared picture is the frame",
                record.frame,
                record.denoise,
            )
            return init
        return self._run([record], image=init.unsqueeze(0), strength=record.denoise)[0]

    def walk(self, records: Sequence[FrameRecord], noise: torch.Tensor) -> torch.Tensor:
        """txt2img of records sharing steps and cfg, from initial noise (B, C, h, w)."""
        return self._run(records, latents=noise, width=self.width, height=self.height)

    def _run(self, records: Sequence[FrameRecord], **mode: Any) -> torch.Tensor:
        """One sampler call; (B, 3, H, W) float32 in [0, 1] on the CPU."""
        first = records[0]
        sample = Sample(
            seeds=[record.seed for record in records],
            text=PromptEmbeds(**self.prompt_embeds(records)),
            num_inference_steps=first.steps,
            guidance_scale=first.cfg_scale,
            scheduler=self.scheduler,
            **mode,
        )
        sampled = self.sampler.sample(sample)
        failed = [str(r.frame) for r, error in zip(records, sampled.errors) if error is not None]
        if failed:
            raise GenerationError(f"frame(s) {', '.join(failed)}: {NAN_FIX}")
        return sampled.images
