"""``kappa produce``: publish from the e-commerce generator, a JSONL/CSV file or a River dataset."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from kappa.errors import ConfigError
from kappa.kafka import TopicSpec, check_connection, ensure_topics
from kappa.settings import Settings, get_settings
from kappa.topics import dlq, input_specs

__all__ = ["produce"]


def _settings(topic_prefix: str | None) -> Settings:
    base = get_settings()
    if topic_prefix is None:
        return base
    return base.model_copy(update={"topic_prefix": topic_prefix})


def _start_ms(start: str | None, option: str = "--start") -> int | None:
    """``--start`` as epoch ms: the same ISO-8601 / epoch-ms rules as timestamps in files."""
    if start is None:
        return None
    from producers.files import _timestamp

    try:
        return _timestamp(start, from_text=True)
    except ValueError:
        raise ConfigError(f"{option} {start!r} is not ISO-8601 (e.g. 2024-05-01T00:00:00Z) or epoch ms") from None


def _batch_config(settings: Settings, bootstrap: str, topics: list[str]) -> dict[str, Any]:
    """``batch.size`` no larger than the smallest ``max.message.bytes`` of ``topics``.

    librdkafka fills a batch up to ``batch.size`` whatever the topic's limit, and the broker
    refuses a whole batch above it; rows larger than the limit are rejected one by one
    (``too_large``), so batches of the others must fit too.
    """
    from producers.base import PRODUCER_CONFIG, topic_max_message_bytes

    limits = [n for n in (topic_max_message_bytes(settings, bootstrap, t) for t in topics) if n]
    batch = int(PRODUCER_CONFIG["batch.size"])
    return {"batch.size": min(limits)} if limits and min(limits) < batch else {}


@click.command()
@click.option("--generator", metavar="NAME",
              help="Event generator: ecommerce, or the selected pipeline's name when it declares a generator.")
@click.option("--events", type=int, default=10_000, show_default=True,
              help="Generator: orders to publish (duplicates and invalid ones included).")
@click.option("--seed", type=int, default=42, show_default=True, help="Generator seed.")
@click.option("--users", type=int, default=None, help="Generator: users (default events/4).")
@click.option("--start", default=None,
              help="Generator: event-time start, ISO-8601 or epoch ms (default: end just before now).")
@click.option("--drift-at", type=int, default=None, help="Generator: order index of the concept drift.")
@click.option("--dup-rate", type=float, default=0.01, show_default=True)
@click.option("--invalid-rate", type=float, default=0.01, show_default=True)
@click.option("--late-rate", type=float, default=0.005, show_default=True)
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False),
              help="JSONL or CSV file to publish.")
@click.option("--topic", help="File: topic to publish to.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default=None,
              help="File: force the format (default: from the extension).")
@click.option("--schema", default=None, help="File: Avro schema to encode rows with, e.g. orders or users "
              "(default: the one of --topic: users, orders, order_labels, samples.<name>).")
@click.option("--validate", is_flag=True, help="File: also reject rows that break the topic's data-quality rules "
              "(e.g. an unknown currency), with the reason, to the topic's DLQ.")
@click.option("--min-time", default=None,
              help="File: earliest timestamp a row may hold, ISO-8601 or epoch ms (default 2000-01-01).")
@click.option("--river-dataset", default=None, help="River bundled dataset, e.g. Phishing.")
@click.option("--limit", type=int, default=None, help="River dataset: publish at most this many samples.")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--topic-prefix", default=None, help="Prefix of the input topics (default KAPPA_TOPIC_PREFIX).")
def produce(generator: str | None, events: int, seed: int, users: int | None, start: str | None,
            drift_at: int | None, dup_rate: float, invalid_rate: float, late_rate: float,
            path: str | None, topic: str | None, fmt: str | None, schema: str | None,
            validate: bool, min_time: str | None, river_dataset: str | None, limit: int | None, rate: float | None,
            topic_prefix: str | None) -> None:
    """Publish events: --generator ecommerce, --file PATH --topic T, or --river-dataset NAME."""
    from kappa.stack.manager import endpoints
    from producers.base import Publisher

    chosen = [x for x in (generator, path, river_dataset) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --generator, --file or --river-dataset")
    settings = _settings(topic_prefix)
    if path:
        if not topic:
            raise click.UsageError("--file needs --topic")
        if schema is None:  # an unknown topic is refused before anything connects
            from schemas.catalog import schema_for_topic

            schema_for_topic(topic, settings.topic_prefix)
    ep = endpoints(settings)
    from kappa import metrics

    metrics.serve("producer")
    check_connection(settings, ep.kafka_bootstrap)  # wrong credentials fail here, fast and clearly

    if generator and generator != "ecommerce":
        _pipeline_generator(settings, ep.kafka_bootstrap, generator, events, seed, rate)
        return
    if generator:
        from kappa.pipeline import DEFAULT, current
        from producers.ecommerce import GeneratorConfig, generate, publish_events

        if current().path.parent != DEFAULT:
            raise click.UsageError(f"the ecommerce generator writes the inputs of examples/ecommerce, not of pipeline "
                                   f"{current().name!r}: use --generator {current().name} (if it declares one)")

        cfg = GeneratorConfig(events=events, seed=seed, users=users, start_ms=_start_ms(start),
                              drift_at=drift_at, dup_rate=dup_rate, invalid_rate=invalid_rate,
                              late_rate=late_rate, grace_ms=int(settings.window_grace_seconds * 1000))
        records, manifest = generate(cfg)
        ensure_topics(settings, ep.kafka_bootstrap, input_specs(settings.partitions, settings.topic_prefix))
        pub = Publisher(settings, ep.kafka_bootstrap, rate=rate, total=len(records))
        with pub:
            publish_events(pub, records)
            summary = pub.flush()
        for line in manifest.summary_lines():
            click.echo(line)
        run = f"ecommerce-seed{seed}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}"
        out = settings.home / "manifests" / f"{run}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"run": run, "topic_prefix": settings.topic_prefix, **manifest.to_dict()}
        out.write_text(json.dumps(doc, indent=1))
        click.echo(f"manifest: {out}")
        click.echo(str(summary))
        return

    if river_dataset:
        from producers.river_datasets import publish_dataset

        pub = Publisher(settings, ep.kafka_bootstrap, rate=rate, total=limit)
        with pub:
            name, n = publish_dataset(pub, river_dataset, limit)
            summary = pub.flush()
        click.echo(f"{river_dataset}: {n} samples -> {name}")
        click.echo(str(summary))
        return

    from producers.files import publish_file

    assert topic is not None
    min_time_ms = _start_ms(min_time, "--min-time")
    ensure_topics(settings, ep.kafka_bootstrap, [TopicSpec(topic, settings.partitions),
                                                 TopicSpec(dlq(topic), 1)])
    pub = Publisher(settings, ep.kafka_bootstrap, rate=rate, **_batch_config(settings, ep.kafka_bootstrap,
                                                                             [topic, dlq(topic)]))
    with pub:
        report = publish_file(pub, path, topic, fmt, validate=validate, schema=schema,  # type: ignore[arg-type]
                              min_time_ms=min_time_ms, report=lambda line: click.echo(line, err=True))
        summary = pub.flush()
    click.echo(f"{report.path}: {report.rows} rows, {report.published} published to {topic}, "
               f"{report.rejected} rejected to {dlq(topic)}")
    click.echo(str(summary))
    if report.rejected:
        click.secho(f"{report.rejected} row(s) rejected (see above)", fg="red", err=True)
        sys.exit(1)


def _pipeline_generator(settings: Any, bootstrap: str, name: str, events: int, seed: int,
                        rate: float | None) -> None:
    """``--generator NAME`` of the selected pipeline (``[pipeline] generator``)."""
    from kappa.pipeline import current
    from producers.base import Publisher
    from producers.generators import expectations, generator_of, publish_events

    pipe = current()
    generate = generator_of(pipe)
    if name != pipe.name or generate is None:
        known = ["ecommerce"] + ([pipe.name] if generate is not None else [])
        raise click.UsageError(f"no generator {name!r} for pipeline {pipe.name!r} ({pipe.path}): use "
                               + " or ".join(f"--generator {k}" for k in known))
    records = generate(events, seed=seed)
    ensure_topics(settings, bootstrap, input_specs(settings.partitions, settings.topic_prefix))
    with Publisher(settings, bootstrap, rate=rate, total=len(records)) as pub:
        publish_events(pub, records)
        summary = pub.flush()
    for topic, want in expectations(records).items():
        click.echo(f"{topic}: " + ", ".join(f"{k} {v:,}" for k, v in want.items()))
    click.echo(str(summary))
