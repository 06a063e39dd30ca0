"""The layout shows the architecture: layers point one way (benchmarks and tests import the product)."""

from __future__ import annotations

import ast
import shlex
import tomllib
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


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _uses(path: Path, name: str, known: set[str]) -> set[str]:
    """Product modules that module ``name`` (at ``path``) imports or names in a string (importlib)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets = [node.value]
        for target in targets:
            while target:  # importing a.b.c imports a.b and a
                if target in known:
                    found.add(target)
                target = target.rpartition(".")[0]
    return found


def test_every_product_module_is_used_by_the_product() -> None:
    """Reachable from an entry point: ``kappa`` and its commands, ``python -m sinks|stream_processors``.

    A module only tests or benchmarks use belongs under ``tests/`` or ``benchmarks/``.
    """
    paths = {_module(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}
    known = set(paths)
    roots = {m for m in known if m.startswith("kappa.cli") or m.endswith(".__main__")}
    seen, todo = set(roots), list(roots)
    while todo:
        name = todo.pop()
        for used in _uses(paths[name], name, known) - seen:
            seen.add(used)
            todo.append(used)
    assert sorted(known - seen) == []


def test_the_doctests_of_every_package_run_with_the_tests() -> None:
    """``make test`` (pytest without paths: the testpaths) and ``make unit`` collect the packages' doctests."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in config["addopts"].split()
    assert set(PACKAGES) <= set(config["testpaths"])
    makefile = (REPO / "Makefile").read_text()
    test_args = shlex.split(makefile.split("\ntest:")[1].splitlines()[1])[3:]  # after "python -m pytest"
    unit_args = shlex.split(makefile.split("\nunit:")[1].splitlines()[1])[3:]
    assert [a for a in test_args if (REPO / a).exists()] == [], test_args  # so the testpaths apply
    assert set(PACKAGES) <= set(unit_args), unit_args
