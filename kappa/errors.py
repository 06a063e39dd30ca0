"""The one exception tree of Kappa: every error a user can act on derives from KappaError."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FetchError",
    "KafkaAuthFailed",
    "KafkaUnavailable",
    "KappaError",
    "PipelineRunning",
    "PortInUse",
    "RegistryUnavailable",
    "SchemaIncompatible",
    "SinkError",
    "StackError",
    "ToolMissing",
    "UnsupportedDependency",
    "VersionLogMismatch",
]


class KappaError(Exception):
    """Root of every error Kappa raises on purpose; the message says what to do."""


class ConfigError(KappaError):
    """A setting is missing or malformed."""


class UnsupportedDependency(ConfigError):
    """An installed library is not the version whose internals Kappa patches (faust-streaming, mode, aiokafka)."""


class VersionLogMismatch(ConfigError):
    """A pipeline version's state on the broker was derived from another log than this run's."""


class StackError(KappaError):
    """The local stack (Kafka, registry) could not be started, stopped or reached."""


class ToolMissing(StackError):
    """A required external tool (java, mvn) is not installed."""


class FetchError(StackError):
    """Maven could not fetch the jars of a local component."""


class PortInUse(StackError):
    """A port the local stack wants to bind is taken by another process."""


class PipelineRunning(KappaError):
    """Another ``kappa run`` holds this KAPPA_HOME's run lock."""


class KafkaUnavailable(KappaError):
    """The Kafka bootstrap address does not answer."""


class KafkaAuthFailed(KafkaUnavailable):
    """Kafka answers but refuses the configured SASL credentials or TLS handshake."""


class RegistryUnavailable(KappaError):
    """The schema registry does not answer."""


class SchemaIncompatible(KappaError):
    """A schema change is refused by the registry's compatibility rules."""


class SinkError(KappaError):
    """A sink could not write to or read from ClickHouse."""
