"""YAML read with bounded cost: job files come from users, and YAML can be hostile.

PyYAML's `safe_load` runs no code, but three things still get through it:

- an alias bomb ("billion laughs"): a few hundred bytes whose aliases expand to 10^9 values. PyYAML
  shares the aliased objects, so loading is cheap; the blow-up comes later, when validation walks
  the expanded tree (minutes and gigabytes). So the node tree is measured with every alias
  expanded, and refused past `MAX_NODES`;
- deep nesting: PyYAML's composer recurses once per level (a raw RecursionError). The depth is
  counted first on the parser's flat event stream, which does not recurse;
- a duplicate key: `safe_load` keeps the last value without a word. Here it is an error naming
  the key and both lines.

`load_yaml` does the three checks in that order and raises `ConfigError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sdfleet.batch.errors import ConfigError

MAX_BYTES = 4 * 1024 * 1024  # a job file is small; big tables belong in manifests
MAX_DEPTH = 64
MAX_NODES = 200_000  # with aliases expanded; a job with 5,000 clips of 20 fields is 100k


def read_yaml_file(path: str | Path) -> Any:
    """The file's YAML document, or a ConfigError naming the file and what to fix."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(
                f"{path}: {size} bytes is too large for a job file (at most {MAX_BYTES}); "
                "put long tables in a Parquet manifest and name it with `manifest:`"
            )
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read job file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the job file as UTF-8"
        ) from None
    return load_yaml(text, str(path))


def load_yaml(text: str, source: str) -> Any:
    """Parse `text` (named `source` in errors) with bounded depth, size and no duplicate keys."""
    try:
        check_depth(text, source)
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            return None
        check_expanded_size(node, source)
        return _Loader.construct_checked(node)
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def check_depth(text: str, source: str) -> None:
    """Nesting deeper than MAX_DEPTH raises, found on the event stream (no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise ConfigError(
                    f"{source}: line {line}: YAML nested more than {MAX_DEPTH} levels deep; "
                    "a job file needs a few levels - flatten the structure"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def check_expanded_size(root: yaml.Node, source: str) -> None:
    """Count nodes as validation will see them (aliases expanded); past MAX_NODES raises."""
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(
                f"{source}: the YAML expands to more than {MAX_NODES} values (aliases such as "
                "*name repeat their anchor's whole value); write the values out, or use fewer "
                "nested aliases"
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key given twice."""

    source = "<yaml>"

    @classmethod
    def construct_checked(cls, node: yaml.Node) -> Any:
        loader = cls("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is None:
                seen[key] = line
            else:
                raise _DuplicateKey(
                    f"line {line}: key {key!r} is given twice (first on line {first}); "
                    "YAML would keep only the last one - keep one of them"
                )
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    pass
