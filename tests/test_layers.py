"""The house rules, read from the source with ``ast`` (nothing is imported, no framework needed):
imports point one way (no cycles, the package root imported by nothing inside the package), and
only ``backends/`` (plus the loader that ports weights into gluonnlp) imports a framework or
tells frameworks apart by module name."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "embgrad"
FRAMEWORKS = ("torch", "mxnet")
#: modules outside backends/ allowed to import a framework: loaders of framework weights
FRAMEWORK_LOADERS = {"embgrad.models.minilm_gluon"}
#: core modules of the dispatch between frameworks, allowed to read ``__module__``: the Backend
#: base (which model library masks padding) and the registry (names a model's type in its error)
DISPATCH = {"embgrad.core.contract", "embgrad.core.registry"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> Iterator[tuple[str, int]]:
    """(absolute module imported, line) for every import statement of module ``name``,
    function-level (lazy) imports included: they run when the function does."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    here = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from pkg import submodule`
                if f"{target}.{alias.name}" in MODULES:
                    yield f"{target}.{alias.name}", node.lineno


def _edges(name: str) -> set[str]:
    """Modules of the package that importing ``name`` runs: each imported module and its
    parent packages (whose ``__init__`` runs first), less the parents ``name`` shares (they are
    already being imported when ``name`` runs)."""
    own = set()
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        own.add(".".join(parts[:i]))
    out = set()
    for target, _ in _imports(name):
        tparts = target.split(".")
        for i in range(1, len(tparts) + 1):
            mod = ".".join(tparts[:i])
            if mod in MODULES and mod not in own:
                out.add(mod)
    out.discard(name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child, 2) == 1:
                return [*path[path.index(child) :], child]
            elif colour.get(child, 2) == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_graph_sees_relative_lazy_and_parent_package_imports():
    edges = _edges("embgrad.backends.torch")
    assert {"embgrad.core.contract", "embgrad.core.ops", "embgrad.backends.torch_ops"} <= edges
    assert "embgrad.backends" not in edges  # its own package is already being imported
    assert "embgrad.explain" in _edges("embgrad.data.config")  # a lazy import inside a function


def test_no_import_cycles():
    graph = {name: _edges(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_inside_the_package_imports_its_root():
    offenders = [
        f"{name} (line {line})"
        for name in MODULES
        if name != PACKAGE
        for target, line in _imports(name)
        if target == PACKAGE
    ]
    assert not offenders, "imports the package root (use embgrad._version etc.): " + ", ".join(
        offenders
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_only_backends_import_a_framework(framework):
    offenders = [
        f"{name} (line {line})"
        for name in MODULES
        if not name.startswith(f"{PACKAGE}.backends") and name not in FRAMEWORK_LOADERS
        for target, line in _imports(name)
        if target.split(".")[0] == framework
    ]
    assert not offenders, f"{framework} imported outside backends/: " + ", ".join(offenders)


def test_only_backends_tell_frameworks_apart_by_module_name():
    offenders = []
    for name, path in MODULES.items():
        if name.startswith(f"{PACKAGE}.backends") or name in DISPATCH:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "__module__":
                offenders.append(f"{name} (line {node.lineno})")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "modules"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in FRAMEWORKS
            ):
                offenders.append(f"{name} (line {node.lineno}: sys.modules.get)")
    assert not offenders, "framework sniffing outside backends/: " + ", ".join(offenders)


#: The bottom of the house, lowest first: a module of one of these layers imports only modules
#: of its own layer or of layers below it (``errors`` ← ``core`` ← ``backends``); the core
#: reaches the backends only through the table they install in ``core.registry``.
BOTTOM_LAYERS = ("errors", "core", "backends")


@pytest.mark.parametrize("layer", BOTTOM_LAYERS)
def test_the_bottom_layers_import_only_downwards(layer):
    allowed = {f"{PACKAGE}.{name}" for name in BOTTOM_LAYERS[: BOTTOM_LAYERS.index(layer) + 1]}
    offenders = [
        f"{name} -> {target}"
        for name in MODULES
        if name == f"{PACKAGE}.{layer}" or name.startswith(f"{PACKAGE}.{layer}.")
        for target in sorted(_edges(name))
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    ]
    assert not offenders, f"{layer} imports above itself: " + ", ".join(offenders)
