"""Which schema every topic carries: the one place the topic -> schema mapping lives.

Inputs are matched after removing the input topic prefix (``KAPPA_TOPIC_PREFIX``); outputs
by the versioned names the definition derives (:mod:`kappa.pipeline.derive`).

>>> schema_for_topic("orders"), schema_for_topic("t1.orders", prefix="t1.")
('orders', 'orders')
>>> schema_for_topic("samples.phishing"), schema_for_topic("orders.dlq")
('sample', 'rejected_event')
>>> schema_for_topic("kappa.v2.revenue_per_minute")
'revenue_window'
"""

from __future__ import annotations

import re

from kappa.errors import KappaError
from kappa.pipeline import current
from kappa.topics import SAMPLES_PREFIX, InputTopics

__all__ = ["UnknownTopic", "input_schemas", "output_schemas", "schema_for_topic", "topic_schemas"]


def input_schemas() -> dict[str, str]:
    """Unprefixed input topic -> schema name, as the selected pipeline declares them.

    >>> input_schemas()["orders"]
    'orders'
    """
    return {name: inp.schema.name for name, inp in current().inputs.items()}


def output_schemas(version: str) -> dict[str, str]:
    """Output topic of ``version`` of the selected pipeline -> schema name (a file's, or
    ``derived:...``): :meth:`kappa.pipeline.derive.Names.outputs`.

    >>> output_schemas("v1")["kappa.v1.scores"]
    'fraud_score'
    """
    from kappa.pipeline.derive import Names

    return {o.topic: o.schema for o in Names(current(), version).outputs()}


_OUTPUT = re.compile(r"^([^.]+)\.([^.]+)\.")


class UnknownTopic(KappaError):
    """A topic no Kappa schema is declared for."""


def schema_for_topic(topic: str, prefix: str = "") -> str:
    """Schema name (``schemas/avro/<name>.avsc``) of the values of ``topic``."""
    if topic.endswith(".dlq"):
        return "rejected_event"
    match = _OUTPUT.match(topic)
    if match and match.group(1) == current().database:
        found = output_schemas(match.group(2)).get(topic)
        if found:
            return found
    bare = topic[len(prefix):] if prefix and topic.startswith(prefix) else topic
    inputs = input_schemas()
    if bare in inputs:
        return inputs[bare]
    if bare.startswith(SAMPLES_PREFIX) and len(bare) > len(SAMPLES_PREFIX):
        return "sample"
    pipe = current()
    raise UnknownTopic(
        f"no schema is declared for topic {topic!r}: it is not an input of pipeline {pipe.name!r} "
        f"({pipe.path}); its inputs are "
        f"{', '.join(inputs)} (also samples.<name> and <input>.dlq); declare it under [inputs] "
        "or give --schema NAME"
    )


def topic_schemas(version: str, prefix: str = "") -> dict[str, str]:
    """Every fixed topic of the contract (inputs, their DLQs, outputs of ``version``) -> schema.

    ``samples.<name>`` topics are open-ended and registered when first published to.

    >>> topic_schemas("v1")["kappa.v1.scores"]
    'fraud_score'
    """
    inputs = InputTopics(prefix)
    out: dict[str, str] = {}
    for bare, name in input_schemas().items():
        out[inputs.prefix + bare] = name
        out[inputs.dlq(inputs.prefix + bare)] = "rejected_event"
    out.update(output_schemas(version))
    return out
