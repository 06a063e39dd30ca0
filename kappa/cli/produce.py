"""``kappa produce``: publish from the pipeline's generator, a JSONL/CSV file or a River dataset."""

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


def _options(values: tuple[str, ...]) -> dict[str, Any]:
    """``-o KEY=VALUE`` pairs: values as JSON when they parse (numbers, true/false), else strings.

    >>> _options(("drift_at=5000", "rate=0.5", "name=x y"))
    {'drift_at': 5000, 'rate': 0.5, 'name': 'x y'}
    """
    out: dict[str, Any] = {}
    for item in values:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise click.UsageError(f"--option {item!r}: write KEY=VALUE, e.g. --option drift_at=5000")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except ValueError:
            out[key.strip().replace("-", "_")] = raw
    return out


@click.command()
@click.option("--generator", metavar="NAME",
              help="The selected pipeline's generator, by the pipeline's name ([pipeline] generator; "
                   "ecommerce for the default pipeline).")
@click.option("--events", type=int, default=10_000, show_default=True,
              help="Generator: events of its main input (duplicates and invalid ones included).")
@click.option("--seed", type=int, default=42, show_default=True, help="Generator seed.")
@click.option("--start", default=None,
              help="Generator: event-time start, ISO-8601 or epoch ms (default: end just before now).")
@click.option("--dup-rate", type=float, default=None, help="Generator: share of re-sent events (its default).")
@click.option("--invalid-rate", type=float, default=None, help="Generator: share of invalid events (its default).")
@click.option("--late-rate", type=float, default=None, help="Generator: share of too-late events (its default).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="Generator: one of its own keyword options (repeatable), e.g. -o drift_at=5000.")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False),
              help="JSONL or CSV file to publish.")
@click.option("--topic", help="File: topic to publish to (an input of the selected pipeline, or samples.<name>).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default=None,
              help="File: force the format (default: from the extension).")
@click.option("--schema", default=None, help="File: Avro schema to encode rows with (default: the one of --topic).")
@click.option("--validate", is_flag=True, help="File: also reject rows that break the topic's data-quality rules "
              "(the input's declared rules), with the reason, to the topic's DLQ.")
@click.option("--min-time", default=None,
              help="File: earliest timestamp a row may hold, ISO-8601 or epoch ms (default 2000-01-01).")
@click.option("--river-dataset", default=None, help="River bundled dataset, e.g. Phishing.")
@click.option("--limit", type=int, default=None, help="River dataset: publish at most this many samples.")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--topic-prefix", default=None, help="Prefix of the input topics (default KAPPA_TOPIC_PREFIX).")
def produce(generator: str | None, events: int, seed: int, start: str | None, dup_rate: float | None,
            invalid_rate: float | None, late_rate: float | None, options: tuple[str, ...],
            path: str | None, topic: str | None, fmt: str | None, schema: str | None,
            validate: bool, min_time: str | None, river_dataset: str | None, limit: int | None, rate: float | None,
            topic_prefix: str | None) -> None:
    """Publish events: --generator NAME (the pipeline's), --file PATH --topic T, or --river-dataset NAME."""
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
    knobs = {k: v for k, v in (("start_ms", _start_ms(start)), ("dup_rate", dup_rate),
                               ("invalid_rate", invalid_rate), ("late_rate", late_rate)) if v is not None}
    knobs.update(_options(options))
    ep = endpoints(settings)
    from kappa import metrics

    metrics.serve("producer")
    check_connection(settings, ep.kafka_bootstrap)  # wrong credentials fail here, fast and clearly

    if generator:
        _pipeline_generator(settings, ep.kafka_bootstrap, generator, events, seed, rate, knobs)
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
                        rate: float | None, options: dict[str, Any]) -> None:
    """``--generator NAME`` of the selected pipeline (``[pipeline] generator``)."""
    from kappa.pipeline import current
    from producers.base import Publisher
    from producers.generators import expectations, generator_of, publish_events, run_generator

    pipe = current()
    generate = generator_of(pipe)
    if name != pipe.name or generate is None:
        known = [pipe.name] if generate is not None else []
        raise click.UsageError(f"no generator {name!r} for pipeline {pipe.name!r} ({pipe.path}): "
                               + (" or ".join(f"use --generator {k}" for k in known) if known else
                                  "it declares none ([pipeline] generator = \"module:function\")"))
    run = run_generator(generate, events, seed, **options)
    ensure_topics(settings, bootstrap, input_specs(settings.partitions, settings.topic_prefix))
    with Publisher(settings, bootstrap, rate=rate, total=len(run.events)) as pub:
        publish_events(pub, run.events)
        summary = pub.flush()
    for line in run.summary or [f"{topic}: " + ", ".join(f"{k} {v:,}" for k, v in want.items())
                                for topic, want in expectations(run.events).items()]:
        click.echo(line)
    if run.manifest:
        stamp = f"{pipe.name}-seed{seed}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}"
        out = settings.home / "manifests" / f"{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"run": stamp, "topic_prefix": settings.topic_prefix, **run.manifest}, indent=1))
        click.echo(f"manifest: {out}")
    click.echo(str(summary))
