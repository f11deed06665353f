"""Prompt templates over matrix axes, in A1111's Dynamic Prompts syntax.

A template is text with `{axis}` references (a plain name in braces) and Dynamic Prompts syntax
(`{a|b|c}`, `{2$$a|b|c}`, `__wildcard__`, `#` comments ...), which the `dynamicprompts`
library itself samples, so the syntax and its meaning are the ones users of the A1111
extension know. A row's prompt is: the axis values put in, then one random sample at the row's
image seed - as the extension does by default (its choices follow the image seed).

Parsing costs ~5 ms a template and a matrix may have 100k combinations, so a template is parsed
once with a placeholder per axis reference and the values put in after sampling. That gives
the same text as parsing each filled-in template whenever the values are plain text (tested);
a value that holds syntax of its own is filled in first and parsed as its own template.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfleet.batch.errors import ConfigError

logger = logging.getLogger(__name__)

AXIS_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # {name}: an axis; {a|b}: a variant
WILDCARD_REF = re.compile(r"__([^\s_{}][^\s{}]*?)__")
_PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: literal text to the parser


def axis_refs(template: str) -> list[str]:
    """The axis names a template refers to, in order of first use."""
    return list(dict.fromkeys(AXIS_REF.findall(template)))


def check_template_axes(template: str, field: str, known: list[str], source: str) -> None:
    """ConfigError for a `{name}` that names no axis (nor a column an axis carries)."""
    for name in axis_refs(template):
        if name not in known:
            from sdfleet.batch.errors import suggest_name

            raise ConfigError(
                f"{source}: {field} {template!r} names {{{name}}}, which is no axis"
                f"{suggest_name(name, known)}; axes and their columns: {', '.join(known)}. "
                "A variant needs a '|' ({a|b}); an axis needs an entry under `axes`"
            )


@dataclass(frozen=True)
class _Parsed:
    command: Any  # a dynamicprompts Command, or None for text without syntax
    names: tuple[str, ...]  # axis names, placeholder i = names[i]


class PromptSampler:
    """Samples templates at a seed with a `dynamicprompts` random context (the same set-up as
    its RandomPromptGenerator), parsing each distinct template once."""

    def __init__(self, wildcard_dir: Path | None = None) -> None:
        from random import Random

        from dynamicprompts.commands.base import SamplingMethod
        from dynamicprompts.sampling_context import SamplingContext
        from dynamicprompts.wildcards import WildcardManager

        self.wildcards = WildcardManager(wildcard_dir) if wildcard_dir else WildcardManager()
        self._context = SamplingContext(
            wildcard_manager=self.wildcards,
            default_sampling_method=SamplingMethod.RANDOM,
            rand=Random(),
        )
        self._parsed: dict[str, _Parsed] = {}
        self._plain: dict[str, bool] = {}

    def fill(self, template: str, values: dict[str, Any], seed: int) -> str:
        """`template` with the axis values put in, then sampled at `seed`."""
        texts = {name: str(values[name]) for name in axis_refs(template)}
        if all(self.is_plain(text) for text in texts.values()):
            parsed = self._parse(template, with_placeholders=True)
            sampled = self._sample(parsed, seed)
            for i, name in enumerate(parsed.names):
                sampled = sampled.replace(_PLACEHOLDER.format(i), texts[name])
            return sampled
        filled = AXIS_REF.sub(lambda m: texts[m.group(1)], template)
        return self._sample(self._parse(filled, with_placeholders=False), seed)

    def is_plain(self, text: str) -> bool:
        """True when the parser reads `text` as itself (no variants, wildcards, comments)."""
        if text not in self._plain:
            parsed = self._parse(text, with_placeholders=False)
            self._plain[text] = isinstance(parsed.command, str) or self._sample(parsed, 0) == text
        return self._plain[text]

    def _parse(self, template: str, with_placeholders: bool) -> _Parsed:
        key = ("p:" if with_placeholders else "f:") + template
        if key not in self._parsed:
            names = tuple(axis_refs(template)) if with_placeholders else ()
            text = template
            for i, name in enumerate(names):
                text = text.replace("{" + name + "}", _PLACEHOLDER.format(i))
            command = None
            if any(mark in text for mark in ("{", "}", "__", "#")):
                from dynamicprompts.parser.parse import parse

                command = parse(text, parser_config=self._context.parser_config)
            self._parsed[key] = _Parsed(text if command is None else command, names)
        return self._parsed[key]

    def _sample(self, parsed: _Parsed, seed: int) -> str:
        if isinstance(parsed.command, str):
            return parsed.command
        self._context.rand.seed(seed)
        return str(next(iter(self._context.sample_prompts(parsed.command, 1))))


def wildcard_problems(texts: list[str], sampler: PromptSampler, wildcard_dir: Path | None) -> list:
    """One line per `__name__` (in the texts or, nested, in wildcard files) with no values."""
    problems, seen = [], set()
    pending = [name for text in texts for name in WILDCARD_REF.findall(text)]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        values = list(sampler.wildcards.get_values(name)) if wildcard_dir else []
        if not values:
            problems.append(_missing_wildcard(name, wildcard_dir))
        pending += [inner for value in values for inner in WILDCARD_REF.findall(value)]
    return problems


def _missing_wildcard(name: str, wildcard_dir: Path | None) -> str:
    if wildcard_dir is None:
        return f"__{name}__ is a wildcard, but the matrix names no `wildcards:` folder"
    files = [p for p in wildcard_dir.glob(f"{name}.*") if p.is_file()]
    if files:
        return f"__{name}__: {files[0]} is empty (one value a line; '#' starts a comment)"
    return (
        f"__{name}__: no wildcard file {name}.txt (or .yaml/.json) in {wildcard_dir}; add it "
        "or fix the name"
    )
