"""Scheduler names users write in jobs and manifests, mapped to diffusers classes; and the one
policy for img2img steps x strength.

Pure (no torch import) so manifest validation and the animation plan can check names and step
counts before any model loads.

Steps x strength: diffusers' img2img runs the last ``int(steps * strength)`` of ``steps``
scheduler steps and fails when that is 0. sdfleet then runs the fewest steps that give one
denoising step at the asked strength (`img2img_steps`), for batch rows and animation frames
alike: the strength is honoured exactly, only the step count grows (A1111 also always runs at
least one img2img step). A strength so small that no schedule of at most the model's training
steps reaches it runs no step: a batch row is refused at validation (it would copy its input), an
animation frame keeps its prepared picture (Deforum's strength 1 = keep the previous frame).
"""

from __future__ import annotations

import math
from typing import Any

TRAIN_TIMESTEPS = 1000  # num_train_timesteps of every SD 1.x/2.x/XL scheduler config
MIN_STRENGTH = 1 / TRAIN_TIMESTEPS  # below it no img2img step runs (`img2img_steps` is None)

# name -> (diffusers class name, extra config overrides for `from_config`)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # PLMS, as SD ships it
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_sde_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}


def scheduler_name_problems(name: str) -> list[str]:
    """What is wrong with a scheduler name: [] for a known one, else a message naming the
    choices."""
    if name in SCHEDULERS:
        return []
    return [f"unknown scheduler {name!r}; choose one of: {', '.join(sorted(SCHEDULERS))}"]


def make_scheduler(name: str, base_config: Any):
    """Build scheduler `name` from a pipeline's scheduler config (diffusers `from_config`)."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


def img2img_steps(steps: int, strength: float, max_steps: int = TRAIN_TIMESTEPS) -> int | None:
    """num_inference_steps to pass so that img2img runs at least one step at `strength`.

    diffusers runs int(steps * strength) steps; if that is 0, the smallest n with
    int(n * strength) >= 1 (about 1 / strength) gives exactly one. None: no step can run, because
    strength is 0 or needs more than `max_steps` (the scheduler's training steps).
    """
    if strength <= 0:
        return None
    if int(steps * strength) >= 1:
        return steps
    needed = math.ceil(1.0 / strength)
    while int(needed * strength) < 1:  # float rounding in the product
        needed += 1
    return needed if needed <= max_steps else None
