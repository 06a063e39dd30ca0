"""What a pipeline definition derives: the one place that names its topics, groups, subjects,
tables and views, and the Avro schemas of its outputs when the definition declares none.

Names of version ``V`` of a pipeline whose serving database is ``D``:

- inputs ``<prefix><input>`` (unversioned: they are the log), their DLQs ``<prefix><input>.dlq``;
- outputs ``D.V.<output>``: a stream's valid events ``D.V.<stream>.enriched`` (the enrichment's
  ``output``) or ``D.V.<stream>.valid``; a window's revisions ``D.V.<window>``; a session's and an
  interval join's revisions ``D.V.<session>``, ``D.V.<join>``; the models'
  ``D.V.<scores>`` (each model's), ``D.V.model_quality``, ``D.V.drift``; rejections ``D.V.rejected``;
- consumer groups ``D-V`` (the stream processors), ``D-V-sink``, ``D-V-<model>`` (labels);
- tables in database ``D_V``, views in ``D``.

>>> from kappa.pipeline import DEFAULT, load
>>> names = Names(load(DEFAULT), "v2")
>>> names.stream_output("orders"), names.window_output("revenue_per_minute"), names.group
('kappa.v2.orders.enriched', 'kappa.v2.revenue_per_minute', 'kappa-v2')
>>> names.sink_group, names.label_group("fraud"), names.tables_db
('kappa-v2-sink', 'kappa-v2-fraud', 'kappa_v2')
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kappa.pipeline.definition import Field, Input, Pipeline, Window

__all__ = ["LINEAGE_FIELDS", "UPDATE_KINDS", "Names", "Output", "derived_schema_text", "join_schema", "schema_json",
           "scores_schema", "session_schema", "stream_schema", "window_schema"]

UPDATE_KINDS = frozenset({"window", "session", "join"})
"""Output kinds whose values are update-style revisions of a keyed row (highest ``revision`` wins)."""

LINEAGE_FIELDS: tuple[dict[str, Any], ...] = (
    {"name": "late", "type": "boolean", "default": False,
     "doc": "True when the event arrived after its window closed (beyond grace)."},
    {"name": "source_topic", "type": "string", "doc": "Lineage: input topic."},
    {"name": "source_partition", "type": "int", "doc": "Lineage: input partition."},
    {"name": "source_offset", "type": "long", "doc": "Lineage: input offset."},
    {"name": "pipeline_version", "type": "string", "doc": "Lineage: pipeline version that produced the record."},
)
"""Fields the stream stage adds to every valid event of a stream."""


@dataclass(frozen=True)
class Output:
    """One output topic of a version: its topic, what it holds, the schema of its values."""

    kind: str
    """``stream``, ``window``, ``session``, ``join``, ``scores``, ``model_quality``, ``drift`` or ``rejected``."""
    name: str
    """The stream, window, session, join or model name (``""`` for the pipeline-wide ones)."""
    topic: str
    schema: str
    """Schema name (a file of the pipeline's or Kappa's schemas; ``derived:...`` when derived)."""
    table: str
    """Table (in the version database) its records land in."""
    key: str
    """What the Kafka key is (for ``kappa pipeline show``)."""


@dataclass(frozen=True)
class Names:
    """Topic, group, table and view names of version ``version`` of ``pipeline``."""

    pipeline: Pipeline
    version: str
    prefix: str = ""
    """Input topic prefix (``KAPPA_TOPIC_PREFIX``)."""

    @property
    def database(self) -> str:
        return self.pipeline.database

    @property
    def output_prefix(self) -> str:
        return f"{self.database}.{self.version}."

    @property
    def group(self) -> str:
        """Consumer group (= Faust app id) of the version's stream processors."""
        return f"{self.database}-{self.version}"

    @property
    def sink_group(self) -> str:
        return f"{self.group}-sink"

    def label_group(self, model: str) -> str:
        return f"{self.group}-{model}"

    @property
    def tables_db(self) -> str:
        """The database holding this version's tables."""
        return f"{self.database}_" + re.sub(r"[^A-Za-z0-9_]", "_", self.version)

    def input_topic(self, name: str) -> str:
        self.pipeline.input(name)
        return self.prefix + name

    def dlq(self, name: str) -> str:
        return self.input_topic(name) + ".dlq"

    def stream_output(self, stream: str) -> str:
        enrich = self.pipeline.enrich.get(stream)
        return self.output_prefix + (enrich.output if enrich else f"{stream}.valid")

    def window_output(self, window: str) -> str:
        return self.output_prefix + window

    def partials(self, window: str) -> str:
        """Internal repartition topic of a window's partials (keyed by window key)."""
        return f"{self.group}-{window}-partials"

    @property
    def rejected(self) -> str:
        return self.output_prefix + "rejected"

    @property
    def lineage(self) -> str:
        return self.output_prefix + "lineage"

    def streams(self) -> list[Input]:
        """The stream inputs in declared order: not tables, not a model's label stream (those
        are consumed by the model's learner, :class:`~kappa.pipeline.definition.Model`)."""
        labels = {m.labels for m in self.pipeline.models.values() if m.reads_labels}
        return [i for i in self.pipeline.inputs.values() if not i.table and i.name not in labels]

    def outputs(self) -> Iterator[Output]:
        """Every output topic of the version, in a stable order."""
        pipe = self.pipeline
        for inp in self.streams():
            enrich = pipe.enrich.get(inp.name)
            schema = (enrich.schema if enrich and enrich.schema else f"derived:stream:{inp.name}")
            yield Output("stream", inp.name, self.stream_output(inp.name), schema, inp.name,
                         inp.id or "partition/offset")
        for w in pipe.windows.values():
            yield Output("window", w.name, self.window_output(w.name), w.schema or f"derived:window:{w.name}",
                         w.table, "|".join(("window_start", *w.keys)))
        for se in pipe.sessions.values():
            yield Output("session", se.name, self.output_prefix + se.name, f"derived:session:{se.name}", se.table,
                         "|".join((*se.keys, "session_start")))
        for j in pipe.joins.values():
            yield Output("join", j.name, self.output_prefix + j.name, f"derived:join:{j.name}", j.table,
                         f"{j.left} id|{j.right} id")
        for m in pipe.models.values():
            yield Output("scores", m.name, self.output_prefix + m.scores, m.schema or f"derived:scores:{m.name}",
                         m.scores, m.on)
        if pipe.models:
            yield Output("model_quality", "", self.output_prefix + "model_quality", "model_quality",
                         "model_quality", "model|bucket")
            yield Output("drift", "", self.output_prefix + "drift", "drift_event", "drift_events", "model")
        yield Output("rejected", "", self.rejected, "rejected_event", "rejected_events", "source")

    def output_specs(self, partitions: int) -> list[Any]:
        """The output topics to create: keyed ones (update-style values: windows, sessions, joins,
        quality) compacted and kept, the others kept; quality and drift on one partition."""
        from kappa.kafka import TopicSpec

        keep = {"retention.ms": "-1", "retention.bytes": "-1"}
        keyed = {**keep, "cleanup.policy": "compact,delete"}
        specs = []
        for o in self.outputs():
            if o.kind in UPDATE_KINDS or o.kind == "model_quality":
                specs.append(TopicSpec(o.topic, 1 if o.kind == "model_quality" else partitions, dict(keyed)))
            else:
                specs.append(TopicSpec(o.topic, 1 if o.kind == "drift" else partitions, dict(keep)))
        return specs

    @property
    def learning_prefix(self) -> str:
        """Prefix of the models' internal topics (their merge topic, checkpoints)."""
        return self.output_prefix + "learning."

    def model_events(self, model: str) -> str:
        """Single-partition internal topic where a model's scored events and labels meet."""
        return f"{self.learning_prefix}{model}_events"

    @property
    def checkpoints(self) -> str:
        """Compacted topic of the learners' checkpoints (key: the model, or ``samples/<topic>``)."""
        return self.learning_prefix + "checkpoints"

    def ticks(self, agent: str) -> str:
        """Internal topic of the idle ticks of a stream agent that runs sessions or joins (one
        partition per input partition: a tick makes the agent close what the wall clock shows)."""
        return f"{self.group}-{agent}-ticks"

    def agents(self) -> dict[str, list[str]]:
        """Stream agent -> the streams it runs: one per stream, except that the two streams of a
        join run in one agent (named after the first of them), so the join sees both."""
        pipe = self.pipeline
        labels = {m.labels for m in pipe.models.values() if m.reads_labels}
        owner: dict[str, str] = {}
        for inp in self.streams():
            owner[inp.name] = inp.name
        for j in pipe.joins.values():
            a = owner.get(j.left, j.left)
            for s in (j.left, j.right):
                old = owner.get(s)
                for k, v in list(owner.items()):
                    if old is not None and v == old:
                        owner[k] = a
                owner[s] = a
        out: dict[str, list[str]] = {}
        for s in [*(i.name for i in self.streams()), *(s for s in owner if s in labels)]:
            out.setdefault(owner[s], []).append(s)
        return out

    def ticked(self) -> list[str]:
        """The stream agents that run sessions or joins (they get a ticks topic)."""
        pipe = self.pipeline
        streams = {se.stream for se in pipe.sessions.values()} | {j.left for j in pipe.joins.values()}
        return [a for a, members in self.agents().items() if streams & set(members)]

    def required_topics(self) -> list[str]:
        """Every topic the stages of the version read or write (``--until-drained`` waits until
        each is listed and consumed): inputs, partials, ticks, the models' merge, the outputs but
        drift."""
        pipe = self.pipeline
        out = [self.input_topic(n) for n in pipe.inputs]
        out += [self.partials(w) for w in pipe.windows]
        out += [self.ticks(a) for a in self.ticked()]
        out += [self.model_events(m) for m in pipe.models]
        out += [o.topic for o in self.outputs() if o.kind != "drift"]
        return out

    def views(self) -> dict[str, str]:
        """Serving view (in database ``D``) -> what it shows."""
        pipe = self.pipeline
        out = {inp.name: f"one row per valid, deduplicated {inp.name} event"
               + (f", enriched with {pipe.enrich[inp.name].table} as of its time" if inp.name in pipe.enrich else "")
               for inp in self.streams()}
        for w in pipe.windows.values():
            kind = "tumbling" if w.hop_ms == w.size_ms else f"hopping (every {w.hop_ms // 1000}s)"
            out[w.name] = (f"{kind} {w.size_ms // 1000}s windows of {w.stream} by {', '.join(w.keys)}: "
                           + ", ".join(f"{k} = {v}" for k, v in w.aggregations.items()))
        for se in pipe.sessions.values():
            out[se.name] = (f"sessions of {se.stream} per {', '.join(se.keys)} ({se.gap_ms // 60_000} min of "
                            "inactivity end one), latest revision: "
                            + ", ".join(f"{k} = {v}" for k, v in se.aggregations.items()))
        for j in pipe.joins.values():
            out[j.name] = (f"{j.how} interval join of {j.left} with {j.right} on {j.on} ({j.right} time - {j.left} "
                           f"time in [{j.lower_ms // 1000}s, {j.upper_ms // 1000}s]), latest revision")
        for m in pipe.models.values():
            out[m.scores] = (f"P({m.label}) of each {m.stream} event from the {m.name} model, scored before "
                             "its label was learned")
        if pipe.models:
            out["model_quality"] = "progressive metrics of " + ", ".join(pipe.models)
            out["drift_events"] = "drift detections of the models"
        out["rejected_events"] = "every rejected event, with its reason and raw payload"
        for v in pipe.views.values():
            out[v.name] = "declared: " + " ".join(v.sql.split())[:80]
        return out


