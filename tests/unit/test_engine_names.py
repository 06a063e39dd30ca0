"""Nothing in the engine names an example's inputs, fields, windows, models or views.

The engine (``kappa``, ``stream_processors``, ``sinks``, ``producers``, ``schemas``) runs any
pipeline from its definition; the examples under ``examples/`` are its users. This test reads
every example's definition, collects the names it declares (inputs and their schema stems,
fields of its schemas, enrichment fields, windows, sessions, joins, their tables and
aggregations, models, their scores and score fields, declared views), takes away the names
Kappa gives every pipeline itself (lineage, window, scores and session/join columns, its own
tables' columns) and looks for what is left in the engine's code: identifiers (names,
attributes, functions, classes, arguments, keywords) and the words of string constants.
Docstrings and comments are prose (their doctests run against the default example): not
scanned.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path

import pytest

from kappa.pipeline import load
from kappa.pipeline.derive import LINEAGE_FIELDS, scores_schema, window_schema

REPO = Path(__file__).resolve().parents[2]
ENGINE = ("kappa", "stream_processors", "sinks", "producers", "schemas")
EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/pipeline.toml"))

GENERIC_WORDS = {
    "value": "a record's value, a metric's value: Kafka's and Python's word before any example's field",
    "kind": "the kind of an output, a generator event, a Prometheus metric",
    "unit": "a duration's unit",
    "metric": "a Prometheus metric (kappa.metrics)",
    "segment": "Kafka's segment.ms topic config",
    "scores": "the kind of output Kappa derives for every model (and the [models.*] key)",
    "sessions": "the [sessions.*] entries and their operator",
    "url": "an endpoint's URL (registry, ClickHouse, Prometheus)",
    "plan": "a decoder's compiled plan (schemas/serde.py)",
}
"""English or Kafka words that an example also uses as a field name, with why the engine may say them."""

ALLOWED_IN: dict[tuple[str, str], str] = {
    ("stream_processors/operators/model.py", "label_time"): "a local: when a label arrived (any model's labels)",
}
"""(module, name) pairs allowed in one module only, with why."""


def _engine_owned() -> set[str]:
    """Column names Kappa derives for every pipeline (so also in the examples' schemas)."""
    from sinks.rows import KAPPA_TABLES, LINEAGE

    owned = {f["name"] for f in LINEAGE_FIELDS} | {n for n, _ in LINEAGE}
    owned |= {c for t in KAPPA_TABLES for c, _ in t.columns}
    for ex in EXAMPLES:
        pipe = load(ex)
        for w in pipe.windows.values():
            owned |= {f["name"] for f in window_schema(pipe, w.name)["fields"]} - set(w.keys) - set(w.aggregations)
        for m in pipe.models.values():
            owned |= {f["name"] for f in scores_schema(pipe, m.name)["fields"]} - {m.on, m.score_field}
    return owned


def example_names() -> dict[str, set[str]]:
    """Every name an example declares -> which examples declare it (engine-owned ones left out)."""
    found: dict[str, set[str]] = {}

    def add(name: str, where: str) -> None:
        found.setdefault(name, set()).add(where)

    for ex in EXAMPLES:
        pipe = load(ex)
        for inp in pipe.inputs.values():
            add(inp.name, f"{pipe.name}: input")
            add(inp.schema.name, f"{pipe.name}: schema")
        for avsc in pipe.schema_dir.glob("*.avsc"):
            add(avsc.stem, f"{pipe.name}: schema")
            for f in json.loads(avsc.read_text()).get("fields", []):
                add(f["name"], f"{pipe.name}: field of {avsc.stem}")
        for e in pipe.enrich.values():
            for out in e.fields:
                add(out, f"{pipe.name}: enrichment field")
        for kind, entries in (("window", pipe.windows), ("session", pipe.sessions)):
            for w in entries.values():
                add(w.name, f"{pipe.name}: {kind}")
                add(w.table or w.name, f"{pipe.name}: {kind} table")
                for agg in w.aggregations:
                    add(agg, f"{pipe.name}: aggregation")
        for j in pipe.joins.values():
            add(j.name, f"{pipe.name}: join")
            for out in j.fields:
                add(out, f"{pipe.name}: join field")
        for m in pipe.models.values():
            add(m.name, f"{pipe.name}: model")
            add(m.scores, f"{pipe.name}: scores")
            add(m.score_field, f"{pipe.name}: score field")
        for v in pipe.views:
            add(v, f"{pipe.name}: view")
    owned = _engine_owned()
    return {n: w for n, w in found.items() if n not in owned and n not in GENERIC_WORDS}


def _prose(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of ``tree`` (modules, classes, functions, attributes)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        first = body[0] if body else None
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and \
                isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            out.add(id(first.value))
        for a, b in itertools.pairwise(body):  # attribute docstrings
            if isinstance(a, ast.Assign | ast.AnnAssign) and isinstance(b, ast.Expr) and \
                    isinstance(b.value, ast.Constant):
                out.add(id(b.value))
    return out


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def names_in(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every identifier and string-constant word of ``source`` (not prose).

    >>> sorted(w for _, w in names_in("def f():\\n    'doc'\\n    x = {'a b': y.z}  # c"))
    ['a', 'b', 'f', 'x', 'y', 'z']
    """
    tree = ast.parse(source)
    prose = _prose(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            words = [node.name]
        elif isinstance(node, ast.arg):
            words = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            words = [node.arg]
        elif isinstance(node, ast.alias):
            words = (node.asname or node.name).split(".")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            words = _WORD.findall(node.value)
        out += [(getattr(node, "lineno", 0), w) for w in words]
    return sorted(out, key=lambda t: t[0])


def test_the_examples_declare_names_to_look_for() -> None:
    names = example_names()
    assert len(EXAMPLES) >= 2
    for expected in ("orders", "amount", "revenue_per_minute", "fraud", "readings", "device_id", "site_metrics"):
        assert expected in names, expected


def test_the_scan_finds_a_name_in_code_not_in_prose() -> None:
    names = example_names()
    source = '"""About orders."""\n# orders\nx = "SELECT sum(amount) FROM t"\ndef f(device_id): return fraud\n'
    assert {w for _, w in names_in(source) if w in names} == {"amount", "device_id", "fraud"}


@pytest.mark.parametrize("package", ENGINE)
def test_no_engine_module_names_an_example(package: str) -> None:
    names = example_names()
    hits = []
    for path in sorted((REPO / package).rglob("*.py")):
        module = str(path.relative_to(REPO))
        for line, word in names_in(path.read_text()):
            for cand in {word, word.lower()}:
                if cand in names and (module, cand) not in ALLOWED_IN:
                    hits.append(f"{module}:{line}: {cand!r} ({', '.join(sorted(names[cand]))})")
    assert not hits, "the engine names the examples' entities; take them from the definition:\n" + "\n".join(hits)


def test_every_allowance_is_still_needed() -> None:
    """An allowance whose name left its module goes too (the allow-list only shrinks)."""
    stale = [f"{module}: {name}" for module, name in ALLOWED_IN
             if name not in {w for _, w in names_in((REPO / module).read_text())}]
    assert not stale, "remove from ALLOWED_IN: " + ", ".join(stale)
