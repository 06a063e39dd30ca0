"""The read-only query endpoint of the sink service (embedded engine only).

chdb locks its directory to one process, so while the sink runs, ``kappa query`` cannot open
the directory itself; the sink answers instead, on 127.0.0.1 and a free port, through a
second connection opened with ClickHouse ``readonly=1``. Its address is written to a file
under KAPPA_HOME while it runs (removed at exit).

Protocol: ``POST /query?format=<ClickHouse format>`` with the SQL as body; 200 with the
result, 403 when the statement is not read-only, 400 with the engine's message otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kappa.errors import SinkError
from sinks.base import Backend, ReadOnlyViolation, check_read_only

__all__ = ["QueryEndpoint"]

log = logging.getLogger("kappa.sink.endpoint")
_FORMAT_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class QueryEndpoint:
    """Serves read-only queries on ``backend`` and advertises itself in ``address_file``."""

    def __init__(self, backend: Backend, address_file: Path) -> None:
        self.backend = backend
        self.address_file = address_file
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        """Bind 127.0.0.1 on a free port, serve in a daemon thread, write the address file."""
        backend = self.backend

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                url = urlparse(self.path)
                if url.path != "/query":
                    return self._reply(404, b"POST /query?format=<format> with the SQL as body")
                fmt = parse_qs(url.query).get("format", ["TabSeparated"])[0]
                if not set(fmt) <= _FORMAT_OK:
                    return self._reply(400, b"bad format name")
                sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                try:
                    out = backend.query(check_read_only(sql), fmt)
                except ReadOnlyViolation as exc:
                    return self._reply(403, str(exc).encode())
                except SinkError as exc:
                    return self._reply(400, str(exc).encode())
                self._reply(200, out)

            def do_GET(self) -> None:
                self._reply(200 if self.path == "/ping" else 404, b"kappa sink query endpoint\n")

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug(format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kappa-query",
                                        daemon=True)
        self._thread.start()
        self.address_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.address_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
        tmp.replace(self.address_file)
        log.info("read-only query endpoint on %s (%s)", self.url, self.address_file)
        return self.url

    def stop(self) -> None:
        """Stop serving and remove the address file (only if it is still ours)."""
        try:
            if json.loads(self.address_file.read_text()).get("pid") == os.getpid():
                self.address_file.unlink()
        except (OSError, ValueError):
            pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