# -- derived Avro schemas ----------------------------------------------------------------------

def _avro_type(f: Field, nullable: bool) -> Any:
    base: Any = {"type": "long", "logicalType": f.type} if f.is_time else f.type
    return ["null", base] if nullable else base


def _schema_field(inp: Input, name: str) -> dict[str, Any]:
    raw = next(f for f in inp.schema.raw["fields"] if f["name"] == name)
    return dict(raw)


def stream_schema(pipeline: Pipeline, stream: str) -> dict[str, Any]:
    """Avro schema of a stream's valid events: its fields, the enrichment's (nullable: a key may
    be unknown at the event's time), then :data:`LINEAGE_FIELDS`.

    >>> from kappa.pipeline import DEFAULT, load
    >>> s = stream_schema(load(DEFAULT), "orders")
    >>> [f["name"] for f in s["fields"]][7:11], s["fields"][8]["type"]
    (['event_time', 'user_country', 'user_segment', 'user_signup_time'], ['null', 'string'])
    """
    inp = pipeline.input(stream)
    fields = [_schema_field(inp, f.name) for f in inp.schema.fields]
    enrich = pipeline.enrich.get(stream)
    if enrich is not None:
        table = pipeline.input(enrich.table)
        for out, src in enrich.fields.items():
            f = table.schema.field(src)
            assert f is not None
            fields.append({"name": out, "type": _avro_type(f, True), "default": None,
                           "doc": f"{enrich.table}.{src} as of the event's time; null when unknown."})
    fields += [dict(f) for f in LINEAGE_FIELDS]
    name = "".join(p.capitalize() for p in stream.split("_"))
    return {"type": "record", "name": f"{name}Valid", "namespace": f"kappa.{pipeline.name}",
            "doc": f"A valid, deduplicated {stream} event of pipeline {pipeline.name}.", "fields": fields}


