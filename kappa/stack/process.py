"""Background processes that survive the CLI call that started them, and are found again by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kappa.errors import PortInUse

__all__ = ["alive", "free_port", "is_ours", "port_free", "spawn", "stop"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def require_free(port: int, what: str) -> None:
    """Raise PortInUse naming the component and the port."""
    if not port_free(port):
        raise PortInUse(
            f"port 127.0.0.1:{port} for {what} is in use by another process: stop it, "
            f"or remove the port from the stack file so `kappa up` picks a free one"
        )


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start ``argv`` detached (own session), stdout+stderr appended to ``log``; return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    return proc.pid


def is_ours(pid: int | None, marker: str) -> bool:
    """True when ``pid`` is alive and its command line carries ``marker`` (pids get reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return marker in cmdline


def alive(pid: int | None) -> bool:
    """True when ``pid`` exists and is not a zombie (whatever it runs)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stop(pid: int, marker: str, timeout: float = 30.0) -> None:
    """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL it."""
    if not is_ours(pid, marker):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_ours(pid, marker):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while is_ours(pid, marker):
        time.sleep(0.1)
