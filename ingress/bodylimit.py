"""A request body limit, enforced before and while the body is read.

``BodyLimitMiddleware`` is pure ASGI, so it sees every request before any
framework code buffers a byte of it:

- a ``Content-Length`` above the limit is answered 413 at once, without
  reading the body (a client that sent ``Expect: 100-continue`` is never told
  to send it);
- a body without a length (chunked, streamed) is counted as it arrives; the
  chunk that crosses the limit is never handed to the application, which gets
  an exception from ``receive()`` instead, and the client gets 413. Nothing is
  buffered here, so memory stays bounded by what the server hands over.

Both 413s are ``application/problem+json`` and close the connection, since
the rest of the body is never read. Lifespan and websocket scopes, and every
response message of an accepted request (streaming ones included), pass
through untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingress.problems import Problem
from ledger import limits

# Longer than this (leading zeros aside) and a Content-Length is larger than
# any limit we allow; comparing lengths first keeps int() cheap on hostile input.
_LENGTH_DIGITS_MAX = len(str(limits.REQUEST_BODY_BYTES_CEILING))
_LARGER_THAN_ANY_LIMIT = limits.REQUEST_BODY_BYTES_CEILING + 1


class RequestBodyTooLarge(Exception):
    """Raised by ``receive()`` to the application once the body passed the limit."""


class _InvalidContentLength(Exception):
    pass


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length, ``None`` if absent; capped just above any allowed limit."""
    values: set[bytes] = {
        value for name, value in scope["headers"] if name.lower() == b"content-length"
    }
    if not values:
        return None
    if len(values) > 1:
        # Two different lengths: the framing is ambiguous (RFC 9112 §6.3).
        raise _InvalidContentLength
    (value,) = values
    value = value.strip()
    if not value.isdigit():  # bytes.isdigit() is ASCII digits only; no sign, no space
        raise _InvalidContentLength
    value = value.lstrip(b"0") or b"0"
    if len(value) > _LENGTH_DIGITS_MAX:
        return _LARGER_THAN_ANY_LIMIT
    return int(value)


def _too_large(limit_bytes: int) -> Problem:
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"The request body may be at most {limit_bytes} bytes.",
        # The rest of the body stays unread, so the connection cannot carry
        # another request.
        headers={"Connection": "close"},
        limit_bytes=limit_bytes,
    )


class _Guard:
    """Counts one request's body and stands between the application and the client."""

    def __init__(self, limit_bytes: int, receive: Receive, send: Send, scope: Scope) -> None:
        self.limit_bytes = limit_bytes
        self.scope = scope
        self._receive = receive
        self._send = send
        self.received_bytes = 0
        self.exceeded = False
        self.response_started = False  # the application's response reached the client
        self.answered = False  # our 413 went out instead

    async def receive(self) -> Message:
        if self.exceeded:
            raise RequestBodyTooLarge
        message = await self._receive()
        if message["type"] == "http.request":
            self.received_bytes += len(message.get("body", b""))
            if self.received_bytes > self.limit_bytes:
                self.exceeded = True
                raise RequestBodyTooLarge
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the rest of a response we replaced
        if message["type"] == "http.response.start":
            if self.exceeded:
                # The application answered the cut-off body itself (FastAPI
                # turns any error while reading it into a 400): say what
                # actually happened instead.
                await self.answer_too_large()
                return
            self.response_started = True
        await self._send(message)

    async def answer_too_large(self) -> None:
        self.answered = True
        response = _too_large(self.limit_bytes).response(instance=self.scope.get("path"))
        await response(self.scope, self._receive, self._send)


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``limit_bytes`` with a 413 problem.

    Install it outside anything that reads the body:
    ``app.add_middleware(BodyLimitMiddleware, limit_bytes=settings.request_body_bytes_max)``.
    """

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        if not 0 <= limit_bytes <= limits.REQUEST_BODY_BYTES_CEILING:
            raise ValueError(
                f"limit_bytes must be 0 to {limits.REQUEST_BODY_BYTES_CEILING}, got {limit_bytes}"
            )
        self.app = app
        self.limit_bytes = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = _declared_length(scope)
        except _InvalidContentLength:
            problem = Problem(
                400,
                "invalid-content-length",
                "Invalid Content-Length",
                "Content-Length must be one non-negative decimal integer.",
                headers={"Connection": "close"},
            )
            await problem.response(instance=scope.get("path"))(scope, receive, send)
            return
        if declared is not None and declared > self.limit_bytes:
            guard = _Guard(self.limit_bytes, receive, send, scope)
            await guard.answer_too_large()
            return

        guard = _Guard(self.limit_bytes, receive, send, scope)
        try:
            await self.app(scope, guard.receive, guard.send)
        except Exception:
            # Whatever the application raised after its body was cut off
            # (RequestBodyTooLarge itself, or an error made of it, possibly in
            # an ExceptionGroup) comes from the cut: answer 413 for it. Once
            # its response has started nothing can be said any more, and the
            # server's abort of the connection is the answer.
            if not guard.exceeded or guard.response_started:
                raise
        if guard.exceeded and not guard.response_started and not guard.answered:
            await guard.answer_too_large()