def _fields_of(pipeline: Pipeline, w: Window) -> dict[str, Field]:
    fields = {f.name: f for f in pipeline.input(w.stream).schema.fields}
    enrich = pipeline.enrich.get(w.stream)
    if enrich is not None:
        table = pipeline.input(enrich.table)
        for out, src in enrich.fields.items():
            f = table.schema.field(src)
            assert f is not None
            fields[out] = Field(out, f.type, True)
    return fields


def window_schema(pipeline: Pipeline, window: str) -> dict[str, Any]:
    """Avro schema of a window's update-style values: start, end, keys, aggregations, revision.

    >>> from kappa.pipeline import DEFAULT, load
    >>> [(f["name"], f["type"]) for f in window_schema(load(DEFAULT), "revenue_per_minute")["fields"]][2:6]
    [('category', 'string'), ('currency', 'string'), ('orders', 'long'), ('revenue', 'double')]
    """
    w = pipeline.windows[window]
    fields = _fields_of(pipeline, w)
    ts = {"type": "long", "logicalType": "timestamp-millis"}
    out: list[dict[str, Any]] = [
        {"name": "window_start", "type": ts, "doc": "Start of the window (inclusive)."},
        {"name": "window_end", "type": ts, "doc": "End of the window (exclusive)."},
    ]
    for k in w.keys:
        f = fields[k]
        out.append({"name": k, "type": _avro_type(f, f.nullable), "doc": f"Key: {k}."})
    for name, spec in w.aggregations.items():
        fn = spec.split("(")[0].strip()
        out.append({"name": name, "type": "long" if fn == "count" else "double", "doc": f"{spec} over the window."})
    out += [
        {"name": "revision", "type": "long", "doc": "Monotonic revision; the highest is the current value."},
        {"name": "final", "type": "boolean", "default": False, "doc": "True once the window is closed."},
        {"name": "pipeline_version", "type": "string", "doc": "Lineage: pipeline version."},
    ]
    name = "".join(p.capitalize() for p in window.split("_"))
    return {"type": "record", "name": f"{name}Window", "namespace": f"kappa.{pipeline.name}",
            "doc": f"Update-style value of one {window} window of pipeline {pipeline.name}.", "fields": out}


