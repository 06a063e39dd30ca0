"""A pipeline definition: one project file (``pipeline.toml``), its Avro schemas, optional Python.

Everything Kappa derives for a pipeline (topics, subjects, groups, tables, views, what
``--until-drained`` waits for, what replay compares) is derived from a :class:`Pipeline`,
loaded and checked here before anything starts. A mistake names the file, the entry and why
(:class:`PipelineError`); nothing is created for a definition that does not load.

The format is documented in ``docs/pipelines.md``; ``examples/ecommerce/pipeline.toml`` is
the default pipeline.

>>> parse_duration("90s"), parse_duration("5m"), parse_duration("24h"), parse_duration(1500)
(90000, 300000, 86400000, 1500)
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from kappa.errors import ConfigError

__all__ = [
    "Enrich",
    "Field",
    "Input",
    "Join",
    "Model",
    "Pipeline",
    "PipelineError",
    "Rule",
    "Schema",
    "Session",
    "View",
    "Window",
    "load",
    "parse_duration",
]

PROJECT_FILE = "pipeline.toml"
_NUMERIC = frozenset({"int", "long", "float", "double"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PipelineError(ConfigError):
    """A pipeline definition that cannot be used; the message names file, entry and reason."""


def parse_duration(value: Any, where: str = "duration") -> int:
    """Milliseconds of ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a number of ms."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", str(value))
    if not match:
        raise ValueError(f"{where}: {value!r} is not a duration (e.g. 30s, 5m, 24h, or ms as a number)")
    unit = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[match.group(2)]
    return int(match.group(1)) * unit


@dataclass(frozen=True)
class Field:
    """One field of a record schema: Avro type name (logical type when it has one), nullability."""

    name: str
    type: str
    nullable: bool = False
    doc: str = ""

    @property
    def numeric(self) -> bool:
        return self.type in _NUMERIC

    @property
    def is_time(self) -> bool:
        return self.type in ("timestamp-millis", "timestamp-micros")


@dataclass(frozen=True)
class Schema:
    """A record schema of the pipeline (``<schemas>/<name>.avsc``)."""

    name: str
    path: Path
    fields: tuple[Field, ...]
    raw: Mapping[str, Any]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class Rule:
    """One validation rule: a field condition (``check``) or a Python function (``function``)."""

    code: str
    field: str | None = None
    check: str | None = None
    params: Mapping[str, Any] = dc_field(default_factory=dict)
    detail: str | None = None
    function: str | None = None
    codes: tuple[str, ...] = ()
    """Reason codes a function rule may return (declared, so metrics and reports know them)."""


@dataclass(frozen=True)
class Input:
    """An input topic: its schema, key, event time; rules; dedupe id; table or stream."""

    name: str
    schema: Schema
    key: str
    time: str | None = None
    table: bool = False
    id: str | None = None
    dedupe_retention_ms: int = 86_400_000
    rules: tuple[Rule, ...] = ()
    partitions: int | None = None
    low_cardinality: tuple[str, ...] = ()
    """String fields with few distinct values: ``LowCardinality(String)`` columns in ClickHouse."""
    value_maps: Mapping[str, str | Mapping[str, str]] = dc_field(default_factory=dict)
    """Field -> its value map, applied to valid events before dedupe, enrichment and windows: a
    ``{from = "to"}`` table, or the name of a settings knob (``KAPPA_<NAME>``, ``from=to,...``)
    that a version is run (and replayed) with."""

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every reason code this input's rules can give, in rule order."""
        out: list[str] = []
        for r in self.rules:
            for code in (r.codes or (r.code,)):
                if code and code not in out:
                    out.append(code)
        return tuple(out)


@dataclass(frozen=True)
class Enrich:
    """A stream enriched with a table's version valid at the stream event's time (as-of join)."""

    stream: str
    table: str
    on: str
    fields: Mapping[str, str]
    """Output field -> table field."""
    output: str
    schema: str | None = None


@dataclass(frozen=True)
class Window:
    """Event-time windows over a stream: size, hop, keys, aggregations (``name = "fn(field)"``)."""

    name: str
    stream: str
    size_ms: int
    hop_ms: int
    keys: tuple[str, ...]
    aggregations: Mapping[str, str]
    schema: str | None = None
    grace_ms: int | None = None
    """None: the settings' ``window_grace_seconds``."""
    table: str = ""
    """ClickHouse table of the window's revisions (default: the window's name; the view is the name)."""


@dataclass(frozen=True)
class Session:
    """Session windows per key over a stream: inactivity gap, grace, aggregations (``name = "fn(field)"``)."""

    name: str
    stream: str
    gap_ms: int
    keys: tuple[str, ...]
    aggregations: Mapping[str, str]
    grace_ms: int | None = None
    """None: the settings' ``window_grace_seconds``."""
    table: str = ""


@dataclass(frozen=True)
class Join:
    """An interval join of two co-partitioned streams on a key: ``right.time - left.time`` in [lower, upper]."""

    name: str
    left: str
    right: str
    on: str
    lower_ms: int
    upper_ms: int
    how: str
    fields: Mapping[str, str]
    """Output field -> ``"<stream>.<field>"``."""
    grace_ms: int | None = None
    table: str = ""


