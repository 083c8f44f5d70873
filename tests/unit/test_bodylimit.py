from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from ingress.bodylimit import BodyLimitMiddleware, RequestBodyTooLarge
from ingress.problems import MEDIA_TYPE
from ledger import limits

LIMIT = 100


def http_scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/payments",
        "raw_path": b"/v1/payments",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


class Wire:
    """The server side of one request: body chunks in, response messages out."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.receive_calls = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.receive_calls += 1
        if not self.chunks:
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


class ReadingApp:
    """Reads the whole body, then answers 200 with its length; records what it saw."""

    def __init__(self) -> None:
        self.called = False
        self.bytes_seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        while True:
            message = await receive()
            self.bytes_seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await JSONResponse({"length": self.bytes_seen})(scope, receive, send)


async def run(chunks: list[bytes], headers: list[tuple[bytes, bytes]], app: Any = None) -> Wire:
    wire = Wire(chunks)
    middleware = BodyLimitMiddleware(app or ReadingApp(), limit_bytes=LIMIT)
    await middleware(http_scope(headers), wire.receive, wire.send)
    return wire


def assert_413(wire: Wire) -> None:
    assert wire.status == 413
    assert wire.headers[b"content-type"] == MEDIA_TYPE.encode()
    assert wire.headers[b"connection"] == b"close"
    problem = json.loads(wire.body)
    assert problem["type"] == "/problems/body-too-large"
    assert problem["limit_bytes"] == LIMIT
    assert problem["instance"] == "/v1/payments"


async def test_content_length_over_limit_is_refused_without_reading() -> None:
    app = ReadingApp()
    wire = await run([b"x" * (LIMIT + 1)], [(b"content-length", str(LIMIT + 1).encode())], app)
    assert_413(wire)
    assert wire.receive_calls == 0
    assert not app.called


async def test_huge_content_length_is_refused() -> None:
    wire = await run([b""], [(b"content-length", b"9" * 5000)])
    assert_413(wire)
    assert wire.receive_calls == 0


async def test_content_length_at_limit_passes() -> None:
    app = ReadingApp()
    wire = await run([b"x" * LIMIT], [(b"content-length", str(LIMIT).encode())], app)
    assert wire.status == 200
    assert json.loads(wire.body) == {"length": LIMIT}


async def test_streamed_body_over_limit_is_refused_while_read() -> None:
    app = ReadingApp()
    chunks = [b"x" * 40, b"x" * 40, b"x" * 40, b"x" * 40]
    wire = await run(chunks, [(b"transfer-encoding", b"chunked")], app)
    assert_413(wire)
    # The chunk that crossed the limit never reached the application, and
    # nothing after it was read.
    assert app.bytes_seen == 80
    assert wire.receive_calls == 3


async def test_streamed_body_at_limit_passes() -> None:
    app = ReadingApp()
    wire = await run([b"x" * 50, b"x" * 50, b""], [(b"transfer-encoding", b"chunked")], app)
    assert wire.status == 200
    assert json.loads(wire.body) == {"length": LIMIT}


async def test_lying_content_length_is_still_counted() -> None:
    app = ReadingApp()
    wire = await run([b"x" * 60, b"x" * 60], [(b"content-length", b"10")], app)
    assert_413(wire)
    assert app.bytes_seen == 60


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"abc")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"+5")],
        [(b"content-length", b"1 0")],
        [(b"content-length", b"5"), (b"content-length", b"6")],
    ],
)
async def test_invalid_content_length_is_400(headers: list[tuple[bytes, bytes]]) -> None:
    app = ReadingApp()
    wire = await run([b"x"], headers, app)
    assert wire.status == 400
    assert json.loads(wire.body)["type"] == "/problems/invalid-content-length"
    assert not app.called


async def test_repeated_equal_content_lengths_are_accepted() -> None:
    wire = await run([b"x" * 5], [(b"content-length", b"5"), (b"content-length", b"5")])
    assert wire.status == 200


async def test_application_that_swallows_the_error_is_overridden() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except RequestBodyTooLarge:
            await Response("bad request", status_code=400)(scope, receive, send)

    wire = await run([b"x" * 60, b"x" * 60], [], app)
    assert_413(wire)
    assert len(wire.sent) == 2  # our start and body only: the 400 was dropped


async def test_application_that_keeps_reading_keeps_failing() -> None:
    attempts = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal attempts
        for _ in range(3):
            try:
                await receive()
                await receive()
            except RequestBodyTooLarge:
                attempts += 1
        await Response("done")(scope, receive, send)

    wire = await run([b"x" * 60, b"x" * 60, b"x" * 60], [], app)
    assert attempts == 3
    assert wire.receive_calls == 2
    assert_413(wire)


async def test_after_the_response_started_the_error_propagates() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass

    with pytest.raises(RequestBodyTooLarge):
        await run([b"x" * 60, b"x" * 60], [], app)


async def test_unrelated_errors_propagate() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await run([b"x"], [], app)


def test_limit_outside_the_allowed_range_is_refused() -> None:
    with pytest.raises(ValueError, match="limit_bytes"):
        BodyLimitMiddleware(ReadingApp(), limit_bytes=limits.REQUEST_BODY_BYTES_CEILING + 1)
    with pytest.raises(ValueError, match="limit_bytes"):
        BodyLimitMiddleware(ReadingApp(), limit_bytes=-1)


# --- through real applications -------------------------------------------------------------


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(document: dict[str, str]) -> dict[str, int]:
        return {"keys": len(document)}

    app.add_middleware(BodyLimitMiddleware, limit_bytes=LIMIT)
    return app


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_fastapi_chunked_body_over_limit_is_413_not_400() -> None:
    # FastAPI turns any error while reading a body into its own 400; the
    # middleware must still answer what happened.
    data = json.dumps({"k": "v" * 200}).encode()
    with TestClient(fastapi_app()) as client:
        response = client.post(
            "/echo", content=chunks_of(data, 30), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.json()["type"] == "/problems/body-too-large"


def test_fastapi_content_length_over_limit() -> None:
    with TestClient(fastapi_app()) as client:
        response = client.post("/echo", json={"k": "v" * 200})
    assert response.status_code == 413


def test_fastapi_body_at_limit_passes() -> None:
    document = {"k": "v" * (LIMIT - len(b'{"k":""}'))}
    data = json.dumps(document, separators=(",", ":")).encode()
    assert len(data) == LIMIT
    with TestClient(fastapi_app()) as client:
        sized = client.post("/echo", content=data, headers={"content-type": "application/json"})
        chunked = client.post(
            "/echo", content=chunks_of(data, 7), headers={"content-type": "application/json"}
        )
    assert sized.status_code == 200
    assert sized.json() == {"keys": 1}
    assert chunked.status_code == 200


def test_streaming_response_and_lifespan_pass_through() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async def stream(request: Request) -> StreamingResponse:
        body = await request.body()

        async def parts() -> AsyncIterator[bytes]:
            for index in range(5):
                yield f"part{index}:{len(body)};".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    app = Starlette(routes=[Route("/stream", stream, methods=["POST"])], lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, limit_bytes=LIMIT)
    with TestClient(app) as client:
        assert events == ["startup"]
        with client.stream("POST", "/stream", content=b"x" * LIMIT) as response:
            parts = list(response.iter_bytes())
    assert events == ["startup", "shutdown"]
    assert response.status_code == 200
    assert b"".join(parts) == b"".join(f"part{i}:{LIMIT};".encode() for i in range(5))