def _typed(pipeline: Pipeline, stream: str) -> dict[str, Field]:
    """A stream's fields and its enrichment's (nullable), by name."""
    fields = {f.name: f for f in pipeline.input(stream).schema.fields}
    enrich = pipeline.enrich.get(stream)
    if enrich is not None:
        table = pipeline.input(enrich.table)
        for out, src in enrich.fields.items():
            f = table.schema.field(src)
            assert f is not None
            fields[out] = Field(out, f.type, True)
    return fields


_TS = {"type": "long", "logicalType": "timestamp-millis"}
_UPDATE_FIELDS: tuple[dict[str, Any], ...] = (
    {"name": "revision", "type": "long", "doc": "Monotonic revision; the highest is the current value."},
    {"name": "final", "type": "boolean", "default": False, "doc": "True once the row can no longer change."},
    {"name": "retracted", "type": "boolean", "default": False,
     "doc": "True on a tombstone: the row is gone (a merged session's old start, an unmatched row paired later)."},
    {"name": "pipeline_version", "type": "string", "doc": "Lineage: pipeline version."},
)


def session_schema(pipeline: Pipeline, session: str) -> dict[str, Any]:
    """Avro schema of a session's update-style values: keys, start, end, aggregations, revision,
    final, retracted (``first(f)`` / ``last(f)`` have ``f``'s type, nullable).

    >>> from kappa.pipeline import load
    >>> s = session_schema(load("examples/clickstream"), "sessions")
    >>> [(f["name"], f["type"]) for f in s["fields"]][:5]  # doctest: +NORMALIZE_WHITESPACE
    [('visitor_id', 'string'), ('session_start', {'type': 'long', 'logicalType': 'timestamp-millis'}),
     ('session_end', {'type': 'long', 'logicalType': 'timestamp-millis'}), ('page_views', 'long'),
     ('landing_url', ['null', 'string'])]
    """
    se = pipeline.sessions[session]
    fields = _typed(pipeline, se.stream)
    out: list[dict[str, Any]] = []
    for k in se.keys:
        f = fields[k]
        out.append({"name": k, "type": _avro_type(f, f.nullable), "doc": f"Key: {k}."})
    out += [{"name": "session_start", "type": dict(_TS), "doc": "Time of the session's first event."},
            {"name": "session_end", "type": dict(_TS), "doc": "Time of the session's last event."}]
    for name, spec in se.aggregations.items():
        fn, _, rest = spec.partition("(")
        fn, arg = fn.strip().lower(), rest.rstrip(") ").strip()
        if fn == "count":
            t: Any = "long"
        elif fn in ("first", "last"):
            t = _avro_type(fields[arg], True)
        elif fn == "sum":
            t = "double"
        else:
            t = ["null", "double"]
        out.append({"name": name, "type": t, "doc": f"{spec} over the session."})
    out += [dict(f) for f in _UPDATE_FIELDS]
    name = "".join(p.capitalize() for p in session.split("_"))
    return {"type": "record", "name": f"{name}Session", "namespace": f"kappa.{pipeline.name}",
            "doc": f"Update-style value of one {session} session of pipeline {pipeline.name}.", "fields": out}


