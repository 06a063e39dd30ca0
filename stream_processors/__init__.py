"""Faust stream processors: validate -> DLQ, dedupe, enrich, event-time windows (and learning).

Run a worker with ``python -m stream_processors worker --version V [--worker N]``; build the app
in-process with :func:`stream_processors.app.create_app`. Nothing is imported here so the pure
modules (windows, users, samples) load without Faust.
"""

__all__: list[str] = []
