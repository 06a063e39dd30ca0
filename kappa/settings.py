"""Every ``KAPPA_*`` setting, defined once.

Values come from the environment (and CLI flags that override it); secrets are
``SecretStr`` so they never show up in ``repr``, logs or ``kappa status``.

>>> s = Settings(home="/tmp/k", kafka_sasl_password="hunter2")
>>> "hunter2" in repr(s)
False
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Kappa configuration; env var ``KAPPA_<FIELD>`` sets field ``<field>``."""

    model_config = SettingsConfigDict(env_prefix="KAPPA_", frozen=True, extra="ignore")

    home: Path = Path(".kappa")
    """Local state: stack data, logs, the embedded ClickHouse directory, reports."""

    kafka_bootstrap: str | None = None
    """An existing Kafka cluster; when set, ``kappa up`` starts no broker."""
    schema_registry_url: str | None = None
    """An existing Confluent-compatible registry; when set, ``kappa up`` starts none."""
    clickhouse_url: str | None = None
    """A ClickHouse server (``http://host:8123``); unset means the embedded chdb engine."""
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")

    kafka_security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    version: str = "v1"
    """The pipeline version (names consumer groups, changelogs, output topics, tables) that
    ``kappa run`` runs before any swap. After ``kappa replay --swap`` it runs the swapped version,
    and setting this to another one is refused without ``--force`` (:mod:`kappa.versions`)."""
    topic_prefix: str = ""
    """Prefix of the input topic names (tests isolate themselves with it; empty in production)."""
    window_grace_seconds: float = 60.0
    """Event-time grace of windows that declare none: later events are counted as too late."""
    partitions: int = 4
    """Partitions of the input topics that declare none (``[inputs.<name>] partitions``)."""
    metrics_port: int = 0
    """Base port of the Prometheus endpoints; 0 picks free ports."""
    metrics_host: str = "127.0.0.1"
    """Address the Prometheus endpoints bind; containers set 0.0.0.0 to be scraped from outside."""

    sink_batch_rows: int = 50_000
    """Max rows the sink buffers before one insert per table (bounds its memory)."""
    sink_batch_seconds: float = 0.5
    """Max age of a sink batch before it is inserted (bounds freshness)."""
    sink_fail_inserts: int = 0
    """Failure injection (tests): the embedded sink fails its next N inserts, then recovers."""
    sink_crash_at: str = ""
    """Crash injection (tests): ``<point>:<batch>`` SIGKILLs the sink at ``point`` (mid_batch,
    before_offsets, before_commit) of its ``batch``-th batch."""

    processor_drop_fetch: str = ""
    """Failure injection (tests): ``<topic>:<partition>`` — each worker drops the records of its
    first fetch of that partition, as faust-streaming sometimes does (:mod:`stream_processors.stalls`)."""

    fast_consumer: bool = False
    """Read the stream agents' source topics with one confluent-kafka consumer per worker, in
    whole fetches, instead of Faust's per-message path (:mod:`stream_processors.fast_source`);
    Faust keeps the group, assignment, tables and commits. Off until proven by the crash tests."""

    processor_crash_after_batches: int = 0
    """Crash injection (tests): a worker SIGKILLs itself once its stream stage has produced and
    flushed the outputs of this many batches, before acking the last one (0: never)."""

    processor_crash_on_close: bool = False
    """Crash injection (tests): a worker SIGKILLs itself on its first window batch that closes a
    window, once that batch's state is written and before its outputs are queued."""

    drift_policy: str = "challenger"
    """What every model does on a drift detection: ``challenger`` (default: a fresh model learns
    beside it and replaces it once better on the labels since the detection), ``reset`` or ``none``."""
    drift_delta: float = 0.002
    """ADWIN confidence of the drift detectors (smaller: fewer, surer detections)."""
    learning_bucket_size: int = 100
    """Samples per model_quality bucket of the ``samples.*`` streams."""
    learning_batch_size: int = 1
    """Mini-batch of the ``samples.*`` learners: 1 is exact progressive validation."""
    # The KAPPA_FRAUD_* names are kept from the first pipeline (the contract); they apply to every
    # [models.<name>] of any pipeline.
    fraud_horizon_hours: float = 168.0
    """How long every model keeps an event's features (and an orphan label) for its pair."""
    fraud_lag_seconds: float = 60.0
    """Out-of-orderness every model's merge waits for before applying events in event-time order."""
    fraud_idle_seconds: float = 2.0
    """A quiet model stream publishes its provisional tail after this long (processing time; the
    model never learns it early, so this only sets latency, not results)."""
    fraud_checkpoint_seconds: float = 30.0
    """At most this long between two checkpoints of every model (and at every pause): its
    merge buffer holds ``fraud_lag_seconds`` of events, so a checkpoint per batch would cost
    more than the batch. A crash re-applies at most this much input (same outputs)."""

    category_map: str = ""
    """A value-map knob, ``src=dst[,src=dst...]`` (e.g. ``books=media``; empty = identity): the one
    the e-commerce example declares (``[inputs.orders] value_maps = { category = "category_map" }``,
    kept as a setting for its contract). A pipeline may declare knobs of its own, read from
    ``KAPPA_<NAME>`` (:meth:`knob`); a replay as a new version may change them (``kappa replay``)."""

    kafka_heap: str = "768m"
    registry_heap: str = "384m"

    def knob(self, name: str) -> str:
        """The value of knob ``name``: this settings' field of that name, else ``KAPPA_<NAME>``.

        >>> Settings(category_map="a=b").knob("category_map"), Settings().knob("no_such_knob")
        ('a=b', '')
        """
        if name in type(self).model_fields:
            return str(getattr(self, name))
        return os.environ.get(f"KAPPA_{name.upper()}", "")

    def value_map(self, declared: str | Mapping[str, str]) -> dict[str, str]:
        """A declared value map: a table as it is, a knob's ``src=dst,...`` parsed.

        >>> Settings(category_map="books=media, music=media").value_map("category_map")
        {'books': 'media', 'music': 'media'}
        """
        if not isinstance(declared, str):
            return dict(declared)
        pairs = (item.split("=", 1) for item in self.knob(declared).split(",") if "=" in item)
        return {src.strip(): dst.strip() for src, dst in pairs if src.strip()}

    @property
    def stack_file(self) -> Path:
        """Where ``kappa up`` records the endpoints and pids of what it started."""
        return self.home / "stack.json"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings read from the environment."""
    return Settings()