def join_schema(pipeline: Pipeline, join: str) -> dict[str, Any]:
    """Avro schema of an interval join's rows: the key, both events' ids and times (the right
    one's null when unmatched), the declared fields (nullable), matched, revision, final, retracted.

    >>> from kappa.pipeline import load
    >>> [f["name"] for f in join_schema(load("examples/clickstream"), "conversions")["fields"]][:8]
    ['visitor_id', 'left_id', 'right_id', 'left_time', 'right_time', 'url', 'referrer', 'plan']
    """
    j = pipeline.joins[join]
    key = _typed(pipeline, j.left)[j.on]
    out: list[dict[str, Any]] = [
        {"name": j.on, "type": _avro_type(key, False), "doc": "The join key."},
        {"name": "left_id", "type": "string", "doc": f"The {j.left} event (its id, else partition/offset)."},
        {"name": "right_id", "type": ["null", "string"], "default": None,
         "doc": f"The {j.right} event joined with it; null when unmatched."},
        {"name": "left_time", "type": dict(_TS), "doc": f"Event time of the {j.left} event."},
        {"name": "right_time", "type": ["null", dict(_TS)], "default": None,
         "doc": f"Event time of the {j.right} event; null when unmatched."},
    ]
    for name, ref in j.fields.items():
        stream, _, fld = ref.partition(".")
        out.append({"name": name, "type": _avro_type(_typed(pipeline, stream)[fld], True), "default": None,
                    "doc": f"{ref}."})
    out.append({"name": "matched", "type": "boolean",
                "doc": f"True for a pair, false for a {j.left} event without one."})
    out += [dict(f) for f in _UPDATE_FIELDS]
    name = "".join(p.capitalize() for p in join.split("_"))
    return {"type": "record", "name": f"{name}Join", "namespace": f"kappa.{pipeline.name}",
            "doc": f"One row of the {join} interval join of pipeline {pipeline.name}.", "fields": out}


