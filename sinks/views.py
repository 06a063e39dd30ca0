"""The serving views: stable names in the pipeline's database (``kappa``) over one version's tables.

Why views: users and dashboards query ``kappa.orders`` etc. forever, while the storage
behind them is versioned; a replay builds ``kappa_<V2>`` next to ``kappa_<V1>`` and
:func:`swap_views` repoints every view with ``CREATE OR REPLACE VIEW`` (each swap is
atomic per view). Views read with ``FINAL`` so they show exactly one current row per key
however many times a row was delivered.
"""

from __future__ import annotations

from kappa.errors import SinkError
from kappa.pipeline import Pipeline, current
from sinks.base import Backend, quote
from sinks.migrate import database

__all__ = ["KAPPA_VIEWS", "SERVING_DB", "VIEWS", "ensure_views", "serving_version", "swap_views", "views_of"]

KAPPA_VIEWS: dict[str, str] = {
    "model_quality": """
        SELECT model, bucket, labelled, accuracy, roc_auc, log_loss, drift_detections,
               pipeline_version,
               if(q.bucket_index < 0, toUnixTimestamp64Milli(q.bucket), q.bucket_index) AS bucket_index
        FROM {db}.model_quality AS q FINAL""",
    "rejected_events": """
        SELECT source, reason, payload, rejected_at, topic, stage, pipeline_version,
               kafka_topic, kafka_partition, kafka_offset
        FROM {db}.rejected_events FINAL""",
    "drift_events": """
        SELECT model, detector, labelled, event_time, action, pipeline_version
        FROM {db}.drift_events FINAL""",
}
"""Views every pipeline's serving database has."""

_SINK_LINEAGE = ("kafka_topic", "kafka_partition", "kafka_offset", "ingested_at")


def views_of(pipeline: Pipeline) -> dict[str, str]:
    """Serving view -> its SELECT over version database ``{db}``: a view per stream (one row per
    valid event, its columns and ``ingested_at``), per window (its values), per session and
    interval join (the latest revision of each row, tombstones dropped) and per model's
    scores (named as its ``scores`` output), Kappa's own
    (:data:`KAPPA_VIEWS`), and the declared ``[views.<name>]`` (which replace a derived one of
    the same name)."""
    from kappa.pipeline.derive import Names
    from sinks.ddl import tables

    derived = tables(pipeline)
    out: dict[str, str] = {}
    for o in Names(pipeline, "v").outputs():
        t = derived.get(o.table)
        if t is None:
            continue
        names = [c for c, _ in t.columns if c not in _SINK_LINEAGE]
        if o.kind == "stream":
            names.append("ingested_at")
        where = ""
        if o.kind in ("session", "join"):
            names.remove("retracted")
            where = " WHERE NOT retracted"
        out[o.table if o.kind == "scores" else o.name] = (f"SELECT {', '.join(names)} FROM {{db}}.{o.table} FINAL"
                                                          + where)
    out.update(KAPPA_VIEWS)
    out.update({name: v.sql for name, v in pipeline.views.items()})
    return out


SERVING_DB = current().database
"""The selected pipeline's serving database (``kappa`` for the e-commerce example)."""

VIEWS: dict[str, str] = views_of(current())
"""The selected pipeline's serving views."""


def _ensure_serving_db(backend: Backend) -> None:
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {SERVING_DB}")
    backend.execute(
        f"CREATE TABLE IF NOT EXISTS {SERVING_DB}.serving_versions (version String, "
        "swapped_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY swapped_at "
        "SETTINGS non_replicated_deduplication_window = 100"
    )


def swap_views(backend: Backend, version: str) -> None:
    """Point every serving view at the tables of ``version`` (migrated already)."""
    _ensure_serving_db(backend)
    db = database(version)
    for name, select in VIEWS.items():
        backend.execute(f"CREATE OR REPLACE VIEW {SERVING_DB}.{name} AS {select.format(db=db)}")
    backend.execute(f"INSERT INTO {SERVING_DB}.serving_versions (version) VALUES ({quote(version)})")


def serving_version(backend: Backend) -> str | None:
    """The version the views point at (the last swapped), or None before the first swap."""
    _ensure_serving_db(backend)
    return backend.scalar(
        f"SELECT argMax(version, swapped_at) FROM {SERVING_DB}.serving_versions HAVING count() > 0"
    )


def ensure_views(backend: Backend, version: str) -> bool:
    """Create the views for ``version`` when none exist (the first version to run); True if so."""
    _ensure_serving_db(backend)
    have = {r[0] for r in backend.rows(f"SELECT name FROM system.tables WHERE database = '{SERVING_DB}'")}
    current = serving_version(backend)
    if current is None:
        swap_views(backend, version)
        return True
    db = database(current)
    for name, select in VIEWS.items():
        if name not in have:  # a view added by a newer release: create it for the live version
            backend.execute(f"CREATE VIEW IF NOT EXISTS {SERVING_DB}.{name} AS {select.format(db=db)}")
        elif _outdated(backend, name, select.format(db=db)):
            # columns a newer release changed (added one, or a migration retyped one)
            backend.execute(f"CREATE OR REPLACE VIEW {SERVING_DB}.{name} AS {select.format(db=db)}")
    return False


def _outdated(backend: Backend, name: str, select: str) -> bool:
    """True when view ``name`` lacks the columns of ``select`` and ``select`` runs on the tables
    (False while they are not migrated yet: their own sink migrates them when it starts)."""
    def columns(describe: str) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in backend.rows(describe)]

    try:
        want = columns(f"DESCRIBE TABLE ({select})")
    except SinkError:
        return False
    return want != columns(f"DESCRIBE TABLE {SERVING_DB}.{name}")
