"""`builtin:null`: a measuring instrument, never a default.

A stand-in for a diffusers pipeline that takes the same call the replica makes (prompts,
negative prompts, steps, guidance, one generator per row, txt2img `width`/`height` or img2img
`image`/`strength`, `output_type`) and returns a fixed small picture per row without computing
anything. Running a job on it measures what sdfleet itself costs per row (manifest reading,
batching, PNG encoding with metadata, file writes, results and summary) with the model's cost
taken out: `sdfleet bench --overhead` uses it. Its pictures mean nothing, whatever the size asked
for (always `size_px` square), so it is refused nowhere but chosen only by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NULL_SIZE_PX = 8


class NullOutput:
    """What a diffusers pipeline call returns: `.images`."""

    def __init__(self, images: Any) -> None:
        self.images = images


class NullPipeline:
    """Same surface as the diffusers pipelines the replica drives; `__call__` does no work."""

    def __init__(self, size_px: int = NULL_SIZE_PX) -> None:
        from diffusers import EulerDiscreteScheduler

        # a real scheduler, so a job that names one (`make_scheduler(name, config)`) still works
        self.scheduler = EulerDiscreteScheduler(steps_offset=1)
        ramp = np.linspace(0.0, 1.0, size_px, dtype=np.float32)
        image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 0.5 * ramp[None, :]))
        self.image = np.ascontiguousarray(image.transpose(1, 2, 0))  # (H, W, 3) in [0, 1]
        self.size_px = size_px
        self.calls = 0
        self._picture: Any = None  # the PIL form, made on first use

    def to(self, *args: Any, **kwargs: Any) -> NullPipeline:
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        pass

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        **kwargs: Any,
    ) -> NullOutput:
        """Rows = prompts (or prompt_embeds rows) x num_images_per_prompt; other kwargs ignored."""
        self.calls += 1
        rows = batch_rows(prompt, kwargs.get("prompt_embeds")) * num_images_per_prompt
        images = np.broadcast_to(self.image, (rows, *self.image.shape))  # (B, H, W, 3), no copy
        if output_type == "np":
            return NullOutput(images)
        if output_type == "pt":
            import torch

            return NullOutput(torch.from_numpy(images.copy()).permute(0, 3, 1, 2))  # (B, 3, H, W)
        if self._picture is None:
            from PIL import Image

            self._picture = Image.fromarray((self.image * 255).round().astype("uint8"))
        return NullOutput([self._picture.copy() for _ in range(rows)])


def batch_rows(prompt: str | list[str] | None, prompt_embeds: Any = None) -> int:
    """How many rows a diffusers call asks for."""
    if isinstance(prompt, list):
        return len(prompt)
    if prompt is None and prompt_embeds is not None:
        return int(prompt_embeds.shape[0])
    return 1
