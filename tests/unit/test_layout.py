"""The layout shows the architecture: layers point one way (benchmarks and tests import the product)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("kappa", "schemas", "producers", "stream_processors", "sinks")


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_the_product_never_imports_benchmarks_or_tests(package: str) -> None:
    wrong = {str(p.relative_to(REPO)): sorted(_imports(p) & {"benchmarks", "tests"})
             for p in sorted((REPO / package).rglob("*.py"))}
    assert {p: names for p, names in wrong.items() if names} == {}
