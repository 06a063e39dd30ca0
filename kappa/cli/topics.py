"""``kappa topics create``: the input topics and the outputs of a pipeline version."""

from __future__ import annotations

import click

from kappa.kafka import ensure_topics
from kappa.settings import get_settings
from kappa.topics import input_specs, output_topics

__all__ = ["topics"]


@click.group()
def topics() -> None:
    """Kafka topics of the contract."""


@topics.command()
@click.option("--version", "version", default=None, help="Pipeline version (default KAPPA_VERSION).")
@click.option("--partitions", type=int, default=None, help="Partitions (default KAPPA_PARTITIONS).")
@click.option("--topic-prefix", default=None, help="Input topic prefix (default KAPPA_TOPIC_PREFIX).")
def create(version: str | None, partitions: int | None, topic_prefix: str | None) -> None:
    """Create the missing input + output topics (existing ones are left as they are)."""
    from kappa.stack.manager import endpoints

    settings = get_settings()
    version = version or settings.version
    partitions = partitions or settings.partitions
    prefix = settings.topic_prefix if topic_prefix is None else topic_prefix
    specs = input_specs(partitions, prefix) + output_topics(version).specs(partitions)
    created = set(ensure_topics(settings, endpoints(settings).kafka_bootstrap, specs))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        click.echo(f"{spec.name:<40} {spec.partitions:>3} partition(s)  {state}")
