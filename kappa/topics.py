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

from dataclasses import dataclass

from kappa.kafka import TopicSpec

__all__ = [
    "ORDERS",
    "ORDER_LABELS",
    "SAMPLES_PREFIX",
    "USERS",
    "OutputTopics",
    "dlq",
    "input_specs",
    "output_topics",
    "samples_topic",
]

USERS = "users"
ORDERS = "orders"
ORDER_LABELS = "order_labels"
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
    """The topics pipeline version ``version`` writes."""

    version: str

    @property
    def prefix(self) -> str:
        return f"kappa.{self.version}."

    @property
    def enriched(self) -> str:
        return self.prefix + "orders.enriched"

    @property
    def revenue(self) -> str:
        return self.prefix + "revenue_per_minute"

    @property
    def model_quality(self) -> str:
        return self.prefix + "model_quality"

    @property
    def scores(self) -> str:
        return self.prefix + "scores"

    @property
    def drift(self) -> str:
        return self.prefix + "drift"

    @property
    def rejected(self) -> str:
        return self.prefix + "rejected"

    def specs(self, partitions: int) -> list[TopicSpec]:
        """Output topics: keyed ones compacted-and-kept (update-style values), others kept."""
        keyed = {**_KEEP, "cleanup.policy": "compact,delete"}
        return [
            TopicSpec(self.enriched, partitions, dict(_KEEP)),
            TopicSpec(self.revenue, partitions, keyed),
            TopicSpec(self.scores, partitions, dict(_KEEP)),
            TopicSpec(self.model_quality, 1, keyed),
            TopicSpec(self.drift, 1, dict(_KEEP)),
            TopicSpec(self.rejected, partitions, dict(_KEEP)),
        ]


def output_topics(version: str) -> OutputTopics:
    """Output topics of pipeline ``version``."""
    return OutputTopics(version)


def input_specs(partitions: int) -> list[TopicSpec]:
    """Input topics with replay-friendly retention; ``users`` is compacted (latest per key)."""
    return [
        TopicSpec(USERS, partitions, {**_COMPACT}),
        TopicSpec(ORDERS, partitions, dict(_KEEP)),
        TopicSpec(ORDER_LABELS, partitions, dict(_KEEP)),
        TopicSpec(dlq(USERS), 1, dict(_KEEP)),
        TopicSpec(dlq(ORDERS), 1, dict(_KEEP)),
        TopicSpec(dlq(ORDER_LABELS), 1, dict(_KEEP)),
    ]
