"""An HTTP reverse proxy that forwards to one upstream and records every exchange.

Tests put it between a process and a provider mock to see the calls that
process made: method, path, ``Idempotency-Key`` header, request body and the
upstream's status. Requests and responses pass through unchanged apart from
hop-by-hop headers, and connections stay open on both sides (HTTP/1.1
keep-alive): one upstream connection per client connection. ``delay_s``
holds every request that long before forwarding it: a provider's latency,
which paces a client that calls one request at a time.
"""

from __future__ import annotations

import http.client
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
UPSTREAM_TIMEOUT_S = 30.0
# An idle client connection is closed after this long.
IDLE_TIMEOUT_S = 120.0
BAD_GATEWAY = 502


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request as the proxy forwarded it, and the status the client got back."""

    method: str
    path: str
    idempotency_key: str | None
    body: bytes
    status: int


class RecordingProxy:
    """The proxy's address and what it has recorded so far (thread-safe)."""

    def __init__(self, upstream: str, *, delay_s: float = 0.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the upstream must be an http:// URL, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._errors: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)

    def record_error(self, error: str) -> None:
        with self._lock:
            self._errors.append(error)

    def exchanges(self) -> list[Exchange]:
        """A snapshot of every exchange so far, in the order they completed."""
        with self._lock:
            return list(self._exchanges)

    def errors(self) -> list[str]:
        """Upstream failures answered with 502, and connection errors, so far."""
        with self._lock:
            return list(self._errors)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # persistent connections towards the client
    timeout = IDLE_TIMEOUT_S
    # Each reply leaves in one write, without Nagle's delay (which, with the
    # peer's delayed ACK, costs tens of milliseconds per exchange).
    disable_nagle_algorithm = True
    wbufsize = -1
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the recording is the log

    def _forward(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if proxy.delay_s:
            time.sleep(proxy.delay_s)
        try:
            response, payload = self._exchange(body, headers)
        except (OSError, http.client.HTTPException) as error:
            proxy.record_error(f"{self.command} {self.path}: {error!r}")
            status, reply = BAD_GATEWAY, ([("Content-Type", "text/plain")], repr(error).encode())
        else:
            status, reply = response.status, (response.getheaders(), payload)
        # Recorded before the reply leaves: the upstream saw the call even when
        # the client is gone by now.
        proxy.record(
            Exchange(
                method=self.command,
                path=self.path,
                idempotency_key=self.headers.get("Idempotency-Key"),
                body=body,
                status=status,
            )
        )
        self._reply(status, *reply)

    def _exchange(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send on the kept upstream connection; once more on a new one if it had gone stale."""
        reused = self._upstream is not None
        try:
            return self._send(body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            return self._send(body, headers)

    def _send(self, body: bytes, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
        proxy = self.server.proxy
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=UPSTREAM_TIMEOUT_S
            )
        try:
            self._upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = self._upstream.getresponse()
            payload = response.read()
        except BaseException:
            self._upstream.close()
            self._upstream = None
            raise
        if response.will_close:
            self._upstream.close()
            self._upstream = None
        return response, payload

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    do_GET = _forward
    do_POST = _forward
    do_PUT = _forward
    do_PATCH = _forward
    do_DELETE = _forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: RecordingProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-exchange (a killed process) is expected here.
        self.proxy.record_error(f"connection from {client_address}: {sys.exc_info()[1]!r}")


@contextmanager
def recording_proxy(upstream: str, *, delay_s: float = 0.0) -> Iterator[RecordingProxy]:
    """A proxy to ``upstream`` on a free localhost port, served in threads until exit."""
    proxy = RecordingProxy(upstream, delay_s=delay_s)
    server = _Server(proxy)
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