@dataclass(frozen=True)
class Model:
    """An online model scoring a stream and learning from a label stream joined on a key
    (the generic operator: :mod:`stream_processors.operators.model`)."""

    name: str
    stream: str
    labels: str
    on: str
    label: str
    features: tuple[str, ...] = ()
    """Declared feature fields of the stream (numbers, booleans 0/1, strings one-hot) ..."""
    features_function: str | None = None
    """... or ``module:function`` of an event's features (a dict of floats)."""
    model: str | None = None
    """``module:function`` returning a fresh River classifier (default: logistic regression)."""
    roc_thresholds: int = 10
    scores: str = ""
    """Output name of the scores: topic ``D.V.<scores>``, table ``<scores>`` (``<name>_scores``)."""
    schema: str | None = None
    """A declared scores schema (default: derived: the key, ``<name>_score``, model, ...)."""
    label_by: str | None = None
    """Occurrence labels: a label event (of ``labels``) with this field's value labels True every
    event of ``stream`` with the same value in the ``label_within_ms`` before it; an event with
    none is labelled False once the merge passes its time + ``label_within_ms``. The label stream
    stays a stream (validated by its stage, which forwards its valid events to the model)."""
    label_within_ms: int = 0
    features_by: str | None = None
    """Stateful features: the features function gets ``(event, state)``, ``state`` a dict kept per
    value of this field (in the model's checkpoint), updated in merge order."""
    lag_ms: int | None = None
    """The merge's lag (default: the settings' ``fraud_lag_seconds``)."""

    @property
    def score_field(self) -> str:
        return f"{self.name}_score"

    @property
    def reads_labels(self) -> bool:
        """True when the model's learner consumes its label stream itself (a label per event,
        joined on ``on``); False for occurrence labels, forwarded by the label stream's stage."""
        return self.label_by is None


@dataclass(frozen=True)
class View:
    """A serving view: ``SELECT`` text over the pipeline's tables."""

    name: str
    sql: str


@dataclass(frozen=True)
class Pipeline:
    """A loaded, checked pipeline definition."""

    name: str
    database: str
    path: Path
    schema_dir: Path
    inputs: Mapping[str, Input]
    enrich: Mapping[str, Enrich] = dc_field(default_factory=dict)
    windows: Mapping[str, Window] = dc_field(default_factory=dict)
    models: Mapping[str, Model] = dc_field(default_factory=dict)
    views: Mapping[str, View] = dc_field(default_factory=dict)
    description: str = ""
    generator: str | None = None
    """``module:function`` generating sample events (:mod:`producers.generators`), if any."""
    samples: Mapping[str, Path] = dc_field(default_factory=dict)
    """Sample data files per input (JSONL or CSV), published by ``kappa demo``."""
    sessions: Mapping[str, Session] = dc_field(default_factory=dict)
    joins: Mapping[str, Join] = dc_field(default_factory=dict)
    title: str = ""
    """How messages call the pipeline's events (``kappa demo``: "generating <title> events"); default: name."""
    report: str | None = None
    """``module:function`` writing the ``kappa demo`` report from its measures (:mod:`kappa.demo`), if any."""

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def knobs(self) -> tuple[str, ...]:
        """The settings knobs the definition's value maps read (a version runs with their values)."""
        return tuple(dict.fromkeys(m for i in self.inputs.values() for m in i.value_maps.values()
                                   if isinstance(m, str)))

    def module(self, name: str) -> types.ModuleType:
        """The pipeline's module ``name`` (a ``.py`` beside the project file, else importable)."""
        resolve(self.root, self.name, f"{name}:__name__")
        local = f"kappa_pipelines.{self.name}.{name}"
        return sys.modules[local] if local in sys.modules else importlib.import_module(name)

    def input(self, name: str) -> Input:
        try:
            return self.inputs[name]
        except KeyError:
            raise PipelineError(f"pipeline {self.name!r} has no input {name!r}; inputs: "
                                f"{', '.join(self.inputs)} ({self.path})") from None

    def resolve(self, ref: str) -> Any:
        """The object ``"module:attr"`` names: a module beside the project file, else importable."""
        return resolve(self.root, self.name, ref)


# -- loading ----------------------------------------------------------------------------------

def load(path: str | Path) -> Pipeline:
    """The pipeline of project directory (or project file) ``path``, checked."""
    p = Path(path).expanduser()
    file = p / PROJECT_FILE if p.is_dir() else p
    if not file.is_file():
        raise PipelineError(f"no pipeline at {p}: expected a directory with {PROJECT_FILE} "
                            "(create one with `kappa init DIR`)")
    try:
        doc = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{file}: not valid TOML: {exc}") from None
    return _Loader(file.resolve(), doc).pipeline()


