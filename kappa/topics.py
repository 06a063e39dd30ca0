"""Topic names and layouts: the Kafka half of the public contract, in one place.

Inputs are unversioned (they are the log). Everything the pipeline writes is versioned, so a
replay as version V never touches the live version's outputs.

>>> output_topics("v2").enriched
'kappa.v2.orders.enriched'
>>> dlq("orders")
'orders.dlq'
>>> samples_topic("Phishing")
'samples.phishing'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kappa.kafka import TopicSpec
from kappa.pipeline import Input, Pipeline, current

__all__ = [
    "SAMPLES_PREFIX",
    "InputTopics",
    "OutputTopics",
    "dlq",
    "input_for_topic",
    "input_specs",
    "input_topics",
    "output_topics",
    "samples_topic",
]

SAMPLES_PREFIX = "samples."

_KEEP = {"retention.ms": "-1", "retention.bytes": "-1"}
_COMPACT = {"cleanup.policy": "compact", "min.compaction.lag.ms": "3600000"}


def dlq(topic: str) -> str:
    """Producer-edge dead-letter topic of input ``topic`` (RejectedEvent envelopes)."""
    return f"{topic}.dlq"


def samples_topic(dataset: str) -> str:
    """Topic a River dataset is published to."""
    return SAMPLES_PREFIX + dataset.lower()


@dataclass(frozen=True)
class OutputTopics:
    """The topics version ``version`` of the selected pipeline writes (named by
    :class:`kappa.pipeline.derive.Names`); ``enriched`` and ``window`` are its first stream's
    and first window's outputs (:attr:`names` has them all)."""

    version: str

    @property
    def names(self) -> Any:
        from kappa.pipeline.derive import Names

        return Names(current(), self.version)

    def _first(self, kind: str) -> str:
        return next((o.topic for o in self.names.outputs() if o.kind == kind), "")

    @property
    def prefix(self) -> str:
        return str(self.names.output_prefix)

    @property
    def enriched(self) -> str:
        return self._first("stream")

    @property
    def window(self) -> str:
        return self._first("window")

    @property
    def model_quality(self) -> str:
        return self.prefix + "model_quality"

    @property
    def scores(self) -> str:
        """The first model's scores."""
        return self._first("scores") or self.prefix + "scores"

    @property
    def drift(self) -> str:
        return self.prefix + "drift"

    @property
    def rejected(self) -> str:
        return self.prefix + "rejected"

    @property
    def lineage(self) -> str:
        """Compacted one-record topic naming the log this version is derived from (kappa.lineage)."""
        return self.prefix + "lineage"

    @property
    def partials(self) -> str:
        """Internal repartition topic of the first window's partials (consumed by the version's group)."""
        pipe = current()
        return str(self.names.partials(next(iter(pipe.windows)))) if pipe.windows else ""

    @property
    def all(self) -> list[str]:
        """Every output topic (the sink's subscription, less the DLQs)."""
        return [o.topic for o in self.names.outputs()]

    def specs(self, partitions: int) -> list[TopicSpec]:
        """Output topics: keyed ones compacted-and-kept (update-style values), others kept."""
        return list(self.names.output_specs(partitions))


def output_topics(version: str) -> OutputTopics:
    """Output topics of pipeline ``version``."""
    return OutputTopics(version)


@dataclass(frozen=True)
class InputTopics:
    """Input topic names, optionally prefixed (``KAPPA_TOPIC_PREFIX``; tests use it to isolate).

    >>> InputTopics("t1.").topic("orders"), InputTopics("").samples("Phishing")
    ('t1.orders', 'samples.phishing')
    """

    prefix: str = ""

    def topic(self, name: str, pipeline: Pipeline | None = None) -> str:
        """The topic of input ``name`` of ``pipeline`` (default: the selected one)."""
        return self.prefix + (pipeline or current()).input(name).name

    @property
    def all(self) -> list[str]:
        """The topics of every input of the selected pipeline, in declared order."""
        return [self.prefix + name for name in current().inputs]

    def samples(self, dataset: str) -> str:
        return self.prefix + samples_topic(dataset)

    @property
    def samples_pattern(self) -> str:
        """Regex matching every learning stream of this prefix."""
        return "^" + re.escape(self.prefix + SAMPLES_PREFIX) + r"[^.]+$"

    def dlq(self, topic: str) -> str:
        return dlq(topic)


def input_topics(prefix: str = "") -> InputTopics:
    """Input topics for ``prefix`` (pass ``settings.topic_prefix``)."""
    return InputTopics(prefix)


def input_specs(partitions: int, prefix: str = "", pipeline: Pipeline | None = None) -> list[TopicSpec]:
    """Input topics of ``pipeline`` (default: the selected one) with replay-friendly retention;
    table-like inputs (``table = true``) compacted (latest per key), then each input's DLQ.

    An input's declared ``partitions`` wins over ``partitions`` (``KAPPA_PARTITIONS``).

    >>> [(t.name, t.partitions, t.config.get("cleanup.policy")) for t in input_specs(4)][:3]
    [('users', 4, 'compact'), ('orders', 4, None), ('order_labels', 4, None)]
    """
    pipe = pipeline or current()
    specs = [TopicSpec(prefix + name, inp.partitions or partitions, dict(_COMPACT if inp.table else _KEEP))
             for name, inp in pipe.inputs.items()]
    specs += [TopicSpec(dlq(prefix + name), 1, dict(_KEEP)) for name in pipe.inputs]
    return specs


def input_for_topic(topic: str, prefix: str = "", pipeline: Pipeline | None = None) -> Input | None:
    """The input of ``pipeline`` that topic ``topic`` (with input ``prefix``) carries, or None.

    >>> input_for_topic("t.orders", "t.").key, input_for_topic("orders.dlq")
    ('user_id', None)
    """
    pipe = pipeline or current()
    bare = topic[len(prefix):] if prefix and topic.startswith(prefix) else topic
    return pipe.inputs.get(bare)
