"""Scheduler names users write in jobs and manifests, mapped to diffusers classes.

Pure (no torch import) so manifest validation can check names before any model loads.
"""

from __future__ import annotations

from typing import Any

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
