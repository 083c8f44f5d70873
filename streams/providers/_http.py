"""What the httpx-based adapters share: one client shape, bounded reads, error classification."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ledger import limits
from ledger.envelope import Provider
from streams.providers.base import (
    FailureKind,
    Operation,
    ProviderError,
    kind_for_status,
    parse_retry_after,
)

# Pulls (provider code, message) out of a provider's error body.
Describe = Callable[[Any], tuple[str | None, str | None]]


def new_client(
    base_url: str,
    timeout_s: float,
    connect_timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        # A redirect from a payment API is a misconfiguration, not a hint to
        # send credentials and money somewhere else.
        follow_redirects=False,
        transport=transport,
    )


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: httpx.Headers
    document: Any  # parsed JSON, or None for an empty body


def transport_failure(provider: Provider, operation: Operation, exc: Exception) -> ProviderError:
    """A request that got no complete answer: always retryable."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(provider, operation, FailureKind.TIMEOUT, f"timed out: {exc!r}")
    return ProviderError(provider, operation, FailureKind.CONNECTION, f"no answer: {exc!r}")


async def read_limited(response: httpx.Response) -> bytes:
    """The body, refused past PROVIDER_RESPONSE_BYTES_MAX while it arrives."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limits.PROVIDER_RESPONSE_BYTES_MAX:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _TooLarge(Exception):
    pass


async def send(
    client: httpx.AsyncClient,
    provider: Provider,
    operation: Operation,
    method: str,
    url: str,
    *,
    describe: Describe,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    form: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> Reply:
    """One request; a 2xx JSON reply, or ProviderError classified by what happened."""
    request = client.build_request(method, url, headers=headers, json=json_body, data=form)
    try:
        response = await client.send(
            request, stream=True, auth=httpx.BasicAuth(*auth) if auth is not None else None
        )
    except httpx.TransportError as exc:
        raise transport_failure(provider, operation, exc) from exc
    try:
        body = await read_limited(response)
    except _TooLarge:
        raise ProviderError(
            provider,
            operation,
            FailureKind.BAD_RESPONSE,
            f"response larger than {limits.PROVIDER_RESPONSE_BYTES_MAX} bytes",
            status_code=response.status_code,
        ) from None
    except httpx.TransportError as exc:
        raise transport_failure(provider, operation, exc) from exc
    finally:
        await response.aclose()
    document = _parse(body)
    if response.status_code >= 400:
        code, message = describe(document)
        raise ProviderError(
            provider,
            operation,
            kind_for_status(response.status_code),
            message or body[:200].decode(errors="replace") or response.reason_phrase,
            status_code=response.status_code,
            provider_code=code,
            retry_after_s=parse_retry_after(response.headers.get("retry-after")),
        )
    if not 200 <= response.status_code < 300:
        # 1xx never reaches us; 3xx is a redirect we do not follow.
        raise ProviderError(
            provider,
            operation,
            FailureKind.BAD_RESPONSE,
            f"unexpected HTTP {response.status_code}",
            status_code=response.status_code,
        )
    if body and document is _NOT_JSON:
        raise ProviderError(
            provider,
            operation,
            FailureKind.BAD_RESPONSE,
            "the response is not JSON",
            status_code=response.status_code,
        )
    return Reply(response.status_code, response.headers, None if not body else document)


_NOT_JSON = object()


def _parse(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return _NOT_JSON


def node_at(document: Any, *path: str | int) -> Any:
    """The value at ``path`` inside nested JSON, or None when any step is missing."""
    node = document
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or not -len(node) <= step < len(node):
                return None
            node = node[step]
        else:
            if not isinstance(node, dict):
                return None
            node = node.get(step)
    return node


def text_at(document: Any, *path: str | int) -> str | None:
    """The string at ``path`` inside nested JSON, or None."""
    node = node_at(document, *path)
    return node if isinstance(node, str) and node else None
