"""The run lock: one ``kappa run`` per ``KAPPA_HOME``, and what it runs (for ``kappa status``).

The runner holds ``$KAPPA_HOME/run.lock`` with ``fcntl.flock`` for as long as it lives; the
kernel drops the lock when the process ends, however it ends, so a stale file never blocks
a new run. The file's content names the runner's pid, its version and its children's pids.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from kappa.errors import PipelineRunning

__all__ = ["RunInfo", "RunLock", "running"]

LOCK_NAME = "run.lock"


@dataclass(frozen=True)
class RunInfo:
    """What the running ``kappa run`` wrote into its lock file."""

    pid: int
    version: str = "?"
    children: dict[str, int] = field(default_factory=dict)
    """Child name (``sink``, ``worker-0`` ...) -> pid."""
    started_at: float = 0.0


def _read(fd: int) -> RunInfo:
    try:
        doc = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        return RunInfo(int(doc["pid"]), str(doc.get("version", "?")),
                       {str(k): int(v) for k, v in dict(doc.get("children", {})).items()},
                       float(doc.get("started_at", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return RunInfo(0)  # being written right now


class RunLock:
    """The lock of one runner; :meth:`acquire` refuses when another process holds it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / LOCK_NAME
        self._fd: int | None = None
        self._info = RunInfo(os.getpid())

    def acquire(self, version: str) -> None:
        """Take the lock or raise PipelineRunning naming the holder's pid."""
        if self._fd is not None:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = f"pid {holder.pid}, version {holder.version}" if holder.pid else "pid unknown"
            raise PipelineRunning(
                f"another `kappa run` ({who}) is running on KAPPA_HOME {self.home}: stop it first "
                f"(Ctrl-C{f' or kill {holder.pid}' if holder.pid else ''}) or use another KAPPA_HOME"
            ) from None
        self._fd = fd
        self._info = RunInfo(os.getpid(), version, {}, time.time())
        self._write()

    def child(self, name: str, pid: int) -> None:
        """Record (or replace, after a restart) the pid of child ``name``."""
        if self._fd is None:
            return
        self._info.children[name] = pid
        self._write()

    def _write(self) -> None:
        assert self._fd is not None
        data = json.dumps({"pid": self._info.pid, "version": self._info.version,
                           "children": self._info.children, "started_at": self._info.started_at}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays, empty."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock


def running(home: Path) -> RunInfo | None:
    """The ``kappa run`` holding ``home``'s lock, or None when no runner holds it."""
    try:
        fd = os.open(home / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd)
    finally:
        os.close(fd)
    return None
