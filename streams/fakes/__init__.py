"""Local stand-ins for payment providers that ship no mock of their own.

They are real HTTP servers run as separate processes (``python -m
streams.fakes.<name>``, started by ``ledger.infra.mocks``), never imported
into the process under test. Each follows its provider's documented wire
format, and also answers a few endpoints of its own under ``/__fake``
(outside every provider's API): ``health`` for readiness probes, and
``requests`` so tests can see exactly what reached the peer.
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.infra.mocks import FAKE_ADMIN_PREFIX
from ledger.limits import MOCK_RECORDED_REQUESTS_MAX, MOCK_REQUEST_BODY_BYTES_MAX

# Never recorded in clear: tests need to know a credential was sent, not what it was.
_SECRET_HEADERS = frozenset({"authorization", "x-cc-api-key"})


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request) -> bytes:
    """The request body, refused past MOCK_REQUEST_BODY_BYTES_MAX as it arrives."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MOCK_REQUEST_BODY_BYTES_MAX:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body``, or None if there is none or it is not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class RequestLog:
    """The last MOCK_RECORDED_REQUESTS_MAX requests a fake served, for tests to inspect."""

    def __init__(self) -> None:
        self._entries: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MOCK_RECORDED_REQUESTS_MAX
        )
        self._lock = threading.Lock()

    def record(
        self,
        request: Request,
        body: Any,
        status: int,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        headers = {
            name: ("<redacted>" if name in _SECRET_HEADERS else value)
            for name, value in request.headers.items()
        }
        entry = {
            "method": request.method,
            "path": request.url.path,
            "headers": headers,
            "body": body,
            "status": status,
            **(extra or {}),
        }
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def admin_routes(service: str, log: RequestLog) -> list[Route]:
    async def health(_: Request) -> Response:
        return JSONResponse({"service": service})

    async def requests(request: Request) -> Response:
        if request.method == "DELETE":
            log.clear()
            return Response(status_code=204)
        return JSONResponse({"requests": log.entries()})

    return [
        Route(f"{FAKE_ADMIN_PREFIX}/health", health, methods=["GET"]),
        Route(f"{FAKE_ADMIN_PREFIX}/requests", requests, methods=["GET", "DELETE"]),
    ]


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return parser


def serve(app: Starlette, host: str, port: int) -> None:
    import uvicorn  # noqa: PLC0415 - only the fake's own process needs a server

    uvicorn.run(app, host=host, port=port, log_level="warning", ws="none", lifespan="on")
