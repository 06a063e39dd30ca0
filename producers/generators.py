"""Generators of a pipeline's events: ``[pipeline] generator = "module:function"``.

A generator is a function ``(events: int, seed: int, now_ms: int) -> list[Event]``: the records
to publish in order, each with its input (unprefixed topic), key, value and *kind*. Kinds say
what the pipeline must do with each record, so any pipeline's run reconciles from the events
alone (:func:`expectations`): ``invalid`` records are rejected, ``duplicate`` ones dropped,
``table`` records update a table, everything else lands in its stream's view (``too_late``
ones too, flagged late).

>>> evs = [Event("r", "k", {}, "valid"), Event("r", "k", {}, "duplicate"), Event("r", "k", {}, "invalid"),
...        Event("r", "k", {}, "too_late"), Event("d", "k", {}, "table")]
>>> expectations(evs)["r"]
{'published': 4, 'landed': 2, 'rejected': 1, 'duplicates': 1, 'too_late': 1}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "expectations", "generator_of", "publish_events"]


@dataclass(frozen=True)
class Event:
    """One record to publish: unprefixed input name, key, value, and what it is (its kind)."""

    topic: str
    key: str
    value: dict[str, Any]
    kind: str


def generator_of(pipeline: Any) -> Callable[..., list[Any]] | None:
    """The pipeline's generator function, or None when it declares none."""
    ref = getattr(pipeline, "generator", None)
    return pipeline.resolve(ref) if ref else None


def publish_events(publisher: Any, events: Iterable[Any]) -> int:
    """Publish ``events`` in order to the (prefixed) input topics of ``publisher.settings``."""
    prefix = publisher.settings.topic_prefix
    encoders: dict[str, Any] = {}
    produce = publisher.produce_raw
    n = 0
    for e in events:
        encode = encoders.get(e.topic)
        if encode is None:
            encode = encoders[e.topic] = publisher.encoder(prefix + e.topic).encode_one
        produce(prefix + e.topic, encode(e.value), e.key.encode())
        n += 1
    return n


def expectations(events: Iterable[Any]) -> dict[str, dict[str, int]]:
    """Per input: published, and how many must land, be rejected, be dropped as duplicates."""
    kinds: dict[str, Counter[str]] = {}
    for e in events:
        kinds.setdefault(e.topic, Counter())[e.kind] += 1
    out = {}
    for topic, k in kinds.items():
        published = sum(k.values())
        if set(k) <= {"table", "invalid"} and k["table"]:
            out[topic] = {"published": published, "tables": k["table"], "rejected": k["invalid"]}
            continue
        out[topic] = {"published": published, "landed": published - k["invalid"] - k["duplicate"],
                      "rejected": k["invalid"], "duplicates": k["duplicate"], "too_late": k["too_late"]}
    return out
