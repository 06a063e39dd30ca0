"""Run one Faust worker of a pipeline version in the foreground (``python -m stream_processors worker``).

Each worker needs its own RocksDB directory: ``KAPPA_HOME/processors/<version>/worker-<n>``.
``n`` is given (``--worker``) or the lowest one whose lock is free; the lock (``flock``) is held
for the life of the process and released by the OS even on kill -9, so a restarted worker gets
its directory — and its local state — back.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import time
from pathlib import Path
from typing import IO

from kappa.errors import ConfigError
from kappa.metrics import serve
from kappa.settings import get_settings
from stream_processors.app import create_app
from stream_processors.diagnose import Worker
from stream_processors.faust_internals import check_versions

__all__ = ["GC_THRESHOLDS", "claim_dir", "run_worker"]

log = logging.getLogger(__name__)

GC_THRESHOLDS = (50_000, 20, 100)
"""CPython's cyclic GC in a worker: young collections every 50k net allocations (not 700), and a
full one after 100 middle ones at most. The worker's heap (Faust, River, the fraud learner's
pending orders) holds millions of long-lived objects and almost no cycles: at the defaults a
worker ran 13-15 full collections of 200-380 ms each (GIL held, event loop stopped) in a 2-worker
``benchmarks/freshness.py`` run at 5k orders/s, collecting 0-77 objects in most of them. The
objects of start-up (modules, the app) are also frozen out of every collection (``gc.freeze``)."""


def claim_dir(root: Path, worker: int | None, wait_s: float = 90.0) -> tuple[Path, IO[str]]:
    """Lock and return ``root/worker-<n>`` (``n`` given, or the first free one).

    A given ``n`` whose lock is held is waited for up to ``wait_s``: a worker of the run before
    may still be flushing and committing after its stop (the runner allows 60 s before SIGKILL),
    and a restart right after a stop must not fail on it."""
    candidates = [worker] if worker is not None else list(range(64))
    for n in candidates:
        path = root / f"worker-{n}"
        path.mkdir(parents=True, exist_ok=True)
        lock = open(path / ".lock", "a+")  # held for the process lifetime
        deadline, told = time.monotonic() + (wait_s if worker is not None else 0.0), False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    lock.close()
                    lock = None  # type: ignore[assignment]
                    break
                if not told:
                    lock.seek(0)
                    holder = lock.read().strip() or "?"
                    log.warning("worker directory %s is locked by pid %s (a worker still stopping?): "
                                "waiting up to %.0f s", path, holder, wait_s)
                    told = True
                time.sleep(0.5)
        if lock is None:
            continue
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        return path, lock
    raise ConfigError(f"worker directory {root}/worker-{worker} is locked by another running worker: "
                      "stop it or pass another --worker number")


def run_worker(version: str | None = None, worker: int | None = None, loglevel: str = "WARNING",
               learning: bool = True) -> None:
    """Start one worker of ``version`` and block until SIGTERM/SIGINT (clean stop: commit, close)."""
    check_versions()  # before anything starts: the patches of Faust's internals need these versions
    settings = get_settings()
    version = version or settings.version
    datadir, _lock = claim_dir(settings.home.resolve() / "processors" / version, worker)
    serve("processor")
    pipe = create_app(settings, version, datadir, learning=learning)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("worker %s of kappa-%s in %s", worker, version, datadir)
    Worker(pipe.app, loglevel=loglevel, redirect_stdouts=False).execute_from_commandline()
