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

import inspect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Generated", "expectations", "generator_of", "publish_events", "run_generator"]


@dataclass(frozen=True)
class Event:
    """One record to publish: unprefixed input name, key, value, and what it is (its kind)."""

    topic: str
    key: str
    value: dict[str, Any]
    kind: str


@dataclass
class Generated:
    """A generator run with more to say than its events (a generator may return this instead
    of a list): what the pipeline's own report checks the run against, and how to show it."""

    events: list[Event]
    manifest: dict[str, Any] = field(default_factory=dict)
    """JSON-able facts of the run (written to ``KAPPA_HOME/manifests``, given to the report hook)."""
    note: str = ""
    """One phrase about the run for ``kappa demo``'s publish line (default: the generator's name)."""
    summary: list[str] = field(default_factory=list)
    """Lines ``kappa produce`` prints (default: what each input must give, :func:`expectations`)."""


def generator_of(pipeline: Any) -> Callable[..., Any] | None:
    """The pipeline's generator function, or None when it declares none."""
    ref = getattr(pipeline, "generator", None)
    return pipeline.resolve(ref) if ref else None


def run_generator(generate: Callable[..., Any], count: int, seed: int, **options: Any) -> Generated:
    """Call ``generate(count, seed=seed, **options)``; its result as a :class:`Generated`.

    Options the generator does not take are refused by name (the generator's own knobs are
    its keyword arguments).

    >>> def gen(count, seed=1, *, rate=0.5):
    ...     return [Event("r", str(i), {"i": i}, "valid") for i in range(count)]
    >>> len(run_generator(gen, 3, 7, rate=0.1).events)
    3
    >>> run_generator(gen, 3, 7, speed=2)
    Traceback (most recent call last):
    ...
    kappa.errors.ConfigError: the generator gen takes no option speed (its options: rate)
    """
    from kappa.errors import ConfigError

    params = inspect.signature(generate).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    known = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY
             or (p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("count", "events", "seed", "now_ms"))]
    unknown = [k for k in options if k not in known and not takes_any]
    if unknown:
        raise ConfigError(f"the generator {getattr(generate, '__name__', generate)} takes no option "
                          f"{', '.join(unknown)} (its options: {', '.join(known) or 'none'})")
    out = generate(count, seed=seed, **options)
    return out if isinstance(out, Generated) else Generated(list(out))


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
