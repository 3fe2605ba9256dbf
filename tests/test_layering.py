"""Imports run one way: the library never imports its examples, and the neurons never import the
memory layers (which speak to them through backends.autograd.is_spike_output and
backends.recompute.mark)."""

import ast
import sys
from pathlib import Path

import pytest

import flashspike

PACKAGE = Path(flashspike.__file__).parent


def _imported(path: Path) -> set[str]:
    """Every flashspike module that ``path`` imports, anywhere in it (functions included), absolute."""
    return {name for name in _imported_names(path, with_modules=True) if name.startswith("flashspike")}


def _imported_names(path: Path, with_modules: bool) -> set[str]:
    """The absolute names ``path`` imports: ``import a.b`` gives a.b, ``from a import c`` gives a.c (and a
    itself when ``with_modules``: c may be a name defined in a rather than a module)."""
    package = ".".join(("flashspike", *path.relative_to(PACKAGE).with_suffix("").parts)).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package  # a module's package; for __init__.py, its own package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module if node.level == 0 else ".".join(filter(None, (base, node.module)))
            names.update(f"{module}.{alias.name}" for alias in node.names)
            if with_modules:
                names.add(module)
    return names


def _sources(*folders):
    return sorted(p for folder in folders for p in (PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("."), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_examples_import_the_examples(path):
    if path.relative_to(PACKAGE).parts[0] == "examples":
        return
    assert not {name for name in _imported(path) if name.startswith("flashspike.examples")}


@pytest.mark.parametrize("path", _sources("backends"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_neurons_import_no_memory_layer(path):
    assert not {name for name in _imported(path) if name.startswith("flashspike.memory")}


def test_the_checker_sees_relative_imports_inside_functions(tmp_path, monkeypatch):
    folder = tmp_path / "flashspike" / "benchmarks"
    folder.mkdir(parents=True)
    source = folder / "worker.py"
    source.write_text("def build():\n    from ..examples.csnn import CSNN\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "flashspike")
    assert _imported(source) == {"flashspike.examples.csnn", "flashspike.examples.csnn.CSNN"}


def _module_graph(folder: str) -> dict[str, set[str]]:
    """Which modules of ``folder`` each of its modules imports (a package counts as its __init__)."""
    modules = {}
    for path in _sources(folder):
        parts = ("flashspike", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported_names(path, with_modules=False):
            while imported and imported not in modules:  # "pkg.module.Class" -> "pkg.module"
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [node, target] if target in path else [node, target]
            if target not in state and (found := visit(target, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_the_backends_import_one_another_without_a_cycle():
    graph = _module_graph("backends")
    assert "flashspike.backends.choice" in graph and graph["flashspike.backends.choice"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
