"""Every module logs under the `sdfleet` logger: its module logger is `getLogger(__name__)` and
its `__name__` is `sdfleet.<package>.<module>`, so `sdfleet -v` (and any embedding
application) controls all of sdfleet's logging through one logger."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import pytest

PACKAGES = ("sdfleet.batch", "sdfleet.anim", "sdfleet.jobs", "sdfleet.bench")


def module_files() -> list[tuple[str, Path]]:
    """(module name, file) of every module of the packages, found without importing them."""
    found = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None:
            continue
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{package}."):
            module = importlib.util.find_spec(info.name)
            if module is not None and module.origin and module.origin.endswith(".py"):
                found.append((info.name, Path(module.origin)))
    return found


MODULES = module_files()


def module_loggers(tree: ast.Module) -> list[ast.Call]:
    """The `NAME = logging.getLogger(...)` calls at module level."""
    calls = []
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Call) and ast.unparse(value.func) == "logging.getLogger":
            calls.append(value)
    return calls


def test_the_packages_are_found():
    names = {name for name, _ in MODULES}
    assert {"sdfleet.batch.run", "sdfleet.anim.clip", "sdfleet.jobs.cli"} <= names


@pytest.mark.parametrize("name,path", MODULES, ids=[name for name, _ in MODULES])
def test_module_logger_is_named_after_the_module(name, path):
    assert name.startswith("sdfleet.")
    for call in module_loggers(ast.parse(path.read_text(encoding="utf-8"))):
        written = ast.unparse(call.args[0]) if call.args else "<root>"
        # the CLI holds the package logger itself; every other module its own child of it
        assert written == "__name__" or written == "'sdfleet'", f"{path}: getLogger({written})"
