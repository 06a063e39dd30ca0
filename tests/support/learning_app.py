"""A Faust app holding only the learning agents: for the tests of the learning agents alone.

The real pipeline registers the same agents in its ``kappa-<version>`` app via
:func:`stream_processors.learning.register`; this module gives the same thing standalone::

    KAPPA_VERSION=v1 python -m tests.support.learning_app worker -l info
"""

from __future__ import annotations

import sys
from typing import Any

import faust

from kappa.kafka import faust_broker_credentials
from kappa.settings import Settings
from kappa.stack.manager import endpoints
from stream_processors.learning import register

__all__ = ["main", "make_app"]


def make_app(settings: Settings, version: str) -> Any:
    """Faust app ``kappa-<version>`` (memory store, no web server) with the learning agents."""
    datadir = settings.home / "faust" / version
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"kappa-{version}",
        broker=f"kafka://{endpoints(settings).kafka_bootstrap}",
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        web_enabled=False,
        producer_max_request_size=64 * 1024 * 1024,
        consumer_max_fetch_size=64 * 1024 * 1024,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
    )
    register(app, settings, version)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.learning_app worker``: run the learning agents."""
    settings = Settings()
    app = make_app(settings, settings.version)
    args = list(argv if argv is not None else sys.argv[1:])
    # Faust's CLI turns the web server on (0.0.0.0:6066) unless told not to: nothing here needs it
    if "--without-web" not in args:
        args.append("--without-web")
    sys.argv = [sys.argv[0], *args]
    app.main()


if __name__ == "__main__":
    main()
