"""Kafka client configuration (security included) and topic administration, in one place.

Both client stacks get their settings from here: confluent-kafka (producers, sinks) via
:func:`client_config` and aiokafka/Faust via :func:`faust_broker_credentials`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from kappa.errors import ConfigError, KafkaAuthFailed, KafkaUnavailable
from kappa.settings import Settings

__all__ = ["PRODUCER_GUARANTEES", "ClientErrorLog", "Replication", "TopicSpec", "admin", "check_connection",
           "client_config", "ensure_topics", "faust_broker_credentials", "producer_config", "replication",
           "replication_for"]

_quiet = logging.getLogger("kappa.kafka.client")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def client_config(settings: Settings, bootstrap: str, **extra: Any) -> dict[str, Any]:
    """librdkafka config for ``bootstrap`` with the security settings from env.

    The returned dict holds the SASL password when one is set: never log it.
    """
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _quiet}
    proto = settings.kafka_security_protocol.upper()
    if proto != "PLAINTEXT":
        conf["security.protocol"] = proto
    if proto.startswith("SASL"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username or ""
        conf["sasl.password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
        )
    if proto in ("SSL", "SASL_SSL") and settings.kafka_ssl_cafile:
        conf["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    conf.update(extra)
    return conf


PRODUCER_GUARANTEES: dict[str, Any] = {"acks": "all", "enable.idempotence": True}
"""What every Kappa producer asks of Kafka: a write counts once every in-sync replica has it
(``acks=all``, so with ``min.insync.replicas=2`` an acknowledged record survives the loss of a
broker), and a retried send is written once (idempotence: no duplicate, no reordering)."""


def producer_config(settings: Settings, bootstrap: str, **extra: Any) -> dict[str, Any]:
    """:func:`client_config` of a producer, with :data:`PRODUCER_GUARANTEES` that ``extra`` may
    not weaken.

    >>> conf = producer_config(Settings(), "127.0.0.1:9092", **{"linger.ms": 5})
    >>> conf["acks"], conf["enable.idempotence"], conf["linger.ms"]
    ('all', True, 5)
    >>> producer_config(Settings(), "127.0.0.1:9092", acks=1)
    Traceback (most recent call last):
    ...
    kappa.errors.ConfigError: a Kappa producer needs acks=all, got acks=1
    """
    for key, want in PRODUCER_GUARANTEES.items():
        if key in extra and extra[key] != want and str(extra[key]) not in ("-1", "true", "True"):
            raise ConfigError(f"a Kappa producer needs {key}={str(want).lower()}, got {key}={extra[key]}")
    return client_config(settings, bootstrap, **{**extra, **PRODUCER_GUARANTEES})


class ClientErrorLog:
    """A librdkafka ``error_cb`` that logs what a client is waiting for, with the broker's address.

    librdkafka rides through a lost broker, a leader election or ``NOT_LEADER`` by itself
    (reconnects, metadata refresh, retries within ``message.timeout.ms``), reporting each
    attempt; this logs one WARNING per error kind per ``every`` seconds (the text names the
    broker, e.g. ``127.0.0.1:9192/2: Connect to ... failed``) so a wait is visible, not a flood.

    >>> import logging; seen = []
    >>> cb = ClientErrorLog(logging.getLogger("t"), "sink", every=60.0, clock=lambda: 0.0)
    >>> cb.line(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9192/2: Connect failed"))
    'sink waits for Kafka: 127.0.0.1:9192/2: Connect failed (_TRANSPORT; the client retries)'
    """

    def __init__(self, logger: logging.Logger, what: str, every: float = 10.0,
                 clock: Any = time.monotonic) -> None:
        self.logger, self.what, self.every, self.clock = logger, what, every, clock
        self._last: dict[int, float] = {}

    def line(self, err: KafkaError) -> str:
        return f"{self.what} waits for Kafka: {err.str()} ({err.name()}; the client retries)"

    def __call__(self, err: KafkaError) -> None:
        now = self.clock()
        if now - self._last.get(err.code(), -self.every) >= self.every:
            self._last[err.code()] = now
            self.logger.warning(self.line(err))


def faust_broker_credentials(settings: Settings) -> Any:
    """Faust ``broker_credentials`` matching :func:`client_config` (None for PLAINTEXT)."""
    import faust

    proto = settings.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    ctx = None
    if proto in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if proto == "SSL":
        return faust.SSLCredentials(ctx)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    # faust.SASLCredentials is faust.auth.SASLCredentials, imported lazily (``faust.auth`` is not
    # an attribute of a fresh ``import faust``); it takes PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.
    return faust.SASLCredentials(username=settings.kafka_sasl_username or "", password=password,
                                 ssl_context=ctx, mechanism=settings.kafka_sasl_mechanism.upper())


def _auth_failure(settings: Settings, bootstrap: str, err: KafkaError) -> KafkaAuthFailed:
    proto = settings.kafka_security_protocol.upper()
    if err.code() == KafkaError._AUTHENTICATION:
        who = (f"SASL {settings.kafka_sasl_mechanism} as user {settings.kafka_sasl_username!r}"
               if proto.startswith("SASL") else proto)
        return KafkaAuthFailed(
            f"Kafka at {bootstrap}: authentication failed ({who}, {proto}); check "
            "KAPPA_KAFKA_SECURITY_PROTOCOL, KAPPA_KAFKA_SASL_MECHANISM, KAPPA_KAFKA_SASL_USERNAME and "
            f"KAPPA_KAFKA_SASL_PASSWORD -- broker said: {err.str().split(': ', 1)[-1]}")
    return KafkaAuthFailed(
        f"Kafka at {bootstrap}: TLS handshake failed ({proto}, CA file "
        f"{settings.kafka_ssl_cafile or 'system default'}); check KAPPA_KAFKA_SSL_CAFILE and that the "
        f"address is a TLS listener -- {err.str().split(': ', 1)[-1]}")


def check_connection(settings: Settings, bootstrap: str, timeout: float = 10.0) -> None:
    """Return once ``bootstrap`` answers a metadata request with the configured security.

    Raises KafkaAuthFailed as soon as the broker refuses the credentials (or the TLS
    handshake) instead of letting the client retry until some later timeout, and
    KafkaUnavailable when nothing answers within ``timeout`` seconds. Messages name the
    address and the user, never the password.
    """
    _metadata(settings, bootstrap, timeout)


def _metadata(settings: Settings, bootstrap: str, timeout: float) -> tuple[AdminClient, Any]:
    """An AdminClient for ``bootstrap`` and its first metadata (see :func:`check_connection`)."""
    errors: list[KafkaError] = []
    client = AdminClient(client_config(settings, bootstrap, error_cb=errors.append))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            return client, client.list_topics(timeout=max(min(0.5, deadline - time.monotonic()), 0.05))
        except KafkaException as exc:
            last = exc
        client.poll(0)
        for err in errors:
            if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
                raise _auth_failure(settings, bootstrap, err) from KafkaException(err)
        if time.monotonic() >= deadline:
            raise KafkaUnavailable(
                f"Kafka at {bootstrap} does not answer within {timeout:.0f}s "
                f"({settings.kafka_security_protocol}): {last}") from last


@dataclass(frozen=True)
class TopicSpec:
    """A topic Kappa creates: name, partitions and topic-level config."""

    name: str
    partitions: int = 1
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Replication:
    """How Kappa replicates the topics it creates on a cluster of ``brokers`` brokers."""

    factor: int
    min_insync: int
    brokers: int

    def describe(self) -> str:
        """One line for ``kappa up`` / ``kappa topics create``."""
        what = (f"replication factor {self.factor}, min.insync.replicas={self.min_insync} "
                f"({self.brokers} broker{'s' if self.brokers != 1 else ''})")
        if self.factor >= 3:
            return what + ": an acknowledged write survives the loss of one broker"
        if self.factor == 2:
            return what + (": the data survives one broker loss, but a write acknowledged while one "
                           "broker was out has a single copy; use 3 brokers for min.insync.replicas=2")
        return what + ": no copy survives a broker loss; use 3 brokers (kappa up --brokers 3)"


def replication_for(brokers: int) -> Replication:
    """Replication of Kappa's topics on ``brokers`` live brokers: 3 copies, 2 in sync, when it can.

    >>> replication_for(5), replication_for(2).factor, replication_for(1).min_insync
    (Replication(factor=3, min_insync=2, brokers=5), 2, 1)
    """
    factor = max(1, min(3, brokers))
    return Replication(factor, 2 if factor >= 3 else 1, brokers)


def replication(settings: Settings, bootstrap: str, timeout: float = 30.0) -> Replication:
    """:func:`replication_for` the brokers ``bootstrap``'s cluster lists now."""
    _, meta = _metadata(settings, bootstrap, timeout)
    return replication_for(len(meta.brokers))


def admin(settings: Settings, bootstrap: str) -> AdminClient:
    """An AdminClient for ``bootstrap``."""
    return AdminClient(client_config(settings, bootstrap))


def ensure_topics(settings: Settings, bootstrap: str, specs: Iterable[TopicSpec],
                  timeout: float = 30.0) -> list[str]:
    """Create the missing topics (existing ones are left alone); return the names created.

    Each gets :func:`replication_for` the cluster's brokers (factor 3 and
    ``min.insync.replicas=2`` from 3 brokers on) unless its spec sets ``min.insync.replicas``.
    """
    client, meta = _metadata(settings, bootstrap, timeout)  # wrong credentials fail fast here
    existing = set(meta.topics)
    rep = replication_for(len(meta.brokers))
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=rep.factor,
                 config={"min.insync.replicas": str(rep.min_insync), **s.config})
        for s in specs
        if s.name not in existing
    ]
    if not new:
        return []
    created = []
    for name, fut in client.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: a concurrent creator won
                raise KafkaUnavailable(f"creating topic {name} on {bootstrap} failed: {exc}") from exc
    return created
