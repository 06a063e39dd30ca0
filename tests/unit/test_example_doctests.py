"""The examples' modules' ``>>>`` examples run too (the examples are projects, not packages:
``--doctest-modules`` does not collect them; they load through their definition)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from kappa.pipeline import load

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted((p.parent, p.stem) for p in (REPO / "examples").glob("*/*.py"))


@pytest.mark.parametrize(("project", "module"), MODULES, ids=[f"{p.name}/{m}" for p, m in MODULES])
def test_example_doctests(project: Path, module: str) -> None:
    result = doctest.testmod(load(project).module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
