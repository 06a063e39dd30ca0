"""Publish one of River's bundled datasets to ``samples.<name>``, in dataset order.

The topic has one partition so offsets follow the dataset order and a learner consuming it
sees exactly River's sequence (progressive validation is reproducible). Each record is
``{"index": i, "x": features, "y": label}``; feature values that are not numbers, strings
or booleans are stringified (the Sample schema's map holds null/double/string/boolean).

>>> records = list(dataset_records("Phishing", limit=2))
>>> records[0]["index"], sorted(records[0]["x"])[:2], type(records[0]["y"]).__name__
(0, ['age_of_domain', 'anchor_from_other_domain'], 'bool')
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

from kappa.errors import ConfigError
from kappa.kafka import TopicSpec, ensure_topics
from kappa.topics import input_topics
from producers.base import Publisher

__all__ = ["dataset_records", "publish_dataset", "river_dataset"]


def river_dataset(name: str) -> Any:
    """An instance of ``river.datasets.<name>`` (bundled ones need no download)."""
    from river import datasets

    cls = getattr(datasets, name, None)
    if cls is None or not isinstance(cls, type):
        known = [n for n in datasets.__all__ if n[:1].isupper()]
        raise ConfigError(f"river.datasets has no dataset {name!r}; bundled ones include: "
                          f"{', '.join(known)}")
    return cls()


def _value(v: Any) -> Any:
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, numbers.Real):
        return float(v)
    return str(v)


def dataset_records(name: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Records of dataset ``name`` in River's order (up to ``limit``)."""
    for i, (x, y) in enumerate(river_dataset(name)):
        if limit is not None and i >= limit:
            return
        yield {"index": i, "x": {str(k): _value(v) for k, v in x.items()}, "y": _value(y)}


def publish_dataset(publisher: Publisher, name: str, limit: int | None = None) -> tuple[str, int]:
    """Publish dataset ``name`` to its (one-partition) samples topic; return (topic, count)."""
    topic = input_topics(publisher.settings.topic_prefix).samples(name)
    records = dataset_records(name, limit)  # fails fast on an unknown name
    first = next(records, None)
    ensure_topics(publisher.settings, publisher.bootstrap,
                  [TopicSpec(topic, 1, {"retention.ms": "-1", "retention.bytes": "-1"})])
    if first is None:
        return topic, 0
    n = publisher.publish_many(topic, _chain(first, records), key_field=None)
    return topic, n


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
