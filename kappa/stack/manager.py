"""``kappa up`` / ``down`` / ``status``: start, stop and check the local stack.

What was started is recorded in ``$KAPPA_HOME/stack.json`` (ports and pids), so any later
``kappa`` command, in any shell, finds the same endpoints. Ports are chosen once (the
conventional ones when free, otherwise free ones) and kept, so data and clients survive
``down``/``up``. Services given by ``KAPPA_KAFKA_BOOTSTRAP`` / ``KAPPA_SCHEMA_REGISTRY_URL``
are used as they are and never started.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from confluent_kafka.admin import AdminClient

from kappa.errors import KafkaUnavailable, PortInUse, RegistryUnavailable, StackError
from kappa.kafka import check_connection
from kappa.settings import Settings
from kappa.stack import fetch
from kappa.stack.process import alive, is_ours, listens, port_free, require_free, rss_bytes, spawn, stop

__all__ = ["ComponentStatus", "Endpoints", "down", "endpoints", "status", "up"]

_quiet = logging.getLogger("kappa.stack.health")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_PREFERRED = {"kafka": 9092, "controller": 9093, "registry": 8081}
_WHAT = {"kafka": "Kafka", "registry": "schema registry"}
_ATTEMPTS = 3
"""Starts of one component per ``up`` when another process takes its port meanwhile."""


def _silent(_line: str) -> None:
    return None


@dataclass(frozen=True)
class Endpoints:
    """Where the pipeline's services answer."""

    kafka_bootstrap: str
    schema_registry_url: str


@dataclass(frozen=True)
class ComponentStatus:
    """One line of ``kappa status``."""

    name: str
    address: str
    healthy: bool
    managed: bool
    pid: int | None = None
    rss_bytes: int = 0
    detail: str = ""
    kind: str = "stack"
    """``stack`` (counts for health), ``pipeline`` (a running ``kappa run``) or ``metrics``."""


def _load(settings: Settings) -> dict[str, Any]:
    try:
        return dict(json.loads(settings.stack_file.read_text()))
    except (OSError, ValueError):
        return {}


def _save(settings: Settings, state: dict[str, Any]) -> None:
    settings.stack_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = settings.stack_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(settings.stack_file)


def _free_from(port: int, taken: set[int]) -> int:
    while not port_free(port) or port in taken:
        port += 100 if port < 60000 else -50000
    return port


def _pick_ports(state: dict[str, Any]) -> dict[str, int]:
    ports: dict[str, int] = dict(state.get("ports", {}))
    taken = set(ports.values())
    for name, preferred in _PREFERRED.items():
        if name in ports:
            continue
        ports[name] = _free_from(preferred, taken)
        taken.add(ports[name])
    return ports


def _owned(settings: Settings, state: dict[str, Any], name: str) -> int:
    """The port of this stack's ``name``, after checking that this stack's process listens there.

    A port alone proves nothing: after a half-failed ``up`` another ``KAPPA_HOME``'s stack may
    answer on it, and a command would silently use that stack's data.
    """
    port = int(state["ports"][name])
    pid = state.get("pids", {}).get(name)
    what = _WHAT[name]
    if not is_ours(pid, _marker(settings, name)):
        raise StackError(f"the local stack in {settings.home} is stopped ({what} is not running): "
                         "run `kappa up`")
    if not listens(pid, port):
        if port_free(port):
            raise StackError(f"this stack's {what} (pid {pid}) does not listen on 127.0.0.1:{port} "
                             "yet: wait for `kappa up` to finish, or run `kappa down` and `kappa up`")
        raise StackError(f"127.0.0.1:{port} is held by another process, not this stack's {what} "
                         f"(pid {pid}): run `kappa down` and `kappa up` (it picks a free port)")
    return port


def endpoints(settings: Settings) -> Endpoints:
    """Endpoints from env, else from the running local stack; raise when neither answers.

    A local component counts only when the process recorded in ``stack.json`` is alive and is
    the one listening on the recorded port, so a stopped stack says "run `kappa up`" at once.
    """
    from schemas.serde import check_url

    if settings.schema_registry_url:
        check_url(settings.schema_registry_url)
    state = _load(settings)
    ports = state.get("ports", {})
    if (not settings.kafka_bootstrap and "kafka" not in ports) or (
            not settings.schema_registry_url and "registry" not in ports):
        raise StackError(
            f"no Kafka/registry configured and no local stack in {settings.home}: run `kappa up` "
            "or set KAPPA_KAFKA_BOOTSTRAP and KAPPA_SCHEMA_REGISTRY_URL"
        )
    kafka = settings.kafka_bootstrap or f"127.0.0.1:{_owned(settings, state, 'kafka')}"
    registry = settings.schema_registry_url or (
        f"http://127.0.0.1:{_owned(settings, state, 'registry')}/apis/ccompat/v7")
    return Endpoints(kafka, registry)


