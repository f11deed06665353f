"""Prompts and LoRAs of an animation: checked before any model loads, resolved per frame.

- `prompt_field_problems`: every prompt key's positive and negative text in the job's syntax
  (`batch.prompt_syntax`), and the files its `<lora:...>` tags name, one line per problem.
- `frame_loras`: a frame's LoRA set: the job's `loras`, then its prompt's tags. A frame that
  blends two prompts (walks, ``prompt_transition: blend``) gets both prompts' LoRAs with their
  weights lerped by the blend weight (a LoRA only one prompt names fades in or out), so the
  adapters move with the text embeddings.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sdfleet.anim.prompts import split_negative
from sdfleet.batch.adapters import LoraUse
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.prompt_checks import AdapterContext, row_loras, row_prompt_issues


def prompt_field_problems(job: Any) -> list[str]:
    """Problems of the job's prompt texts and LoRA/embedding fields (may be empty)."""
    try:
        context = job.adapters(None)
    except ConfigError as err:
        return [str(err)]
    texts = {f"prompts[{key!r}]": text for key, text in job.prompts.items()}
    texts["animation_prompts_positive"] = job.animation_prompts_positive
    problems = []
    for field, text in texts.items():
        if not isinstance(text, str):
            continue  # the prompt keys' own check says so
        positive, negative = split_negative(text)
        for _column, value, fix in row_prompt_issues(positive, negative, None, context):
            problems.append(f"{field}: {fix} ({value!r})" if value else f"{field}: {fix}")
    negative = job.animation_prompts_negative
    for _column, _value, fix in row_prompt_issues("", negative, None, context):
        problems.append(f"animation_prompts_negative: {fix}")
    return problems


def frame_loras(record: Any, context: AdapterContext) -> tuple[LoraUse, ...]:
    """The LoRA set of one frame record (see the module docstring)."""
    start = row_loras(record.prompt, None, context)
    if record.blend_prompt is None or record.blend_weight == 0:
        return start
    end = row_loras(record.blend_prompt, None, context)
    return blend_loras(start, end, record.blend_weight)


def blend_loras(
    start: tuple[LoraUse, ...], end: tuple[LoraUse, ...], weight: float
) -> tuple[LoraUse, ...]:
    """(1 - weight) * start + weight * end, per file; a file missing on one side weighs 0."""
    by_path = {use.path: use for use in (*start, *end)}
    first = {use.path: use for use in start}
    last = {use.path: use for use in end}

    def lerp(path: str, attribute: str) -> float:
        a = getattr(first[path], attribute) if path in first else 0.0
        b = getattr(last[path], attribute) if path in last else 0.0
        return (1 - weight) * a + weight * b

    return tuple(
        replace(use, te_weight=lerp(path, "te_weight"), unet_weight=lerp(path, "unet_weight"))
        for path, use in by_path.items()
    )
