"""``kappa up`` / ``down`` / ``status``: start, stop and check the local stack.

What was started is recorded in ``$KAPPA_HOME/stack.json`` (ports and pids), so any later
``kappa`` command, in any shell, finds the same endpoints. Ports are chosen once (the
conventional ones when free, otherwise free ones) and kept, so data and clients survive
``down``/``up``. Services given by ``KAPPA_KAFKA_BOOTSTRAP`` / ``KAPPA_SCHEMA_REGISTRY_URL``
are used as they are and never started. ``up(brokers=N)`` runs N KRaft nodes
(:mod:`kappa.stack.cluster`); the node count is recorded too, and later calls keep it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from confluent_kafka.admin import AdminClient

from kappa.errors import ConfigError, KafkaUnavailable, PortInUse, RegistryUnavailable, StackError
from kappa.kafka import check_connection
from kappa.settings import Settings
from kappa.stack import cluster, fetch
from kappa.stack.process import alive, is_ours, listens, port_free, require_free, rss_bytes, spawn, stop

__all__ = ["ComponentStatus", "Endpoints", "down", "endpoints", "status", "up"]

_quiet = logging.getLogger("kappa.stack.health")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_PREFERRED = {"kafka": 9092, "controller": 9093, "registry": 8081}
_WHAT = {"kafka": "Kafka", "registry": "schema registry"}
_NODE_HEAP = "384m"
"""Heap of each node of a multi-node cluster (a single broker gets ``KAPPA_KAFKA_HEAP``)."""


def _what(name: str) -> str:
    return _WHAT.get(name) or f"Kafka node {cluster.node_id(name)}"


def brokers_of(settings: Settings) -> int:
    """Nodes of this ``KAPPA_HOME``'s local cluster (1 when none was started yet)."""
    return int(_load(settings).get("brokers", 1))
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


def _pick_ports(state: dict[str, Any], brokers: int = 1) -> dict[str, int]:
    ports: dict[str, int] = dict(state.get("ports", {}))
    taken = set(ports.values())
    wanted = dict(_PREFERRED)
    for i, node in enumerate(cluster.node_names(brokers)[1:], start=1):
        kafka_port, controller_port = cluster.port_names(node)
        wanted[kafka_port], wanted[controller_port] = 9092 + 100 * i, 9093 + 100 * i
    for name, preferred in wanted.items():
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
    what = _what(name)
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
    kafka = settings.kafka_bootstrap or _local_bootstrap(settings, state)
    registry = settings.schema_registry_url or (
        f"http://127.0.0.1:{_owned(settings, state, 'registry')}/apis/ccompat/v7")
    return Endpoints(kafka, registry)


def _local_bootstrap(settings: Settings, state: dict[str, Any]) -> str:
    """Every node's address once one node of this stack answers (clients find the live ones)."""
    brokers = int(state.get("brokers", 1))
    if brokers == 1:
        return f"127.0.0.1:{_owned(settings, state, 'kafka')}"
    first: StackError | None = None
    for name in cluster.node_names(brokers):
        try:
            _owned(settings, state, name)
            return cluster.bootstrap(state["ports"], brokers)
        except StackError as exc:
            first = first or exc
    assert first is not None
    raise first


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