def kafka_healthy(bootstrap: str, timeout: float = 3.0, config: dict[str, Any] | None = None) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    try:
        conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000),
                                "logger": _quiet, **(config or {})}
        admin = AdminClient(conf)
        admin.list_topics(timeout=timeout)
        return True
    except Exception:
        return False


def registry_healthy(url: str, timeout: float = 3.0) -> bool:
    """True when the Confluent-compatible registry at ``url`` lists its subjects."""
    try:
        return requests.get(f"{url.rstrip('/')}/subjects", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _marker(settings: Settings, component: str) -> str:
    return f"-Dkappa.stack={settings.home.resolve()}/{component}"


def _server_properties(settings: Settings, ports: dict[str, int], data: Path) -> str:
    return "\n".join(
        [
            "# generated by `kappa up` on every start; edit kappa/stack/manager.py instead",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{ports['controller']}",
            f"listeners=PLAINTEXT://127.0.0.1:{ports['kafka']},CONTROLLER://127.0.0.1:{ports['controller']}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{ports['kafka']}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "group.initial.rebalance.delay.ms=0",
            f"num.partitions={settings.partitions}",
            "auto.create.topics.enable=true",
            # The log is the source of truth: keep it (replay), compacted topics set their own policy.
            "log.retention.ms=-1",
            "log.retention.bytes=-1",
            "message.max.bytes=10485760",
            "",
        ]
    )


def _start_kafka(settings: Settings, ports: dict[str, int]) -> int:
    root = (settings.home / "kafka").resolve()
    data = root / "data"
    props = root / "server.properties"
    root.mkdir(parents=True, exist_ok=True)
    props.write_text(_server_properties(settings, ports, data))
    classpath = fetch.kafka_classpath()
    java = fetch.java()
    log4j = f"-Dlog4j2.configurationFile={_DEPLOY / 'kafka' / 'log4j2.yaml'}"
    if not (data / "meta.properties").exists():
        import subprocess

        cluster_id = uuid.uuid4().hex[:22]
        proc = subprocess.run(
            [java, log4j, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", cluster_id, "-c", str(props)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage in {data} failed: {proc.stdout}{proc.stderr}")
    for name in ("kafka", "controller"):
        require_free(ports[name], f"Kafka {name}")
    return spawn(
        [java, f"-Xmx{settings.kafka_heap}", "-Xms256m", "-XX:+UseG1GC",
         "-Djava.awt.headless=true", log4j, _marker(settings, "kafka"),
         "-cp", classpath, "kafka.Kafka", str(props)],
        log=settings.home / "logs" / "kafka.log",
    )


def _start_registry(settings: Settings, ports: dict[str, int], bootstrap: str) -> int:
    jar = fetch.registry_jar()
    require_free(ports["registry"], "the schema registry")
    env = {
        "QUARKUS_HTTP_HOST": "127.0.0.1",
        "QUARKUS_HTTP_PORT": str(ports["registry"]),
        "QUARKUS_MANAGEMENT_ENABLED": "false",
        "QUARKUS_LOG_CONSOLE_JSON": "false",
        # Schemas live in Kafka itself (kafkasql journal), so they persist with the broker's data.
        "APICURIO_STORAGE_KIND": "kafkasql",
        "APICURIO_KAFKASQL_BOOTSTRAP_SERVERS": bootstrap,
        "APICURIO_KAFKASQL_TOPIC": "_kappa_registry_journal",
        "APICURIO_KAFKASQL_SNAPSHOTS_TOPIC": "_kappa_registry_snapshots",
        "APICURIO_KAFKASQL_EVENTS_TOPIC": "_kappa_registry_events",
        "APICURIO_KAFKASQL_CONSUMER_GROUP_PREFIX": "kappa-registry-",
    }
    return spawn(
        [fetch.java(), f"-Xmx{settings.registry_heap}", "-XX:+UseG1GC", _marker(settings, "registry"),
         "-jar", str(jar)],
        log=settings.home / "logs" / "registry.log",
        env=env,
        cwd=jar.parent,
    )


class _Exited(StackError):
    """A component exited while ``up`` waited for it."""


def _wait(check: Any, what: str, timeout: float, pid: int, marker: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive(pid):  # not is_ours(): right after fork the child still shows our cmdline
            tail = [ln for ln in (log.read_text(errors="replace").splitlines() if log.exists() else [])
                    if ln.strip()][-1:]
            raise _Exited(f"{what} exited during start (last log line: {tail[0].strip()[:300] if tail else '-'});"
                          f" see {log}")
        time.sleep(0.5)
    raise StackError(f"{what} did not answer within {timeout:.0f}s; see {log}")


def _launch(settings: Settings, state: dict[str, Any], name: str, port_names: tuple[str, ...],
            start: Callable[[], int], healthy: Callable[[], bool], timeout: float,
            echo: Callable[[str], None], started: list[str]) -> None:
    """Start ``name`` on free ports (moving a recorded port another process holds), wait for it.

    Another process may take a port between the check and the component's bind (a second
    stack starting at the same moment): then the start is retried on a new free port.
    """
    ports: dict[str, int] = state["ports"]
    what = _WHAT[name]
    for attempt in range(_ATTEMPTS):
        for p in port_names:
            if not port_free(ports[p]):
                new = _free_from(ports[p], set(ports.values()))
                echo(f"{what}: port {ports[p]} ({p}) is in use by another process; using {new} "
                     f"(saved in {settings.stack_file})")
                ports[p] = new
        _save(settings, state)
        try:
            pid = start()
        except PortInUse:
            if attempt == _ATTEMPTS - 1:
                raise
            continue
        state["pids"][name] = pid
        started.append(name)
        _save(settings, state)
        try:
            _wait(lambda pid=pid: healthy() and listens(pid, ports[port_names[0]]), f"{what} on 127.0.0.1:"
                  f"{ports[port_names[0]]}", timeout, pid, _marker(settings, name),
                  settings.home / "logs" / f"{name}.log")
            return
        except _Exited:
            lost = [p for p in port_names if not port_free(ports[p])]
            if not lost or attempt == _ATTEMPTS - 1:
                raise
            echo(f"{what}: another process took port {ports[lost[0]]} during the start; retrying")
            state["pids"].pop(name, None)
            started.remove(name)


def up(settings: Settings, timeout: float = 180.0, with_prometheus: bool = False,
       echo: Callable[[str], None] = _silent) -> list[ComponentStatus]:
    """Start whatever is not running yet (idempotent) and wait until it answers.

    A recorded port another process holds is replaced by a free one (``echo`` says so). When
    a start fails, what this call started is stopped again: a failed ``up`` leaves nothing
    running. ``with_prometheus`` also runs a local Prometheus scraping every Kappa process.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    state = _load(settings)
    state["ports"] = _pick_ports(state)
    state["pids"] = dict(state.get("pids", {}))
    _save(settings, state)
    started: list[str] = []
    try:
        _up(settings, state, timeout, with_prometheus, echo, started)
    except BaseException as exc:
        for name in reversed(started):
            pid = state["pids"].pop(name, None)
            if pid:
                stop(pid, _marker(settings, name), timeout=30.0)
        _save(settings, state)
        if started and isinstance(exc, StackError | KafkaUnavailable | RegistryUnavailable):
            raise type(exc)(f"{exc} (stopped what this `kappa up` started: {', '.join(started)})") from exc
        raise
    return status(settings)


def _up(settings: Settings, state: dict[str, Any], timeout: float, with_prometheus: bool,
        echo: Callable[[str], None], started: list[str]) -> None:
    pids: dict[str, int] = state["pids"]
    ports: dict[str, int] = state["ports"]
    if settings.kafka_bootstrap:
        bootstrap = settings.kafka_bootstrap
        check_connection(settings, bootstrap)  # KafkaAuthFailed / KafkaUnavailable naming the address
    else:
        marker = _marker(settings, "kafka")
        if is_ours(pids.get("kafka"), marker):
            addr = f"127.0.0.1:{ports['kafka']}"
            _wait(lambda: kafka_healthy(addr) and listens(pids["kafka"], ports["kafka"]), f"Kafka at {addr}",
                  timeout, pids["kafka"], marker, settings.home / "logs" / "kafka.log")
        else:
            _launch(settings, state, "kafka", ("kafka", "controller"), lambda: _start_kafka(settings, ports),
                    lambda: kafka_healthy(f"127.0.0.1:{ports['kafka']}"), timeout, echo, started)
        bootstrap = f"127.0.0.1:{ports['kafka']}"

    if settings.schema_registry_url:
        from schemas.serde import check_url

        if not registry_healthy(check_url(settings.schema_registry_url)):
            raise RegistryUnavailable(
                f"schema registry at {settings.schema_registry_url} (KAPPA_SCHEMA_REGISTRY_URL) does not answer"
            )
    else:
        def url() -> str:
            return f"http://127.0.0.1:{ports['registry']}/apis/ccompat/v7"

        marker = _marker(settings, "registry")
        if is_ours(pids.get("registry"), marker):
            _wait(lambda: registry_healthy(url()) and listens(pids["registry"], ports["registry"]),
                  f"schema registry at {url()}", timeout, pids["registry"], marker,
                  settings.home / "logs" / "registry.log")
        else:
            _launch(settings, state, "registry", ("registry",),
                    lambda: _start_registry(settings, ports, bootstrap),
                    lambda: registry_healthy(url()), timeout, echo, started)
    if with_prometheus:
        from kappa.stack import prometheus

        pids["prometheus"], state["ports"]["prometheus"] = prometheus.ensure(
            settings, pids.get("prometheus"), state["ports"].get("prometheus", 0), timeout=timeout)
        _save(settings, state)


def _stop_marker(settings: Settings, name: str) -> str:
    if name == "prometheus":  # Prometheus is marked by its config path under KAPPA_HOME
        from kappa.stack import prometheus

        return prometheus.marker(settings)
    return _marker(settings, name)


def down(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Stop everything ``up`` started in this ``KAPPA_HOME`` (registry first); return what stopped."""
    state = _load(settings)
    pids: dict[str, int] = dict(state.get("pids", {}))
    stopped = []
    for name in ("prometheus", "registry", "kafka"):
        pid = pids.pop(name, None)
        if pid and is_ours(pid, _stop_marker(settings, name)):
            stop(pid, _stop_marker(settings, name), timeout)
            stopped.append(name)
    state["pids"] = pids
    if state:
        _save(settings, state)
    return stopped


def status(settings: Settings) -> list[ComponentStatus]:
    """Health of each component, local or external."""
    state = _load(settings)
    pids: dict[str, int] = state.get("pids", {})
    ports: dict[str, int] = state.get("ports", {})
    out = []
    if settings.kafka_bootstrap:
        try:  # with the security settings from env (SASL/TLS), like every Kappa client
            check_connection(settings, settings.kafka_bootstrap, timeout=3.0)
            ok, why = True, ""
        except KafkaUnavailable as exc:
            ok, why = False, str(exc)
        out.append(ComponentStatus("kafka", settings.kafka_bootstrap, ok, managed=False, detail=why))
    else:
        addr = f"127.0.0.1:{ports.get('kafka', _PREFERRED['kafka'])}"
        pid = pids.get("kafka")
        alive = is_ours(pid, _marker(settings, "kafka"))
        owned = alive and listens(pid, ports.get("kafka", 0))
        out.append(ComponentStatus("kafka", addr, owned and kafka_healthy(addr), True,
                                   pid if alive else None, rss_bytes(pid) if alive and pid else 0,
                                   f"Apache Kafka {fetch.KAFKA_VERSION} (KRaft)" if alive else "not running"))
    if settings.schema_registry_url:
        out.append(ComponentStatus("registry", settings.schema_registry_url,
                                   registry_healthy(settings.schema_registry_url), managed=False))
    else:
        url = f"http://127.0.0.1:{ports.get('registry', _PREFERRED['registry'])}/apis/ccompat/v7"
        pid = pids.get("registry")
        alive = is_ours(pid, _marker(settings, "registry"))
        owned = alive and listens(pid, ports.get("registry", 0))
        out.append(ComponentStatus("registry", url, owned and registry_healthy(url), True,
                                   pid if alive else None, rss_bytes(pid) if alive and pid else 0,
                                   f"Apicurio Registry {fetch.APICURIO_VERSION}" if alive else "not running"))
    if "prometheus" in pids:
        from kappa.stack import prometheus

        url = f"http://127.0.0.1:{ports.get('prometheus', prometheus.PREFERRED_PORT)}"
        pid = pids["prometheus"]
        alive = is_ours(pid, prometheus.marker(settings))
        out.append(ComponentStatus("prometheus", url, alive and prometheus.healthy(url), True,
                                   pid if alive else None, rss_bytes(pid) if alive and pid else 0,
                                   "Prometheus (scrapes KAPPA_HOME/metrics/targets)" if alive else "not running"))
    return out + pipeline_status(settings)


def pipeline_status(settings: Settings) -> list[ComponentStatus]:
    """The running ``kappa run`` (from its run lock) and every live metrics endpoint."""
    from kappa.metrics import list_targets
    from kappa.runlock import running

    out = []
    run = running(settings.home)
    if run is not None:
        out.append(ComponentStatus("run", f"version {run.version}", alive(run.pid), True, run.pid or None,
                                   rss_bytes(run.pid) if run.pid else 0,
                                   f"kappa run: {sum(n.startswith('worker') for n in run.children)} worker(s) + sink",
                                   kind="pipeline"))
        for name, pid in sorted(run.children.items()):
            out.append(ComponentStatus(name, f"version {run.version}", alive(pid), True, pid,
                                       rss_bytes(pid), "" if alive(pid) else "exited", kind="pipeline"))
    for component, address in list_targets(settings.home):
        out.append(ComponentStatus(component, f"http://{address}/metrics", True, True, kind="metrics"))
    return out


def as_dict(rows: list[ComponentStatus]) -> list[dict[str, Any]]:
    """Status rows as plain dicts (for ``--json``)."""
    return [asdict(r) for r in rows]
