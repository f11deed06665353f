"""The shape of the code base, checked from its source: no import circles among sdfleet's own
modules, imports only downward (`jobs -> anim -> batch`), the benchmark harness outside the
product, and no test settings read by production code.

The import graph is built with `ast` from every module's source, imports inside functions and
under `if TYPE_CHECKING:` included: a circle hidden in a function is still a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# Which layer may import which: a module may import its own layer and those below it.
LAYERS = {"sdfleet.batch": 0, "sdfleet.anim": 1, "sdfleet.jobs": 2, "sdfleet.bench": 3}
PRODUCT = ("sdfleet.batch", "sdfleet.anim", "sdfleet.jobs")


def package_dirs() -> dict[str, Path]:
    """`[tool.setuptools.package-dir]` of pyproject.toml: package name -> folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def project_modules() -> dict[str, Path]:
    """Every module of the installed packages (dotted name -> file), sub-packages included."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every dotted name `module` imports, at any depth of its source (relative ones resolved)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent[: len(parent) - node.level + is_package]
                base = ".".join([*parent, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import mod`


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports (itself excluded)."""
    modules = project_modules()
    return {
        name: {t for t in imported_names(path, name) if t in modules and t != name}
        for name, path in modules.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> tuple[str, int]:
    for package, rank in LAYERS.items():
        if module == package or module.startswith(package + "."):
            return package, rank
    raise AssertionError(f"{module} is in no layer of {sorted(LAYERS)}; add it to LAYERS")


def test_every_package_is_found():
    modules = project_modules()
    assert {"sdfleet.batch.actor", "sdfleet.anim.plan", "sdfleet.jobs.cli"} <= set(modules)
    assert all(layer(name) for name in modules)


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_go_only_downward():
    upward = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        for target in sorted(targets)
        if layer(target)[1] > layer(source)[1]
    ]
    assert not upward, "layers are jobs -> anim -> batch (and bench above them): " + "; ".join(
        upward
    )


def test_the_product_does_not_import_the_benchmark_harness():
    found = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        for target in sorted(targets)
        if source.startswith(PRODUCT) and layer(target)[0] == "sdfleet.bench"
    ]
    assert not found, "; ".join(found)


@pytest.mark.parametrize("text", ["SDFLEET_TEST", "test_hook", "TEST_HOOK"])
def test_production_code_reads_no_test_settings(text):
    modules = project_modules()
    found = [
        name for name in modules if name.startswith(PRODUCT) and text in modules[name].read_text()
    ]
    assert not found, f"{text!r} in {found}: inject faults from tests (tests/batch/faults.py)"


# -- the checker itself, on small graphs -----------------------------------------------------


def test_find_cycles_reports_each_circle_once():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(find_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_and_relative_imports_are_seen(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sdfleet.anim.spec import AnimationJob\n"
        "def f():\n    from . import sibling\n    import sdfleet.jobs.cli\n"
    )
    names = set(imported_names(source, "sdfleet.anim.mod"))
    assert {"sdfleet.anim.spec", "sdfleet.anim.sibling", "sdfleet.jobs.cli"} <= names


def test_the_readme_layout_table_names_every_module():
    """The README's "Layout" table is where a reader finds where each thing happens: a module
    it does not name is one nobody finds."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    modules = [
        f"{package}/{path.name}"
        for package in ("batch", "anim", "jobs")
        for path in sorted((ROOT / package).glob("*.py"))
        if path.name != "__init__.py"
    ]
    assert [name for name in modules if f"`{name}`" not in layout] == []
