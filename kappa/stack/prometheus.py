"""A local Prometheus (Debian's ``prometheus`` binary) that scrapes every Kappa process.

Why a local one: users without Docker still get queryable metrics (``kappa up
--with-prometheus``), and the test suite checks every dashboard and alert expression against
a real server instead of trusting their text. The scrape config is rendered from
``deploy/prometheus/prometheus.local.yml`` into ``$KAPPA_HOME/prometheus/prometheus.yml``;
targets come from the file_sd directory :func:`kappa.metrics.serve` writes, so no process
needs a fixed port.

The rendered config path is on the process's command line and is the marker that tells
*our* Prometheus apart from any other (a system-wide one on :9090, another ``KAPPA_HOME``).
"""

from __future__ import annotations

import shutil
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from kappa.errors import StackError, ToolMissing
from kappa.metrics import targets_dir
from kappa.settings import Settings
from kappa.stack.process import free_port, is_ours, port_free, spawn, stop

__all__ = [
    "DEPLOY",
    "LocalPrometheus",
    "config_path",
    "ensure",
    "healthy",
    "marker",
    "query",
    "render_config",
    "start",
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
"""The checked-in scrape configs, alert rules and their promtool tests."""
PREFERRED_PORT = 9090


def _binary(name: str = "prometheus") -> str:
    found = shutil.which(name)
    if not found:
        raise ToolMissing(
            f"{name} not found: install Prometheus (Debian: apt-get install prometheus; "
            "`bash .ci/bootstrap` does it) or use the docker-compose Prometheus"
        )
    return found


def config_path(settings: Settings) -> Path:
    """Where the rendered scrape config of this ``KAPPA_HOME`` lives."""
    return settings.home.resolve() / "prometheus" / "prometheus.yml"


def marker(settings: Settings) -> str:
    """The command-line fragment that identifies this home's Prometheus (see /proc/<pid>/cmdline)."""
    return f"--config.file={config_path(settings)}"


def render_config(home: Path, listen_address: str, scrape_interval: str = "5s",
                  rules_dir: Path | None = None) -> str:
    """The local scrape config: file_sd on ``home``'s targets, Kappa's alert rules loaded.

    >>> text = render_config(Path("/tmp/k"), "127.0.0.1:9090", "1s")
    >>> "/tmp/k/metrics/targets/*.json" in text and "scrape_interval: 1s" in text
    True
    """
    template = string.Template((DEPLOY / "prometheus.local.yml").read_text())
    return template.substitute(
        scrape_interval=scrape_interval,
        rules_dir=str((rules_dir or DEPLOY / "rules").resolve()),
        targets_dir=str(targets_dir(home.resolve())),
        listen_address=listen_address,
    )


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when the Prometheus at ``url`` reports ready (config loaded, TSDB open)."""
    try:
        return requests.get(f"{url}/-/ready", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def query(url: str, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Evaluate an instant PromQL query; return its result list (empty when no data).

    Raises StackError with Prometheus's own message when the expression is invalid or fails,
    so a broken dashboard query names itself.
    """
    try:
        resp = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=timeout)
        body = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise StackError(f"Prometheus at {url} did not answer the query {expr!r}: {exc}") from exc
    if body.get("status") != "success":
        raise StackError(f"Prometheus rejected {expr!r}: {body.get('errorType')}: {body.get('error')}")
    return list(body["data"]["result"])


def start(settings: Settings, port: int = 0, scrape_interval: str = "5s",
          timeout: float = 60.0, retention: str = "7d") -> tuple[int, str]:
    """Start Prometheus for ``settings.home`` on 127.0.0.1 and wait until ready; return (pid, url).

    ``port`` 0 means 9090 when free, else any free port. Data goes to
    ``$KAPPA_HOME/prometheus/data``, the log to ``$KAPPA_HOME/logs/prometheus.log``.
    """
    binary = _binary()
    port = port or (PREFERRED_PORT if port_free(PREFERRED_PORT) else free_port())
    if not port_free(port):
        raise StackError(f"port 127.0.0.1:{port} for Prometheus is in use: stop that process or pick another port")
    listen = f"127.0.0.1:{port}"
    cfg = config_path(settings)
    cfg.parent.mkdir(parents=True, exist_ok=True)
    targets_dir(settings.home.resolve()).mkdir(parents=True, exist_ok=True)
    cfg.write_text(render_config(settings.home, listen, scrape_interval))
    log = settings.home.resolve() / "logs" / "prometheus.log"
    pid = spawn(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={cfg.parent / 'data'}",
         f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={listen}",
         "--web.enable-lifecycle", "--log.level=warn"],
        log=log,
    )
    url = f"http://{listen}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return pid, url
        if not is_ours(pid, ""):  # gone or zombie (the marker may not be visible before exec)
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise StackError(f"Prometheus exited during start; last log lines ({log}):\n" + "\n".join(tail))
        time.sleep(0.2)
    stop(pid, marker(settings))
    raise StackError(f"Prometheus at {url} was not ready within {timeout:.0f}s; see {log}")


def ensure(settings: Settings, pid: int | None, port: int = 0, scrape_interval: str = "5s",
           timeout: float = 60.0) -> tuple[int, int]:
    """``kappa up --with-prometheus``: keep a running one (idempotent) or start it; return (pid, port).

    ``pid``/``port`` are what ``stack.json`` recorded; the port is kept across restarts so
    bookmarks and Grafana datasources keep working.
    """
    if port and pid is not None and is_ours(pid, marker(settings)) and healthy(f"http://127.0.0.1:{port}"):
        return pid, port
    new_pid, url = start(settings, port, scrape_interval, timeout)
    return new_pid, int(url.rsplit(":", 1)[1])


@dataclass
class LocalPrometheus:
    """A Prometheus started for one ``KAPPA_HOME`` and stopped by :meth:`stop` (tests use it).

    Example::

        with LocalPrometheus.start(Settings(home=tmp), scrape_interval="1s") as prom:
            prom.query("up")
    """

    settings: Settings
    pid: int
    url: str

    @classmethod
    def start(cls, settings: Settings, port: int = 0, scrape_interval: str = "1s",
              timeout: float = 60.0) -> LocalPrometheus:
        """Start it on ``port`` (0: a free port, never 9090, so parallel runs never collide)."""
        pid, url = start(settings, port or free_port(), scrape_interval, timeout)
        return cls(settings, pid, url)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; see :func:`query`."""
        return query(self.url, expr)

    def api(self, path: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (targets, rules, ...)."""
        try:
            body = requests.get(f"{self.url}/api/v1/{path}", timeout=10).json()
        except (requests.RequestException, ValueError) as exc:
            raise StackError(f"Prometheus at {self.url} did not answer /api/v1/{path}: {exc}") from exc
        if body.get("status") != "success":
            raise StackError(f"Prometheus /api/v1/{path} failed: {body.get('error')}")
        return body["data"]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (then SIGKILL) the server; a no-op when it is gone."""
        stop(self.pid, marker(self.settings), timeout)

    def __enter__(self) -> LocalPrometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