def _start_kafka(settings: Settings, ports: dict[str, int], name: str = "kafka", brokers: int = 1,
                 cluster_id: str | None = None) -> int:
    """Format node ``name``'s storage on first start (with the cluster's id), then start it."""
    root = (settings.home / name).resolve()
    data = root / "data"
    props = root / "server.properties"
    root.mkdir(parents=True, exist_ok=True)
    props.write_text(cluster.server_properties(name, brokers, ports, data, settings.partitions))
    classpath = fetch.kafka_classpath()
    java = fetch.java()
    log4j = f"-Dlog4j2.configurationFile={_DEPLOY / 'kafka' / 'log4j2.yaml'}"
    if not (data / "meta.properties").exists():
        import subprocess

        cluster_id = cluster_id or uuid.uuid4().hex[:22]
        proc = subprocess.run(
            [java, log4j, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", cluster_id, "-c", str(props)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage in {data} failed: {proc.stdout}{proc.stderr}")
    for port, what in zip(cluster.port_names(name), ("", "controller"), strict=True):
        require_free(ports[port], f"{_what(name)} {what}".strip() if brokers > 1 else f"Kafka {what or 'kafka'}")
    heap, initial = (settings.kafka_heap, "256m") if brokers == 1 else (_NODE_HEAP, "128m")
    return spawn(
        [java, f"-Xmx{heap}", f"-Xms{initial}", "-XX:+UseG1GC",
         "-Djava.awt.headless=true", log4j, _marker(settings, name),
         "-cp", classpath, "kafka.Kafka", str(props)],
        log=settings.home / "logs" / f"{name}.log",
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
    what = _what(name)
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
       echo: Callable[[str], None] = _silent, brokers: int | None = None) -> list[ComponentStatus]:
    """Start whatever is not running yet (idempotent) and wait until it answers.

    A recorded port another process holds is replaced by a free one (``echo`` says so). When
    a start fails, what this call started is stopped again: a failed ``up`` leaves nothing
    running. ``with_prometheus`` also runs a local Prometheus scraping every Kappa process.
    ``brokers`` (default: the recorded count, else 1) runs that many KRaft nodes; a
    ``KAPPA_HOME`` keeps the count its Kafka data was formatted with.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    state = _load(settings)
    recorded = int(state.get("brokers", 1))
    n = recorded if brokers is None else brokers
    if n < 1:
        raise ConfigError(f"--brokers must be >= 1, got {n}")
    if n != recorded and not settings.kafka_bootstrap and (settings.home / "kafka" / "data").exists():
        raise ConfigError(
            f"{settings.home} holds a {recorded}-node Kafka cluster's data; it cannot become {n} nodes: "
            f"run `kappa up --brokers {recorded}`, or use another KAPPA_HOME for a {n}-node cluster")
    state["brokers"] = n
    state["ports"] = _pick_ports(state, n)
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
    elif int(state.get("brokers", 1)) > 1:
        bootstrap = _up_cluster(settings, state, timeout, echo, started)
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


def _up_cluster(settings: Settings, state: dict[str, Any], timeout: float,
                echo: Callable[[str], None], started: list[str]) -> str:
    """Start every node that is not running, then wait for each, then for all to be registered.

    The nodes start together, since none answers before a majority of the quorum runs. Their
    ports are part of every node's quorum configuration, so a port another process holds is an
    error here (never moved, as a single broker's is).
    """
    pids: dict[str, int] = state["pids"]
    ports: dict[str, int] = state["ports"]
    n = int(state["brokers"])
    cluster_id = state.setdefault("cluster_id", uuid.uuid4().hex[:22])
    _save(settings, state)
    nodes = cluster.node_names(n)
    for name in nodes:
        if not is_ours(pids.get(name), _marker(settings, name)):
            pids[name] = _start_kafka(settings, ports, name, n, cluster_id)
            started.append(name)
            _save(settings, state)
    for name in nodes:
        port = ports[cluster.port_names(name)[0]]
        addr = f"127.0.0.1:{port}"
        _wait(lambda pid=pids[name], addr=addr, port=port: kafka_healthy(addr) and listens(pid, port),
              f"{_what(name)} at {addr}", timeout, pids[name], _marker(settings, name),
              settings.home / "logs" / f"{name}.log")
    bootstrap = cluster.bootstrap(ports, n)

    def registered() -> bool:
        conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _quiet}
        try:
            return len(AdminClient(conf).list_topics(timeout=3).brokers) == n
        except Exception:
            return False

    _wait(registered, f"all {n} Kafka nodes registered at {bootstrap}", timeout, pids["kafka"],
          _marker(settings, "kafka"), settings.home / "logs" / "kafka.log")
    return bootstrap


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
    nodes = cluster.node_names(int(state.get("brokers", 1)))
    for name in ("prometheus", "registry", *reversed(nodes)):
        if len(nodes) > 1 and name == nodes[-1]:
            # every node at once: stopped one by one, the last ones lose the quorum they shut down with
            for node in nodes:
                if is_ours(pids.get(node), _marker(settings, node)):
                    os.killpg(pids[node], signal.SIGTERM)
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
    elif int(state.get("brokers", 1)) > 1:
        out.extend(_cluster_status(settings, state))
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


def _cluster_status(settings: Settings, state: dict[str, Any]) -> list[ComponentStatus]:
    """One row per node (its node.id, whether it leads the controller quorum) + the leader."""
    pids: dict[str, int] = state.get("pids", {})
    ports: dict[str, int] = state.get("ports", {})
    n = int(state["brokers"])
    rows, live = [], []
    for name in cluster.node_names(n):
        port = ports.get(cluster.port_names(name)[0], 0)
        pid = pids.get(name)
        alive = is_ours(pid, _marker(settings, name))
        if alive:
            live.append(name)
        addr = f"127.0.0.1:{port}"
        rows.append((name, addr, alive and listens(pid, port) and kafka_healthy(addr), pid if alive else None))
    leader = cluster.quorum_leader(settings.home, live)
    out = []
    for name, addr, ok, pid in rows:
        node = cluster.node_id(name)
        detail = (f"Apache Kafka {fetch.KAFKA_VERSION} (KRaft node {node}/{n}"
                  f"{', controller leader' if node == leader else ''})" if pid else "not running")
        out.append(ComponentStatus(name, addr, ok, True, pid, rss_bytes(pid) if pid else 0, detail))
    quorum = len(live) > n // 2 and leader is not None
    out.append(ComponentStatus(
        "controller", f"node {leader}" if quorum else "none", quorum, True,
        detail=(f"KRaft quorum leader, {len(live)} of {n} voters running" if quorum else
                f"no quorum: {len(live)} of {n} voters running (a majority is {n // 2 + 1})")))
    return out


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
