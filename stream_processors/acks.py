"""Faust's own aiokafka producer with Kappa's producer guarantees (``acks=all`` + idempotence).

Kappa's records (outputs, partials, changelog) go through librdkafka with
:func:`kappa.kafka.producer_config`; what Faust sends itself (a table write outside
:class:`~stream_processors.io.TableState`, an agent's ``send``) goes through aiokafka.
faust-streaming 0.15.3 asks aiokafka for idempotence only inside a transaction
(``Producer._settings_extra``), so a retried send after a leader election could be written
twice. :func:`install` makes it ask always, keeping Faust's transactional settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as driver

__all__ = ["FAUST_SETTINGS_EXTRA", "install", "settings_extra"]

FAUST_SETTINGS_EXTRA = driver.Producer._settings_extra
"""Faust's own method, as imported."""


def settings_extra(self: Any) -> Mapping[str, Any]:
    """Faust's extra producer settings, plus ``acks=all`` and idempotence in every case."""
    return {**FAUST_SETTINGS_EXTRA(self), "acks": "all", "enable_idempotence": True}


def install() -> None:
    """Put :func:`settings_extra` in place (idempotent)."""
    driver.Producer._settings_extra = settings_extra  # type: ignore[method-assign]
