"""Fakes for render tests: a deterministic stand-in for the diffusers step, and small jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sdfleet.anim.plan import FrameRecord
from sdfleet.anim.spec import AnimationJob, load_animation_job

SMALL = {"W": 16, "H": 16, "steps_schedule": 4, "noise_type": "uniform"}


def small_job(**fields: Any) -> AnimationJob:
    """A validated 16x16 job; `fields` override (schedules may be plain numbers)."""
    data = {"kind": "animation", "max_frames": 10, "prompts": {"0": "a cat", "5": "a dog"}}
    return load_animation_job(data | SMALL | fields, source="<test>")


def fake_step(record: FrameRecord, init: torch.Tensor | None, size: int = 16) -> torch.Tensor:
    """txt2img: seeded random picture; img2img: mostly the init plus seeded noise, by denoise."""
    generator = torch.Generator().manual_seed(record.seed)
    fresh = torch.rand((3, size, size), generator=generator)
    if init is None:
        return fresh
    return torch.lerp(init, fresh, record.denoise).clamp(0, 1)


class FakeModel:
    """The `anim.clip.FrameModel` a clip needs, counting calls; optionally failing at a frame."""

    def __init__(self, size: int = 16, fail_at: int | None = None) -> None:
        self.size, self.fail_at = size, fail_at
        self.latent_shape = (4, size // 8, size // 8)
        self.calls: list[int] = []

    def __call__(self, record: FrameRecord, init: torch.Tensor | None) -> torch.Tensor:
        self._check(record)
        return fake_step(record, init, self.size)

    def walk(self, records: Sequence[FrameRecord], noise: torch.Tensor) -> torch.Tensor:
        for record in records:
            self._check(record)
        means = noise.flatten(1).mean(dim=1)  # (B,)
        base = torch.stack([fake_step(r, None, self.size) for r in records])
        return (base * 0.5 + 0.5 * torch.sigmoid(means)[:, None, None, None]).clamp(0, 1)

    def _check(self, record: FrameRecord) -> None:
        self.calls.append(record.frame)
        if record.frame == self.fail_at:
            raise RuntimeError(f"model failed at frame {record.frame}")
