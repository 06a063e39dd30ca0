"""The read-only query endpoint of the sink service (embedded engine only).

chdb locks its directory to one process, so while the sink runs, ``kappa query`` cannot open
the directory itself; the sink answers instead, on 127.0.0.1 and a free port, through a
second connection opened with ClickHouse ``readonly=1``. Its address and a random token are
written to a file under KAPPA_HOME that only its owner can read (mode 0600, removed at exit):
any local user can reach the port, only the KAPPA_HOME owner can present the token.

Protocol: ``POST /query?format=<ClickHouse format>`` with the SQL as body and the token in
the ``X-Kappa-Token`` header; 200 with the result streamed in chunks (a result cut short
ends without the last chunk, so the client sees the break), 401 without the right token,
403 when the statement is not read-only, 422 for a syntax error, 400 with the engine's
message otherwise.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from kappa.errors import SinkError
from sinks.base import Backend, ReadOnlyViolation
from sinks.guard import QuerySyntaxError, check_query

__all__ = ["TOKEN_HEADER", "QueryEndpoint", "write_private"]

log = logging.getLogger("kappa.sink.endpoint")
_FORMAT_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
TOKEN_HEADER = "X-Kappa-Token"


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically with mode 0600 from its first byte (never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # whatever the umask
    tmp.replace(path)


class QueryEndpoint:
    """Serves read-only queries on ``backend`` and advertises itself in ``address_file``."""

    def __init__(self, backend: Backend, address_file: Path) -> None:
        self.backend = backend
        self.address_file = address_file
        self.token = secrets.token_urlsafe(32)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        """Bind 127.0.0.1 on a free port, serve in a daemon thread, write the address file."""
        backend, token = self.backend, self.token.encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked responses

            def do_POST(self) -> None:
                url = urlparse(self.path)
                if url.path != "/query":
                    return self._reply(404, b"POST /query?format=<format> with the SQL as body")
                given = self.headers.get(TOKEN_HEADER, "").encode()
                sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode(errors="replace")
                if not hmac.compare_digest(given, token):
                    return self._reply(401, f"the query endpoint needs the token from its address "
                                            f"file (header {TOKEN_HEADER})".encode())
                fmt = parse_qs(url.query).get("format", ["TabSeparated"])[0]
                if not set(fmt) <= _FORMAT_OK:
                    return self._reply(400, b"bad format name")
                try:
                    chunks = backend.stream(check_query(backend, sql), fmt)
                    first = next(chunks, b"")  # the engine's errors come before any output
                except ReadOnlyViolation as exc:
                    return self._reply(403, str(exc).encode())
                except QuerySyntaxError as exc:
                    return self._reply(422, str(exc).encode())
                except SinkError as exc:
                    return self._reply(400, str(exc).encode())
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    self._chunk(first)
                    for chunk in chunks:
                        self._chunk(chunk)
                except SinkError as exc:  # no terminating chunk: the client sees a cut result
                    log.warning("query failed mid-result: %s", exc)
                    return
                except OSError:
                    return  # the client went away
                finally:
                    chunks.close()
                self.wfile.write(b"0\r\n\r\n")

            def do_GET(self) -> None:
                self._reply(200 if self.path == "/ping" else 404, b"kappa sink query endpoint\n")

            def _chunk(self, data: bytes) -> None:
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug(format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kappa-query",
                                        daemon=True)
        self._thread.start()
        write_private(self.address_file, json.dumps({"url": self.url, "pid": os.getpid(),
                                                     "token": self.token}))
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
