"""The publishing contract every producer shares: encode with the registry, produce, count.

:class:`Publisher` wraps one confluent-kafka ``Producer`` configured for the contract:
idempotent (``enable.idempotence``, ``acks=all``), keys partitioned with ``murmur2_random``
(the same partitions as Faust/aiokafka/Java, so ``orders`` and ``users`` are
co-partitioned), batched (``linger.ms``, large batches, lz4). Delivery reports are
requested for errors only: after a successful ``flush`` every message without an error
report was delivered, so ``delivered = sent - failed`` is exact while Python does no
per-message callback work.

Use it from your own service::

    from producers import Publisher
    with Publisher(get_settings()) as pub:
        pub.publish("orders", order_dict, key=str(order_dict["user_id"]))
    print(pub.summary())
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from kappa import kafka as kappa_kafka
from kappa import metrics
from kappa.errors import ConfigError, KappaError
from kappa.kafka import admin
from kappa.settings import Settings
from kappa.stack.manager import endpoints
from kappa.topics import dlq
from schemas.catalog import schema_for_topic
from schemas.rules import reason_code
from schemas.serde import Encoder, Registry, subject
from stream_processors.stream import MAX_PAYLOAD

__all__ = ["PRODUCER_CONFIG", "RECORD_OVERHEAD", "MessageTooLarge", "PublishFailed", "PublishSummary",
           "Publisher", "now_ms", "topic_max_message_bytes"]

log = logging.getLogger(__name__)

PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "compression.type": "lz4",
    "delivery.report.only.error": True,
}
"""librdkafka settings of every Kappa producer (see the module docstring for why)."""


RECORD_OVERHEAD = 128
"""Bytes a one-record batch adds to key + value on the wire (v2 batch header 61, record <= ~30)."""

_MAX_REASON = 1000
"""Reasons are cut to this many characters (a reason may quote a value of any size)."""


class PublishFailed(KappaError):
    """Kafka did not acknowledge some messages before the flush timeout."""


class MessageTooLarge(KappaError):
    """One message is larger than its topic or the producer accepts (``message.max.bytes``)."""


def topic_max_message_bytes(settings: Settings, bootstrap: str, topic: str) -> int | None:
    """The effective ``max.message.bytes`` of ``topic`` (the broker's ``message.max.bytes``
    unless the topic overrides it), or None when it cannot be read (missing topic, no
    DescribeConfigs permission)."""
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    client = admin(settings, bootstrap)  # held: the future dies with its client
    try:
        futures = client.describe_configs([resource], request_timeout=10)
        entry = futures[resource].result(timeout=15).get("max.message.bytes")
        return int(entry.value) if entry is not None and entry.value else None
    except (KafkaException, ValueError, TimeoutError):
        return None


def now_ms() -> int:
    """Wall clock in epoch milliseconds (the pipeline's timestamp unit)."""
    return time.time_ns() // 1_000_000


@dataclass
class PublishSummary:
    """What one publisher run did; ``sent = delivered + failed`` once flushed."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    rejected: int = 0
    seconds: float = 0.0
    by_topic: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"sent {self.sent}  delivered {self.delivered}  failed {self.failed}  "
                f"rejected {self.rejected}  in {self.seconds:.2f}s  ({self.events_per_s:,.0f} events/s)")


class Publisher:
    """Encodes records with the schema of their topic and produces them, counting outcomes.

    ``rate`` (events/s, None = as fast as possible) paces :meth:`publish` against a fixed
    schedule (event ``i`` not before ``start + i / rate``), so the average rate is exact.
    ``total`` enables a tqdm progress bar (on terminals) for runs of 20,000+ events.
    """

    def __init__(self, settings: Settings, bootstrap: str | None = None,
                 registry: Registry | None = None, *, rate: float | None = None,
                 total: int | None = None, **producer_config: Any) -> None:
        if bootstrap is None or registry is None:
            ep = endpoints(settings)  # env first, else the `kappa up` stack; StackError if none
            bootstrap = bootstrap or ep.kafka_bootstrap
            registry = registry or Registry(ep.schema_registry_url)
        if rate is not None and rate <= 0:
            raise ConfigError(f"--rate must be > 0 events/s, got {rate}")
        self.settings = settings
        self.bootstrap = bootstrap
        self.registry = registry
        self.rate = rate
        config = {**PRODUCER_CONFIG, **producer_config}
        self._producer_max = int(config.get("message.max.bytes", 1_000_000))  # librdkafka default
        self._producer = Producer(kappa_kafka.producer_config(
            settings, bootstrap, **{**config, "error_cb": self._on_error,
                                    "on_delivery": self._on_delivery}))
        self._max_bytes: dict[str, int] = {}
        self._encoders: dict[str, Encoder] = {}
        self._sent: Tally[str] = Tally()
        self._failed: Tally[str] = Tally()
        self._rejected: Tally[tuple[str, str]] = Tally()
        self._fatal: str | None = None
        self._waits = kappa_kafka.ClientErrorLog(log, "producer")
        self._started = time.perf_counter()
        self._since_poll = 0
        self._paced = 0
        self._pace_start = 0.0
        self._progress: Any = None
        if total is not None and total >= 20_000:
            from tqdm import tqdm

            self._progress = tqdm(total=total, unit="ev", disable=None, mininterval=0.5)
        self._metric_ok: dict[str, int] = {}
        self._metric_bad: dict[str, int] = {}
        self._metric_rej: dict[tuple[str, str], int] = {}

    # -- callbacks (librdkafka thread-safe, run inside poll/flush) --------------------------

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failed[msg.topic()] += 1
            if self._fatal is None:
                self._fatal = f"{msg.topic()}: {err.str()}"

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
        else:
            self._waits(err)

    # -- publishing -------------------------------------------------------------------------

    def encoder(self, topic: str, schema: str | None = None) -> Encoder:
        """The Encoder of ``topic``: subject ``<topic>-value``, schema ``schema`` or the one
        :mod:`schemas.catalog` declares for the topic (fixed at first use)."""
        enc = self._encoders.get(topic)
        if enc is None:
            name = schema or schema_for_topic(topic, self.settings.topic_prefix)
            enc = self._encoders[topic] = Encoder(self.registry, subject(topic), name)
        return enc

    def max_message_bytes(self, topic: str) -> int:
        """Largest ``len(key) + len(value)`` (before compression) one message to ``topic`` may have.

        The smaller of the producer's ``message.max.bytes`` and the topic's effective
        ``max.message.bytes`` (the broker's ``message.max.bytes`` unless the topic overrides it),
        less :data:`RECORD_OVERHEAD`. Read once per topic; when the topic's config cannot be read
        (missing topic, no DescribeConfigs permission) the producer's limit alone applies.
        The size is checked uncompressed, as librdkafka itself does, so a verdict does not
        depend on how well a batch compresses.
        """
        limit = self._max_bytes.get(topic)
        if limit is None:
            limit = min(self._producer_max, self._topic_max(topic) or self._producer_max)
            self._max_bytes[topic] = limit = limit - RECORD_OVERHEAD
        return limit

    def _topic_max(self, topic: str) -> int | None:
        return topic_max_message_bytes(self.settings, self.bootstrap, topic)

    def _pace(self) -> None:
        if self._paced == 0:
            self._pace_start = time.perf_counter()
        self._paced += 1
        due = self._pace_start + (self._paced - 1) / self.rate  # type: ignore[operator]
        ahead = due - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)

    def produce_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Produce already-encoded ``value`` (the hot path: retries on a full local queue).

        Raises MessageTooLarge (nothing sent, nothing counted) when librdkafka refuses the size.
        """
        if self.rate is not None:
            self._pace()
        while True:
            try:
                self._producer.produce(topic, value, key)
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                raise MessageTooLarge(
                    f"{len(value) + len(key or b'')} bytes, more than the producer's "
                    f"message.max.bytes ({self._producer_max})") from exc
        self._sent[topic] += 1
        self._since_poll += 1
        chunk = 5000 if self.rate is None else max(1, min(5000, int(self.rate / 4)))
        if self._since_poll >= chunk:
            self._since_poll = 0
            self._after_chunk(chunk)

    def publish(self, topic: str, record: dict[str, Any], key: str | None = None) -> bytes:
        """Encode ``record`` for ``topic`` and produce it with UTF-8 ``key``; return the bytes.

        Raises ValueError/TypeError (from the encoder) when the record does not fit the schema.
        """
        value = self.encoder(topic).encode(record)
        self.produce_raw(topic, value, None if key is None else key.encode())
        return value

    def publish_many(self, topic: str, records: Iterable[dict[str, Any]],
                     key_field: str | None = None) -> int:
        """Encode and produce many records (key = ``str(record[key_field])``); return the count.

        The batch hot path: one tight loop with everything bound locally; raises
        ValueError/TypeError on the first record that does not fit (the ones before it are
        sent and counted).
        """
        encode = self.encoder(topic).encode_one
        produce, poll = self._producer.produce, self._producer.poll
        paced = self.rate is not None
        n = 0
        try:
            for record in records:
                value = encode(record)
                key = None if key_field is None else str(record[key_field]).encode()
                if paced:
                    self._pace()
                try:
                    produce(topic, value, key)
                except BufferError:
                    while True:
                        poll(0.05)
                        try:
                            produce(topic, value, key)
                            break
                        except BufferError:
                            continue
                n += 1
                if not n % 5000:
                    self._sent[topic] += 5000
                    n -= 5000
                    self._after_chunk(5000)
        finally:
            self._sent[topic] += n
        return n

    def _after_chunk(self, n: int) -> None:
        self._producer.poll(0)
        self._record_metrics(self.summary())  # live counters for long or paced runs
        if self._progress is not None:
            self._progress.update(n)
        if self._fatal is not None:
            raise PublishFailed(f"Kafka refused messages ({self._fatal}); check the broker "
                                f"at {self.bootstrap} and the topic")

    def publish_dlq(self, topic: str, source: str, reason: str, raw: bytes) -> None:
        """Send a rejected input to ``dlq(topic)`` as a RejectedEvent (stage ``producer``).

        Counted as *rejected*, not as sent; ``source`` is ``path:line`` for file rows. A payload
        larger than :data:`~stream_processors.stream.MAX_PAYLOAD` (or than the DLQ topic takes)
        is cut, and the reason says so, as the processors do; a long reason is cut too.
        """
        if len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON] + "..."
        room = self.max_message_bytes(dlq(topic)) - 2 * (len(source) + len(topic)) - 4 * len(reason) - 64
        cut = max(min(MAX_PAYLOAD, room), 0)
        if len(raw) > cut:
            reason = f"{reason} (payload of {len(raw)} bytes cut to {cut})"
            raw = raw[:cut]
        envelope = {"source": source, "topic": topic, "reason": reason, "payload": raw,
                    "rejected_at": now_ms(), "stage": "producer"}
        value = self.encoder(dlq(topic)).encode(envelope)
        while True:
            try:
                self._producer.produce(dlq(topic), value, source.encode())
                break
            except BufferError:
                self._producer.poll(0.05)
        self._rejected[(topic, reason_code(reason))] += 1

    # -- completion -------------------------------------------------------------------------

    def flush(self, timeout: float = 60.0) -> PublishSummary:
        """Wait for every acknowledgement; raise PublishFailed when some never came."""
        remaining = self._producer.flush(timeout)
        if self._progress is not None:
            self._progress.update(max(sum(self._sent.values()) - self._progress.n, 0))
        summary = self.summary(undelivered=remaining)
        self._record_metrics(summary)
        if remaining or summary.failed:
            raise PublishFailed(
                f"{summary.failed} of {summary.sent + summary.rejected} messages were not delivered"
                f" ({self._fatal or f'{remaining} still queued after {timeout:.0f}s'}); "
                f"is Kafka at {self.bootstrap} up (`kappa status`)?"
            )
        return summary

    def summary(self, undelivered: int = 0) -> PublishSummary:
        """Counts so far (``delivered`` assumes a completed flush)."""
        sent = sum(self._sent.values())
        failed = sum(self._failed.values()) + undelivered
        reasons: Tally[str] = Tally()
        for (_, code), n in self._rejected.items():
            reasons[code] += n
        return PublishSummary(
            sent=sent, delivered=max(sent - failed, 0), failed=failed,
            rejected=sum(self._rejected.values()), seconds=time.perf_counter() - self._started,
            by_topic=dict(self._sent), rejected_by_reason=dict(reasons),
        )

    def _record_metrics(self, summary: PublishSummary) -> None:
        """Add what happened since the last flush to the Prometheus counters (in bulk)."""
        for topic, n in self._sent.items():
            bad = self._failed.get(topic, 0)
            new_ok = (n - bad) - self._metric_ok.get(topic, 0)
            new_bad = bad - self._metric_bad.get(topic, 0)
            if new_ok > 0:
                metrics.PRODUCED.labels(topic, "delivered").inc(new_ok)
            if new_bad > 0:
                metrics.PRODUCED.labels(topic, "failed").inc(new_bad)
            self._metric_ok[topic], self._metric_bad[topic] = n - bad, bad
        for (topic, code), n in self._rejected.items():
            new = n - self._metric_rej.get((topic, code), 0)
            if new > 0:
                metrics.PRODUCED.labels(topic, "rejected").inc(new)
                metrics.REJECTED.labels("producer", topic, code).inc(new)
            self._metric_rej[(topic, code)] = n

    def close(self) -> None:
        """Flush (best effort) and close the progress bar."""
        try:
            self._producer.flush(30)
        except KafkaException:
            pass
        if self._progress is not None:
            self._progress.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