class _Loader:
    def __init__(self, file: Path, doc: dict[str, Any]) -> None:
        self.file = file
        self.doc = doc
        self._schemas: dict[str, Schema] = {}

    def fail(self, entry: str, why: str) -> PipelineError:
        return PipelineError(f"{self.file}: [{entry}] {why}")

    def table(self, entry: str, value: Any, allowed: set[str],
              required: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(entry, f"must be a table, got {type(value).__name__}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(entry, f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(entry, f"missing key {missing[0]!r}")
        return value

    def duration(self, entry: str, key: str, value: Any) -> int:
        try:
            return parse_duration(value, key)
        except ValueError as exc:
            raise self.fail(entry, str(exc)) from None

    def schema(self, entry: str, name: str) -> Schema:
        if name in self._schemas:
            return self._schemas[name]
        path = self.schema_dir / f"{name}.avsc"
        if not path.is_file():
            known = sorted(p.stem for p in self.schema_dir.glob("*.avsc"))
            raise self.fail(entry, f"schema {name!r}: no file {path} (schemas there: {', '.join(known) or 'none'})")
        try:
            raw = json.loads(path.read_text())
        except ValueError as exc:
            raise self.fail(entry, f"schema {path} is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("type") != "record" or not isinstance(raw.get("fields"), list):
            raise self.fail(entry, f"schema {path} must be an Avro record with fields")
        fields = tuple(_field(f) for f in raw["fields"])
        schema = self._schemas[name] = Schema(name, path, fields, raw)
        return schema

    def need_field(self, entry: str, schema: Schema, name: Any, what: str) -> Field:
        found = schema.field(name) if isinstance(name, str) else None
        if found is None:
            raise self.fail(entry, f"{what} {name!r} is not a field of schema {schema.name} "
                                   f"({', '.join(schema.names)})")
        return found

    def pipeline(self) -> Pipeline:
        top = self.table("", self.doc, {"pipeline", "inputs", "enrich", "windows", "models", "views",
                                          "sessions", "joins"},
                         {"pipeline", "inputs"})
        meta = self.table("pipeline", top["pipeline"],
                          {"name", "database", "schemas", "description", "generator", "samples", "title",
                           "report"}, {"name"})
        name = meta["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail("pipeline", f"name {name!r}: use lowercase letters, digits and _ (e.g. shop)")
        database = meta.get("database", name)
        if not isinstance(database, str) or not _NAME.match(database):
            raise self.fail("pipeline", f"database {database!r}: use lowercase letters, digits and _")
        self.schema_dir = (self.file.parent / meta.get("schemas", "schemas")).resolve()
        if not self.schema_dir.is_dir():
            raise self.fail("pipeline", f"schemas directory {self.schema_dir} does not exist")
        inputs = {n: self.input(n, v) for n, v in self.table("inputs", top["inputs"], set(top["inputs"])).items()}
        if not inputs:
            raise self.fail("inputs", "declare at least one input")
        enrich = {n: self.enrich(n, v, inputs) for n, v in top.get("enrich", {}).items()}
        windows = {n: self.window(n, v, inputs, enrich) for n, v in top.get("windows", {}).items()}
        models = {n: self.model(n, v, inputs, enrich) for n, v in top.get("models", {}).items()}
        views = {n: self.view(n, v) for n, v in top.get("views", {}).items()}
        samples = meta.get("samples", {})
        if not isinstance(samples, dict):
            raise self.fail("pipeline", "samples = { <input> = \"file.jsonl\", ... }")
        files: dict[str, Path] = {}
        for inp, rel in samples.items():
            if inp not in inputs:
                raise self.fail("pipeline", f"samples.{inp}: not an input ({', '.join(inputs)})")
            files[inp] = (self.file.parent / str(rel)).resolve()
            if not files[inp].is_file():
                raise self.fail("pipeline", f"samples.{inp}: no file {files[inp]}")
        pipe = Pipeline(name, database, self.file, self.schema_dir, inputs, enrich, windows, models, views,
                        meta.get("description", ""), meta.get("generator"), files)
        sessions = {n: self.session(n, v, inputs, enrich) for n, v in top.get("sessions", {}).items()}
        joins = {n: self.join(n, v, inputs) for n, v in top.get("joins", {}).items()}
        title = meta.get("title", name)
        if not isinstance(title, str) or not title.strip():
            raise self.fail("pipeline", f"title {title!r}: a short name for messages, e.g. \"shop\"")
        report = meta.get("report")
        if report is not None:
            self.reference("pipeline", "report", report)
        pipe = replace(pipe, sessions=sessions, joins=joins, title=title, report=report)
        self.check_names(pipe)
        self.check_functions(pipe)
        for key in ("generator", "report"):
            ref = getattr(pipe, key)
            if ref is not None and not callable(_resolve_checked(self, "pipeline", pipe, ref)):
                raise self.fail("pipeline", f"{key} {ref} is not a function")
        return pipe

    def input(self, name: str, value: Any) -> Input:
        entry = f"inputs.{name}"
        if not _NAME.match(name):
            raise self.fail(entry, "input names are lowercase letters, digits and _ (they are topic names)")
        v = self.table(entry, value, {"schema", "key", "time", "table", "id", "dedupe_retention", "rules",
                                      "partitions", "low_cardinality", "value_maps"}, {"key"})
        schema = self.schema(entry, v.get("schema", name))
        self.need_field(entry, schema, v["key"], "key")
        time = v.get("time")
        if time is not None:
            f = self.need_field(entry, schema, time, "time")
            if f.type not in ("timestamp-millis", "long") or f.nullable:
                raise self.fail(entry, f"time {time!r} must be a non-null timestamp-millis (or long of epoch ms), "
                                       f"schema {schema.name} has {f.type}{' or null' if f.nullable else ''}")
        if v.get("id") is not None:
            self.need_field(entry, schema, v["id"], "id")
        partitions = v.get("partitions")
        if partitions is not None and (not isinstance(partitions, int) or partitions < 1):
            raise self.fail(entry, f"partitions {partitions!r} must be a positive integer")
        rules = tuple(self.rule(f"{entry}.rules[{i}]", r, schema) for i, r in enumerate(v.get("rules", [])))
        low = v.get("low_cardinality", [])
        for f in low:
            if self.need_field(entry, schema, f, "low_cardinality field").type != "string":
                raise self.fail(entry, f"low_cardinality field {f!r} is not a string")
        return Input(name, schema, v["key"], time, bool(v.get("table", False)), v.get("id"),
                     self.duration(entry, "dedupe_retention", v.get("dedupe_retention", "24h")), rules, partitions,
                     tuple(low), self.value_maps(entry, v.get("value_maps", {}), schema))

    def value_maps(self, entry: str, value: Any, schema: Schema) -> dict[str, str | dict[str, str]]:
        if not isinstance(value, dict):
            raise self.fail(entry, 'value_maps = { <field> = { from = "to", ... } or "<settings knob>" }')
        out: dict[str, str | dict[str, str]] = {}
        for f, m in value.items():
            if self.need_field(entry, schema, f, "value_maps field").type != "string":
                raise self.fail(entry, f"value_maps.{f}: only string fields can be mapped")
            if isinstance(m, str) and _NAME.match(m):
                out[f] = m
            elif isinstance(m, dict) and all(isinstance(k, str) and isinstance(t, str) for k, t in m.items()):
                out[f] = dict(m)
            else:
                raise self.fail(entry, f"value_maps.{f} = {m!r}: a table {{ from = \"to\" }} or a settings knob "
                                       "name (lowercase, e.g. \"my_map\" for KAPPA_MY_MAP)")
        return out

    _CHECKS: dict[str, set[str]] = {  # noqa: RUF012 - class constant
        "non_empty": set(),
        "range": {"gt", "ge", "lt", "le"},
        "in": {"values"},
        "regex": {"pattern"},
        "max_ahead": {"max"},
        "type": {"type"},
    }

    def rule(self, entry: str, value: Any, schema: Schema) -> Rule:
        if isinstance(value, dict) and "function" in value:
            v = self.table(entry, value, {"function", "codes"}, {"function"})
            codes = v.get("codes", [])
            if not isinstance(codes, list) or not all(isinstance(c, str) and _NAME.match(c) for c in codes):
                raise self.fail(entry, "codes must be a list of reason codes (lowercase, _)")
            return Rule(codes[0] if codes else "", function=v["function"], codes=tuple(codes))
        v = self.table(entry, value, {"field", "check", "code", "detail", *set().union(*self._CHECKS.values())},
                       {"field", "check"})
        check = v["check"]
        if check not in self._CHECKS:
            raise self.fail(entry, f"unknown check {check!r}; checks: {', '.join(self._CHECKS)} "
                                   "(or a Python rule: function = \"module:function\")")
        f = self.need_field(entry, schema, v["field"], "field")
        params = {k: v[k] for k in self._CHECKS[check] if k in v}
        extra = sorted(set(v) - {"field", "check", "code", "detail"} - self._CHECKS[check])
        if extra:
            raise self.fail(entry, f"{extra[0]!r} does not apply to check {check!r}")
        if check == "range":
            if not params:
                raise self.fail(entry, "a range needs at least one of gt, ge, lt, le")
            if not f.numeric:
                raise self.fail(entry, f"range on field {f.name!r} of type {f.type}: ranges need a number field")
            if any(isinstance(x, bool) or not isinstance(x, int | float) for x in params.values()):
                raise self.fail(entry, "range bounds must be numbers")
        elif check == "in":
            if not isinstance(params.get("values"), list) or not params["values"]:
                raise self.fail(entry, "check 'in' needs values = [ ... ]")
        elif check == "regex":
            try:
                re.compile(params.get("pattern", ""))
            except (re.error, TypeError) as exc:
                raise self.fail(entry, f"pattern {params.get('pattern')!r} is not a regular expression: "
                                       f"{exc}") from None
            if "pattern" not in params:
                raise self.fail(entry, "check 'regex' needs pattern = \"...\"")
        elif check == "max_ahead":
            if "max" not in params:
                raise self.fail(entry, "check 'max_ahead' needs max = \"5m\" (how far ahead of the record's timestamp)")
            params["max"] = self.duration(entry, "max", params["max"])
            if f.type not in ("timestamp-millis", "long"):
                raise self.fail(entry, f"max_ahead on field {f.name!r} of type {f.type}: needs a timestamp-millis")
        elif check == "type" and params.get("type") not in ("boolean", "string", "int", "long", "float", "double"):
            raise self.fail(entry, f"type {params.get('type')!r}: one of boolean, string, int, long, float, double")
        code = v.get("code") or f"bad_{f.name}"
        if not _NAME.match(code):
            raise self.fail(entry, f"code {code!r}: reason codes are lowercase letters, digits and _")
        detail = v.get("detail")
        if detail is not None and not isinstance(detail, str):
            raise self.fail(entry, "detail must be a string template, e.g. \"{value!r}\"")
        return Rule(code, f.name, check, params, detail)

    def enrich(self, name: str, value: Any, inputs: Mapping[str, Input]) -> Enrich:
        entry = f"enrich.{name}"
        v = self.table(entry, value, {"stream", "table", "on", "fields", "output", "schema"}, {"table", "on", "fields"})
        stream = v.get("stream", name)
        if stream not in inputs:
            raise self.fail(entry, f"stream {stream!r} is not an input ({', '.join(inputs)})")
        table = v["table"]
        if table not in inputs or not inputs[table].table:
            tables = [n for n, i in inputs.items() if i.table]
            raise self.fail(entry, f"table {table!r} is not a table input (table = true): tables are "
                                   f"{', '.join(tables) or 'none'}")
        s, t = inputs[stream], inputs[table]
        self.need_field(entry, s.schema, v["on"], "join key (on)")
        self.need_field(entry, t.schema, v["on"], "join key (on)")
        if t.key != v["on"]:
            raise self.fail(entry, f"table {table} is keyed by {t.key!r}, the join is on {v['on']!r}: "
                                   "key the table by the join field")
        if s.key != v["on"]:
            raise self.fail(entry, f"stream {stream} is keyed by {s.key!r}: to join on {v['on']!r} without "
                                   f"a repartition, key it by {v['on']!r} (co-partitioned with {table})")
        if s.partitions != t.partitions:
            raise self.fail(entry, f"co-partitioned inputs {stream} and {table} declare different partition "
                                   f"counts ({s.partitions} and {t.partitions}): declare the same or none")
        fields = v["fields"]
        if not isinstance(fields, dict) or not fields:
            raise self.fail(entry, "fields = { output_name = \"table_field\", ... }")
        for out, src in fields.items():
            self.need_field(entry, t.schema, src, f"fields.{out}: table field")
            if s.schema.field(out) is not None:
                raise self.fail(entry, f"fields.{out}: {stream} already has a field {out!r}; name it otherwise")
        output = v.get("output", f"{stream}.enriched")
        if v.get("schema") is not None:
            self.schema(entry, v["schema"])
        return Enrich(stream, table, v["on"], dict(fields), output, v.get("schema"))

    def window(self, name: str, value: Any, inputs: Mapping[str, Input], enrich: Mapping[str, Enrich]) -> Window:
        entry = f"windows.{name}"
        v = self.table(entry, value, {"stream", "size", "hop", "keys", "aggregations", "schema", "grace", "table"},
                       {"stream", "size", "keys", "aggregations"})
        stream = v["stream"]
        if stream not in inputs:
            raise self.fail(entry, f"stream {stream!r} is not an input ({', '.join(inputs)})")
        fields = {f.name: f for f in inputs[stream].schema.fields}
        for e in enrich.values():
            if e.stream == stream:
                tschema = inputs[e.table].schema
                fields.update({out: tschema.field(src) for out, src in e.fields.items()})  # type: ignore[misc]
        size = self.duration(entry, "size", v["size"])
        hop = self.duration(entry, "hop", v.get("hop", v["size"]))
        if size <= 0 or hop <= 0 or size % hop:
            raise self.fail(entry, f"hop ({hop} ms) must divide size ({size} ms), both > 0")
        if inputs[stream].time is None:
            raise self.fail(entry, f"input {stream} declares no event time (time = \"field\")")
        keys = v["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise self.fail(entry, "keys = [\"field\", ...]")
        for k in keys:
            if k not in fields:
                raise self.fail(entry, f"key {k!r} is not a field of {stream} ({', '.join(fields)})")
        aggs = v["aggregations"]
        if not isinstance(aggs, dict) or not aggs:
            raise self.fail(entry, "aggregations = { name = \"count\" | \"sum(field)\" | \"min(field)\" | ... }")
        for out, spec in aggs.items():
            m = re.fullmatch(r"\s*(count|sum|min|max|avg)\s*(?:\(\s*([A-Za-z_][A-Za-z0-9_]*)?\s*\))?\s*", str(spec))
            if not m:
                raise self.fail(entry, f"aggregations.{out} = {spec!r}: use count, sum(f), min(f), max(f) or avg(f)")
            fn, arg = m.group(1), m.group(2)
            if fn != "count":
                if arg is None:
                    raise self.fail(entry, f"aggregations.{out}: {fn} needs a field, e.g. {fn}(price)")
                f = fields.get(arg)
                if f is None:
                    raise self.fail(entry, f"aggregations.{out}: {arg!r} is not a field of {stream}")
                if not f.numeric:
                    raise self.fail(entry, f"aggregations.{out}: {fn}({arg}) needs a number, {arg} is {f.type}")
            if out in keys:
                raise self.fail(entry, f"aggregations.{out}: clashes with the key of the same name")
        if v.get("schema") is not None:
            self.schema(entry, v["schema"])
        grace = None if v.get("grace") is None else self.duration(entry, "grace", v["grace"])
        table = v.get("table", name)
        if not isinstance(table, str) or not _NAME.match(table):
            raise self.fail(entry, f"table {table!r}: use lowercase letters, digits and _")
        return Window(name, stream, size, hop, tuple(keys), dict(aggs), v.get("schema"), grace, table)

    def model(self, name: str, value: Any, inputs: Mapping[str, Input], enrich: Mapping[str, Enrich]) -> Model:
        entry = f"models.{name}"
        v = self.table(entry, value, {"stream", "labels", "on", "label", "features", "model", "roc_thresholds",
                                      "scores", "schema", "label_by", "label_within", "features_by", "lag"},
                       {"stream", "labels", "on", "features"})
        for key in ("stream", "labels"):
            if v[key] not in inputs:
                raise self.fail(entry, f"{key} {v[key]!r} is not an input ({', '.join(inputs)})")
        if inputs[v["stream"]].table or inputs[v["labels"]].table:
            raise self.fail(entry, "stream and labels are streams, not table inputs")
        stream, labels = inputs[v["stream"]].schema, inputs[v["labels"]].schema
        self.need_field(entry, stream, v["on"], "join key (on)")
        label_by, within = v.get("label_by"), 0
        if label_by is None:
            if "label_within" in v:
                raise self.fail(entry, "label_within needs label_by (the field a label event shares with the events)")
            if "label" not in v:
                raise self.fail(entry, "missing key 'label' (the boolean field of the label stream), "
                                       "or label_by and label_within for occurrence labels")
            self.need_field(entry, labels, v["on"], "join key (on)")
            self.need_field(entry, labels, v["label"], "label")
            label = labels.field(v["label"])
            if label is not None and label.type != "boolean":
                raise self.fail(entry, f"label {v['label']!r} is {label.type}: models predict a boolean label")
        else:
            self.need_field(entry, stream, label_by, "label_by")
            self.need_field(entry, labels, label_by, "label_by")
            if "label_within" not in v:
                raise self.fail(entry, "label_by needs label_within: how long before a label event an event "
                                       "it labels may be")
            within = self.duration(entry, "label_within", v["label_within"])
            if within <= 0:
                raise self.fail(entry, "label_within must be above 0")
            if not inputs[v["labels"]].time:
                raise self.fail(entry, f"labels {v['labels']!r} has no event time (time = ...): "
                                       "occurrence labels need one")
        features_by = v.get("features_by")
        if features_by is not None:
            self.need_field(entry, stream, features_by, "features_by")
            if features_by != inputs[v["stream"]].key:
                # one partition holds all events of a key: its state then follows their offset order
                raise self.fail(entry, f"features_by {features_by!r} must be the key of {v['stream']} "
                                       f"({inputs[v['stream']].key!r}): the features' state follows the order of "
                                       "one partition")
        lag = None if v.get("lag") is None else self.duration(entry, "lag", v["lag"])
        features, function = v["features"], None
        if isinstance(features, str):
            function, features = self.reference(entry, "features", features), ()
        elif isinstance(features, list) and features and all(isinstance(f, str) for f in features):
            if features_by is not None:
                raise self.fail(entry, "features_by needs a features function (\"module:function\" of (event, state))")
            joined = enrich[v["stream"]].fields if v["stream"] in enrich else {}
            for f in features:
                if f not in joined:
                    self.need_field(entry, stream, f, "feature")
        else:
            raise self.fail(entry, "features = [\"field\", ...] (fields of the stream) or \"module:function\"")
        model = None if v.get("model") is None else self.reference(entry, "model", v["model"])
        thresholds = v.get("roc_thresholds", 10)
        if not isinstance(thresholds, int) or isinstance(thresholds, bool) or thresholds < 2:
            raise self.fail(entry, f"roc_thresholds {thresholds!r}: an integer >= 2")
        scores = v.get("scores", f"{name}_scores")
        if not isinstance(scores, str) or not _NAME.match(scores):
            raise self.fail(entry, f"scores {scores!r}: use lowercase letters, digits and _")
        if v.get("schema") is not None:
            self.schema(entry, v["schema"])
        return Model(name, v["stream"], v["labels"], v["on"], v.get("label", "label"), tuple(features), function,
                     model, thresholds, scores, v.get("schema"), label_by, within, features_by, lag)

    def stream(self, entry: str, key: str, name: Any, inputs: Mapping[str, Input]) -> Input:
        """The stream input ``name`` (not a table, with an event time) that ``key`` of ``entry`` names."""
        inp = inputs.get(name) if isinstance(name, str) else None
        if inp is None or inp.table:
            streams = [n for n, i in inputs.items() if not i.table]
            raise self.fail(entry, f"{key} {name!r} is not a stream input ({', '.join(streams)})")
        if inp.time is None:
            raise self.fail(entry, f"input {inp.name} declares no event time (time = \"field\")")
        return inp

    def session(self, name: str, value: Any, inputs: Mapping[str, Input], enrich: Mapping[str, Enrich]) -> Session:
        entry = f"sessions.{name}"
        v = self.table(entry, value, {"stream", "gap", "grace", "keys", "aggregations", "table"},
                       {"stream", "gap", "keys"})
        inp = self.stream(entry, "stream", v["stream"], inputs)
        fields = {f.name: f for f in inp.schema.fields}
        if inp.name in enrich:
            fields.update({out: Field(out, "enriched") for out in enrich[inp.name].fields})
        gap = self.duration(entry, "gap", v["gap"])
        if gap <= 0:
            raise self.fail(entry, "gap must be a positive duration (the inactivity that ends a session, e.g. 30m)")
        keys = v["keys"]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise self.fail(entry, "keys = [\"field\", ...] (sessions are per key)")
        for k in keys:
            if k not in fields:
                raise self.fail(entry, f"key {k!r} is not a field of {inp.name} ({', '.join(fields)})")
        if inp.key not in keys:
            raise self.fail(entry, f"keys must include {inp.key!r}, the field {inp.name} is keyed by: every event "
                                   "of a session key must be in one partition")
        aggs = v.get("aggregations", {"events": "count"})
        if not isinstance(aggs, dict) or not aggs:
            raise self.fail(entry, "aggregations = { name = \"count\" | \"first(field)\" | \"sum(field)\" | ... }")
        reserved = {"session_start", "session_end", "revision", "final", "retracted", "pipeline_version"}
        for out, spec in aggs.items():
            m = re.fullmatch(r"\s*(count|sum|min|max|avg|first|last)\s*(?:\(\s*([A-Za-z_][A-Za-z0-9_]*)?\s*\))?\s*",
                             str(spec))
            if not m:
                raise self.fail(entry, f"aggregations.{out} = {spec!r}: use count, sum(f), min(f), max(f), avg(f), "
                                       "first(f) or last(f)")
            fn, arg = m.group(1), m.group(2)
            if fn != "count" or arg is not None:
                if arg is None:
                    raise self.fail(entry, f"aggregations.{out}: {fn} needs a field, e.g. {fn}(url)")
                f = fields.get(arg)
                if f is None:
                    raise self.fail(entry, f"aggregations.{out}: {arg!r} is not a field of {inp.name}")
                if fn in ("sum", "min", "max", "avg") and not f.numeric:
                    raise self.fail(entry, f"aggregations.{out}: {fn}({arg}) needs a number, {arg} is {f.type}")
            if out in keys or out in reserved:
                raise self.fail(entry, f"aggregations.{out}: clashes with a key or a column of the session's own "
                                       f"({', '.join(sorted(reserved))})")
        grace = None if v.get("grace") is None else self.duration(entry, "grace", v["grace"])
        table = v.get("table", name)
        if not isinstance(table, str) or not _NAME.match(table):
            raise self.fail(entry, f"table {table!r}: use lowercase letters, digits and _")
        return Session(name, inp.name, gap, tuple(keys), dict(aggs), grace, table)

    def signed(self, entry: str, key: str, value: Any) -> int:
        """A duration that may be negative (``"-5m"``)."""
        if isinstance(value, str) and value.strip().startswith("-"):
            return -self.duration(entry, key, value.strip()[1:])
        return self.duration(entry, key, value)

    def join(self, name: str, value: Any, inputs: Mapping[str, Input]) -> Join:
        entry = f"joins.{name}"
        v = self.table(entry, value, {"left", "right", "on", "lower", "upper", "grace", "how", "fields", "table"},
                       {"left", "right", "on", "upper"})
        left, right = (self.stream(entry, k, v[k], inputs) for k in ("left", "right"))
        if left.name == right.name:
            raise self.fail(entry, f"left and right are both {left.name!r}: join two different streams")
        for inp in (left, right):
            self.need_field(entry, inp.schema, v["on"], "join key (on)")
            if inp.key != v["on"]:
                raise self.fail(entry, f"input {inp.name} is keyed by {inp.key!r}, not by the join key {v['on']!r}: "
                                       "both streams must be keyed by it (co-partitioned)")
        if left.partitions != right.partitions:
            raise self.fail(entry, f"{left.name} and {right.name} have different partition counts "
                                   f"({left.partitions} and {right.partitions}): co-partitioned inputs must agree")
        lower = self.signed(entry, "lower", v.get("lower", "0s"))
        upper = self.signed(entry, "upper", v["upper"])
        if lower > upper:
            raise self.fail(entry, f"lower ({lower} ms) is above upper ({upper} ms): the interval is "
                                   "right.time - left.time in [lower, upper]")
        how = v.get("how", "inner")
        if how not in ("inner", "left"):
            raise self.fail(entry, f"how = {how!r}: use \"inner\" or \"left\"")
        fields = v.get("fields", {})
        if not isinstance(fields, dict):
            raise self.fail(entry, f"fields = {{ out = \"{right.name}.field\", ... }}")
        for out, ref in fields.items():
            stream, _, fld = str(ref).partition(".")
            side = {left.name: left, right.name: right}.get(stream)
            if side is None or side.schema.field(fld) is None:
                raise self.fail(entry, f"fields.{out} = {ref!r}: not a field of {left.name} or {right.name} "
                                       "(write \"<stream>.<field>\")")
        grace = None if v.get("grace") is None else self.duration(entry, "grace", v["grace"])
        table = v.get("table", name)
        if not isinstance(table, str) or not _NAME.match(table):
            raise self.fail(entry, f"table {table!r}: use lowercase letters, digits and _")
        return Join(name, left.name, right.name, v["on"], lower, upper, how, dict(fields), grace, table)

    def view(self, name: str, value: Any) -> View:
        entry = f"views.{name}"
        v = self.table(entry, value, {"sql"}, {"sql"})
        if not isinstance(v["sql"], str) or not v["sql"].strip():
            raise self.fail(entry, "sql = \"SELECT ...\"")
        return View(name, v["sql"])

    def check_names(self, pipe: Pipeline) -> None:
        """Names in the serving database (a view per stream input, per window, session, join and
        per model's scores, declared views, Kappa's own views) must not clash; a declared view
        named as a stream (or scores, a session, a join) replaces its view."""
        seen: dict[str, str] = {}
        # a declared view may replace the derived view of a stream (e.g. to add a model's score)
        names = ([(f"inputs.{n}", n) for n, i in pipe.inputs.items() if not i.table and n not in pipe.views]
                 + [(f"windows.{n}", n) for n in pipe.windows]
                 + [(f"models.{n}", m.scores) for n, m in pipe.models.items() if m.scores not in pipe.views]
                 + [(f"sessions.{n}", n) for n in pipe.sessions if n not in pipe.views]
                 + [(f"joins.{n}", n) for n in pipe.joins if n not in pipe.views]
                 + [(f"views.{n}", n) for n in pipe.views])
        reserved = {"rejected_events", "model_quality", "drift_events", "lineage"}
        for entry, out in names:
            if out in reserved:
                raise self.fail(entry, f"{out!r} is a view Kappa gives every pipeline's database: rename it")
            if out in seen:
                raise self.fail(entry, f"its view {pipe.database}.{out} clashes with the one of [{seen[out]}]: "
                                       "rename one of them")
            seen[out] = entry

    def reference(self, entry: str, key: str, value: Any) -> str:
        if not isinstance(value, str) or ":" not in value:
            raise self.fail(entry, f"{key} {value!r}: \"module:function\" (module.py beside {PROJECT_FILE})")
        return value

    def check_functions(self, pipe: Pipeline) -> None:
        for m in pipe.models.values():
            for key, ref in (("features", m.features_function), ("model", m.model)):
                if ref and not callable(_resolve_checked(self, f"models.{m.name}", pipe, ref)):
                    raise self.fail(f"models.{m.name}", f"{key} {ref} is not a function")
        for inp in pipe.inputs.values():
            for i, r in enumerate(inp.rules):
                if r.function:
                    fn = _resolve_checked(self, f"inputs.{inp.name}.rules[{i}]", pipe, r.function)
                    if not callable(fn):
                        raise self.fail(f"inputs.{inp.name}.rules[{i}]", f"{r.function} is not a function")


def _resolve_checked(loader: _Loader, entry: str, pipe: Pipeline, ref: str) -> Any:
    try:
        return pipe.resolve(ref)
    except PipelineError as exc:
        raise loader.fail(entry, str(exc)) from None


def _field(raw: Any) -> Field:
    t = raw.get("type")
    nullable = False
    if isinstance(t, list):
        nullable = "null" in t
        rest = [x for x in t if x != "null"]
        t = rest[0] if len(rest) == 1 else "union"
    if isinstance(t, dict):
        t = t.get("logicalType") or t.get("type")
    return Field(raw["name"], str(t), nullable, raw.get("doc", ""))


def _packages(qual: str) -> None:
    """Register the parent packages of ``qual`` (``kappa_pipelines``, ``kappa_pipelines.<p>``):
    pickle imports an object's module by its dotted name (a River model holding a function of
    the pipeline's module, in a checkpoint)."""
    parts = qual.split(".")[:-1]
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = []
            sys.modules[name] = pkg


def resolve(root: Path, pipeline: str, ref: str) -> Any:
    """``"module:attr"``: ``module`` is a file ``<root>/<module>.py`` if there is one, else imported."""
    if not isinstance(ref, str) or ":" not in ref:
        raise PipelineError(f"{ref!r} is not a reference: use \"module:name\" (module.py beside pipeline.toml)")
    mod_name, _, attr = ref.partition(":")
    local = root / (mod_name.replace(".", "/") + ".py")
    if local.is_file():
        qual = f"kappa_pipelines.{pipeline}.{mod_name}"
        module = sys.modules.get(qual)
        if module is None:
            _packages(qual)
            spec = importlib.util.spec_from_file_location(qual, local)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[qual] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[qual]
                raise PipelineError(f"{local} failed to import: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise PipelineError(f"{ref}: no module {mod_name!r} (neither {local} nor importable: {exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PipelineError(f"{ref}: module {mod_name} has no {attr!r}") from None


Validator = Callable[[Mapping[str, Any], "int | None"], "str | None"]