def scores_schema(pipeline: Pipeline, model: str) -> dict[str, Any]:
    """Avro schema of a model's scores: the join key, ``<model>_score`` (P(label) at scoring
    time), the model, how many labels it had learned, the event's time, the version.

    >>> from kappa.pipeline import DEFAULT, load
    >>> [f["name"] for f in scores_schema(load(DEFAULT), "fraud")["fields"]]
    ['order_id', 'fraud_score', 'model', 'labelled_before', 'event_time', 'pipeline_version']
    """
    m = pipeline.models[model]
    key = pipeline.input(m.stream).schema.field(m.on)
    assert key is not None
    ts = {"type": "long", "logicalType": "timestamp-millis"}
    fields: list[dict[str, Any]] = [
        {"name": m.on, "type": _avro_type(key, False), "doc": f"The scored {m.stream} event."},
        {"name": m.score_field, "type": "double", "doc": f"P({m.label}) from the online model at scoring time."},
        {"name": "model", "type": "string", "doc": f"Model name, `{model}`."},
        {"name": "labelled_before", "type": "long", "doc": "Labels the model had learned when it scored the event."},
        {"name": "event_time", "type": ts, "doc": f"Event time of the {m.stream} event."},
        {"name": "pipeline_version", "type": "string", "doc": "Lineage: pipeline version."},
    ]
    name = "".join(p.capitalize() for p in model.split("_"))
    return {"type": "record", "name": f"{name}Score", "namespace": f"kappa.{pipeline.name}",
            "doc": f"The {model} model's score of one {m.stream} event, predicted before its label is learned.",
            "fields": fields}


def derived_schema_text(pipeline: Pipeline, name: str) -> str:
    """Text of a derived schema ``derived:stream:<stream>``, ``derived:window:<window>``,
    ``derived:session:<session>``, ``derived:join:<join>`` or ``derived:scores:<model>``."""
    _, kind, of = name.split(":", 2)
    if kind == "stream":
        return json.dumps(stream_schema(pipeline, of))
    if kind == "window" and of in pipeline.windows:
        return json.dumps(window_schema(pipeline, of))
    if kind == "session" and of in pipeline.sessions:
        return json.dumps(session_schema(pipeline, of))
    if kind == "join" and of in pipeline.joins:
        return json.dumps(join_schema(pipeline, of))
    if kind == "scores" and of in pipeline.models:
        return json.dumps(scores_schema(pipeline, of))
    raise KeyError(f"no derived schema {name!r} in pipeline {pipeline.name}")


def schema_json(pipeline: Pipeline, output: Output) -> str:
    """The Avro schema text of ``output``'s values (a file's text, or the derived one)."""
    from schemas.serde import schema_text

    if output.schema.startswith("derived:"):
        return derived_schema_text(pipeline, output.schema)
    return schema_text(output.schema)
