"""The diffusers step of the animation: plan records in, frames out (2D frames and walk batches).

`PipelineFrames` is the ``step_fn`` of `anim.render` (one 2D frame: img2img, or txt2img for
frame 0) and the batch step of `anim.walk` (txt2img frames with given initial noise). It makes no
diffusers call itself: every frame is one `batch.sampler.Sampler` call (generators, the job's
scheduler on a pipeline derived with `from_pipe`, the NaN check); on top of it this module

1. encodes each text once per clip (cached; in the job's prompt syntax, A1111's by default:
   weights, BREAK, long prompts in 75-token chunks) and passes prompts as embeddings
   (B, tokens, dim), with SDXL's pooled embeddings (B, dim) where the model has them (SDXL's
   size conditioning is the frame size, which diffusers derives from it);
   a record that blends prompts (``blend_prompt`` at ``blend_weight``: walks and 2D
   ``prompt_transition: blend``) gets the lerp of the two texts' embeddings (and pooled
   embeddings), positive and negative;
2. makes the frame's LoRAs active (`anim.frame_adapters.frame_loras`: the job's, the prompt's
   tags, lerped across a blend); a walk batch whose frames differ there runs one call per set;
3. maps a record to the call: frame seed -> the row's seed, ``steps``, ``cfg_scale``, and for
   img2img ``strength`` = ``record.denoise`` (diffusers: the share denoised) = 1 - Deforum's
   strength. Steps x strength follow the one policy (`batch.schedulers.img2img_steps`): too few
   steps for one denoising step run the fewest that give one; a denoise that no step can reach
   (0: Deforum's strength 1, keep the previous frame) runs no model, the prepared picture is the
   frame.

ControlNet (the job's `controlnets`, loaded with the model): a 2D img2img frame's control image
is made from its prepared init, the previous frame warped by the motion (colour-matched,
contrast, noise: the picture img2img starts from, Deforum's ControlNet "loopback" input), by each
unit's preprocessor (seeded by the frame's seed), so motion keeps the structure the previous
frame had. Frame 0 without an init image has no previous frame and runs without ControlNet; walk
frames (txt2img) run without it too.

Failure policy: a frame whose output has NaN/inf values (fp16 overflow) raises
`GenerationError` naming the frame(s); the clip runner decides what that means for the clip.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from sdfleet.anim.frame_adapters import frame_loras
from sdfleet.anim.plan import FrameRecord
from sdfleet.batch.adapters import adapter_key
from sdfleet.batch.errors import GenerationError
from sdfleet.batch.prompt_checks import AdapterContext
from sdfleet.batch.sampler import NAN_FIX, Control, PromptEmbeds, Sample, Sampler
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
        self,
        model: Sampler | Pipelines,
        width: int,
        height: int,
        scheduler: str | None,
        adapters: AdapterContext | None = None,
        controlnets: tuple = (),
    ) -> None:
        # a Sampler is shared by the clips of one actor (its derived pipelines are cached)
        self.sampler = model if isinstance(model, Sampler) else Sampler(model)
        self.width, self.height = width, height
        self.scheduler = scheduler
        self.adapters = adapters or AdapterContext()
        self.controlnets = controlnets  # `batch.controlnets.ControlNetUse`s, loaded in model
        self._texts: dict[tuple[str, tuple], Any] = {}

    @classmethod
    def for_job(cls, model: Sampler | Pipelines, job: AnimationJob) -> PipelineFrames:
        units = tuple(unit.use() for unit in job.controlnets)
        return cls(model, job.width, job.height, job.scheduler, job.adapters(None), units)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H/f, W/f) of the initial noise (f = the VAE's down-sampling factor)."""
        return self.sampler.latent_shape(self.width, self.height)

    # -------------------------------------------------------------------------- prompts

    def embed_text(self, text: str) -> torch.Tensor:
        """(1, tokens, dim) text-encoder states of one text, cached per clip."""
        return self.embedding(text).embeds

    def embedding(self, text: str) -> Any:
        """A `batch.prompt_encoding.TextEmbedding` of one text under the active LoRA set,
        cached per clip: states (1, tokens, dim) and SDXL's pooled (1, dim) or None."""
        key = (text, self.sampler.prompts.adapter_key)
        if key not in self._texts:
            self._texts[key] = self.sampler.embed(text)
        return self._texts[key]

    def prompt_embeds(self, records: Sequence[FrameRecord]) -> dict[str, torch.Tensor]:
        """prompt_embeds / negative_prompt_embeds (B, tokens, dim) and, for SDXL, the pooled
        pair (B, dim); blends lerped. A text longer than one 77-token window has several
        chunks: every text of the call is padded with empty chunks to the longest (as A1111
        pads a negative to its prompt's length)."""
        pairs = [(r.prompt, r.blend_prompt) for r in records]
        pairs += [(r.negative_prompt, r.blend_negative_prompt) for r in records]
        chunks = max(self.embedding(t).chunks for pair in pairs for t in pair if t is not None)
        weights = [r.blend_weight for r in records] * 2
        states, pooled = [], []
        for (start, end), weight in zip(pairs, weights):
            first, last = self.embedding(start), self._maybe(end)
            partner = None if last is None else self.sampler.prompts.padded(last, chunks)
            states.append(lerp_embeds(self.sampler.prompts.padded(first, chunks), partner, weight))
            if first.pooled is not None:
                pooled.append(lerp_embeds(first.pooled, last and last.pooled, weight))
        rows = len(records)
        embeds = {
            "prompt_embeds": torch.cat(states[:rows]),
            "negative_prompt_embeds": torch.cat(states[rows:]),
        }
        if pooled:
            embeds["pooled_prompt_embeds"] = torch.cat(pooled[:rows])
            embeds["negative_pooled_prompt_embeds"] = torch.cat(pooled[rows:])
        return embeds

    def _maybe(self, text: str | None) -> Any:
        return None if text is None else self.embedding(text)

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
        control = self.control(record, init)
        image = init.unsqueeze(0)  # (1, 3, H, W)
        return self._run([record], image=image, strength=record.denoise, control=control)[0]

    def control(self, record: FrameRecord, init: torch.Tensor) -> Control | None:
        """The frame's ControlNet conditioning, from its prepared init (3, H, W) in [0, 1]."""
        if not self.controlnets:
            return None
        from sdfleet.batch.controlnets import control_images
        from sdfleet.batch.replica import to_pil

        picture = to_pil(init.permute(1, 2, 0).numpy())  # (H, W, 3) uint8, as frames are
        size = (self.width, self.height)
        images = control_images(
            self.controlnets, [None] * len(self.controlnets), picture, size, record.seed, None
        )
        return Control.of_units(self.controlnets, [[image] for image in images])

    def walk(self, records: Sequence[FrameRecord], noise: torch.Tensor) -> torch.Tensor:
        """txt2img of records sharing steps and cfg, from initial noise (B, C, h, w); one
        call per LoRA set (a call has one)."""
        sets = [adapter_key(frame_loras(r, self.adapters)) for r in records]
        if len(set(sets)) == 1:
            return self._run(records, latents=noise, width=self.width, height=self.height)
        images: list[Any] = [None] * len(records)
        for key in dict.fromkeys(sets):
            picked = [i for i, k in enumerate(sets) if k == key]
            part = self._run(
                [records[i] for i in picked],
                latents=noise[picked],
                width=self.width,
                height=self.height,
            )
            for index, image in zip(picked, part):
                images[index] = image
        return torch.stack(images)

    def _run(self, records: Sequence[FrameRecord], **mode: Any) -> torch.Tensor:
        """One sampler call; (B, 3, H, W) float32 in [0, 1] on the CPU."""
        first = records[0]
        loras = frame_loras(first, self.adapters)
        self.sampler.use_loras(loras)  # before the text is encoded: a LoRA may change it
        sample = Sample(
            seeds=[record.seed for record in records],
            text=PromptEmbeds(**self.prompt_embeds(records)),
            num_inference_steps=first.steps,
            guidance_scale=first.cfg_scale,
            scheduler=self.scheduler,
            loras=loras,
            **mode,
        )
        sampled = self.sampler.sample(sample)
        failed = [str(r.frame) for r, error in zip(records, sampled.errors) if error is not None]
        if failed:
            raise GenerationError(f"frame(s) {', '.join(failed)}: {NAN_FIX}")
        return sampled.images
