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
    package = ".".join(("flashspike", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module if node.level == 0 else ".".join(filter(None, (base, node.module)))
            names.update(f"{module}.{alias.name}" for alias in node.names)
            names.add(module)
    return {name for name in names if name.startswith("flashspike")}


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
