"""A command uses a local component only when this KAPPA_HOME's recorded process listens on its port.

Real processes and sockets stand in for Kafka and the registry (nothing here speaks Kafka):
what is checked is identity, which needs no protocol.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kappa.errors import StackError
from kappa.settings import Settings
from kappa.stack import manager
from kappa.stack.process import free_port, listens

_LISTENER = "import socket,sys,time\ns=socket.socket()\nif sys.argv[1]!='0':\n" \
            "    s.bind(('127.0.0.1',int(sys.argv[1]))); s.listen()\nprint('ready',flush=True)\ntime.sleep(300)"


def _component(home: Path, name: str, port: int, listen: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _LISTENER, str(port if listen else 0),
                             f"-Dkappa.stack={home.resolve()}/{name}"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def _record(home: Path, ports: dict[str, int], pids: dict[str, int]) -> Settings:
    home.mkdir(parents=True, exist_ok=True)
    (home / "stack.json").write_text(json.dumps({"ports": ports, "pids": pids}))
    return Settings(home=home)


def test_own_listeners_are_used(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    home = tmp_path / "home"
    ports = {"kafka": free_port(), "controller": free_port(), "registry": free_port()}
    procs += [_component(home, "kafka", ports["kafka"], True), _component(home, "registry", ports["registry"], True)]
    assert listens(procs[0].pid, ports["kafka"]) and not listens(procs[1].pid, ports["kafka"])
    ep = manager.endpoints(_record(home, ports, {"kafka": procs[0].pid, "registry": procs[1].pid}))
    assert ep.kafka_bootstrap == f"127.0.0.1:{ports['kafka']}"
    assert ep.schema_registry_url == f"http://127.0.0.1:{ports['registry']}/apis/ccompat/v7"


def test_port_answered_by_another_process_is_refused(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """The half-failed ``up``: our Kafka runs, our registry's port is another stack's registry."""
    home = tmp_path / "home"
    ports = {"kafka": free_port(), "controller": free_port(), "registry": free_port()}
    procs.append(_component(home, "kafka", ports["kafka"], True))
    other = _component(tmp_path / "other-home", "registry", ports["registry"], True)
    procs.append(other)
    settings = _record(home, ports, {"kafka": procs[0].pid})
    with pytest.raises(StackError, match=r"stopped \(schema registry is not running\): run `kappa up`"):
        manager.endpoints(settings)
    # even the other stack's pid recorded here is refused: it is not this home's registry
    settings = _record(home, ports, {"kafka": procs[0].pid, "registry": other.pid})
    with pytest.raises(StackError, match="is stopped"):
        manager.endpoints(settings)
    # this home's registry alive, but the port held by someone else
    procs.append(_component(home, "registry", 0, False))
    settings = _record(home, ports, {"kafka": procs[0].pid, "registry": procs[-1].pid})
    with pytest.raises(StackError, match=f"127.0.0.1:{ports['registry']} is held by another process"):
        manager.endpoints(settings)
    rows = {r.name: r for r in manager.status(settings)}
    assert rows["kafka"].healthy is False or rows["kafka"].pid == procs[0].pid  # not a Kafka: unhealthy
    assert rows["registry"].healthy is False


def test_stopped_stack(tmp_path: Path) -> None:
    ports = {"kafka": free_port(), "controller": free_port(), "registry": free_port()}
    with pytest.raises(StackError, match=r"is stopped \(Kafka is not running\): run `kappa up`"):
        manager.endpoints(_record(tmp_path / "home", ports, {}))


def test_listens_sees_ipv4_listeners() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listens(os.getpid(), port)
    assert not listens(os.getpid(), port)
