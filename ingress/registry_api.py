"""The schema registry's Confluent-compatible read API, as Starlette routes.

Serves, at the root paths Confluent clients expect, the part of the Confluent Schema Registry
REST API that consumers use: schemas by id, subjects, versions and the global config.
Writes are not served here; producers register through ``ledger.registry`` directly.

Replies are JSON with Confluent's content type, and errors are Confluent's
``{"error_code": ..., "message": ...}`` with its codes, so Confluent's own clients and
deserializers can read them. Bad input is always a 4xx, never a 500.

The routes are self-contained (``registry_routes``) so the main ingress app can mount them;
``create_registry_app`` wraps them in an app of their own for tests and standalone use.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Literal

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.errors import SchemaError, UnknownSchemaError
from ledger.registry import SCHEMA_ID_MAX, RegisteredSchema, SchemaRegistry

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"

# Confluent's error codes (io.confluent.kafka.schemaregistry.rest.exceptions).
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
INVALID_VERSION = 42202
STORE_ERROR = 50001

# The global compatibility level. Backward-transitive evolution is what the schemas in
# schemas/ are held to (tests/unit/test_schema_evolution.py).
COMPATIBILITY_LEVEL = "BACKWARD_TRANSITIVE"

_DIGITS = re.compile(r"[0-9]{1,10}")  # ASCII only: int() would also accept "٣" or " 3"

_log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


class ConfluentJSONResponse(JSONResponse):
    media_type = MEDIA_TYPE


class _ApiError(Exception):
    """An error reply in Confluent's form, raised by handlers and rendered by ``_endpoint``."""

    def __init__(self, status_code: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message


def error_response(status_code: int, error_code: int, message: str) -> Response:
    return ConfluentJSONResponse(
        {"error_code": error_code, "message": message}, status_code=status_code
    )


def registry_routes(registry: SchemaRegistry) -> list[Route]:
    """The read API over ``registry``. Registry calls run in the threadpool: they may read
    files or, for an external registry, the network."""

    @_endpoint
    async def schema_types(request: Request) -> Response:
        return ConfluentJSONResponse(["AVRO"])

    @_endpoint
    async def schema_by_id(request: Request) -> Response:
        # Confluent also sends "schemaType", but only for types other than AVRO.
        return ConfluentJSONResponse({"schema": await _schema_text(registry, request)})

    @_endpoint
    async def raw_schema_by_id(request: Request) -> Response:
        return Response(await _schema_text(registry, request), media_type=MEDIA_TYPE)

    @_endpoint
    async def subjects(request: Request) -> Response:
        return ConfluentJSONResponse(await run_in_threadpool(registry.subjects))

    @_endpoint
    async def versions(request: Request) -> Response:
        subject = request.path_params["subject"]
        return ConfluentJSONResponse(await run_in_threadpool(_versions, registry, subject))

    @_endpoint
    async def subject_version(request: Request) -> Response:
        found = await _registered(registry, request)
        return ConfluentJSONResponse(
            {
                "subject": found.subject,
                "version": found.version,
                "id": found.schema_id,
                "schema": found.schema,
            }
        )

    @_endpoint
    async def raw_subject_version(request: Request) -> Response:
        found = await _registered(registry, request)
        return Response(found.schema, media_type=MEDIA_TYPE)

    @_endpoint
    async def config(request: Request) -> Response:
        return ConfluentJSONResponse({"compatibilityLevel": COMPATIBILITY_LEVEL})

    # Subjects use the path convertor so a subject sent as "a%2Fb" still matches.
    subject = "/subjects/{subject:path}/versions"
    return [
        Route("/schemas/types", schema_types, methods=["GET"]),
        Route("/schemas/ids/{schema_id}", schema_by_id, methods=["GET"]),
        Route("/schemas/ids/{schema_id}/schema", raw_schema_by_id, methods=["GET"]),
        Route("/subjects", subjects, methods=["GET"]),
        Route(subject, versions, methods=["GET"]),
        Route(subject + "/{version}", subject_version, methods=["GET"]),
        Route(subject + "/{version}/schema", raw_subject_version, methods=["GET"]),
        Route("/config", config, methods=["GET"]),
    ]


def create_registry_app(registry: SchemaRegistry) -> Starlette:
    """The read API as an app of its own; unknown paths and methods get Confluent errors too."""
    return Starlette(
        routes=registry_routes(registry),
        exception_handlers={HTTPException: _http_exception},
    )


def _endpoint(handler: Endpoint) -> Endpoint:
    """Render ``_ApiError`` and registry failures as Confluent error replies."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except _ApiError as error:
            return error_response(error.status_code, error.error_code, error.message)
        except UnknownSchemaError as error:
            # Only reached if the registry changed between two calls of one request.
            return error_response(404, SCHEMA_NOT_FOUND, str(error))
        except SchemaError as error:
            # Not the client's fault: a damaged store, or an external registry that is down.
            _log.error("schema registry failed on %s: %s", request.url.path, error)
            return error_response(500, STORE_ERROR, f"Error in the backend data store: {error}")

    return endpoint


async def _schema_text(registry: SchemaRegistry, request: Request) -> str:
    raw = request.path_params["schema_id"]
    schema_id = _positive_int(raw)
    if schema_id is None:
        raise _ApiError(404, SCHEMA_NOT_FOUND, f"Schema {raw} not found")
    try:
        return await run_in_threadpool(registry.schema_by_id, schema_id)
    except UnknownSchemaError:
        raise _ApiError(404, SCHEMA_NOT_FOUND, f"Schema {schema_id} not found") from None


async def _registered(registry: SchemaRegistry, request: Request) -> RegisteredSchema:
    subject = request.path_params["subject"]
    version = _version(request.path_params["version"])
    return await run_in_threadpool(_lookup, registry, subject, version)


def _versions(registry: SchemaRegistry, subject: str) -> list[int]:
    try:
        return registry.versions(subject)
    except UnknownSchemaError:
        raise _ApiError(404, SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.") from None


def _lookup(
    registry: SchemaRegistry, subject: str, version: int | Literal["latest"]
) -> RegisteredSchema:
    # The Protocol has one error for "unknown"; asking for the versions first tells a
    # missing subject (40401) from a missing version (40402), as Confluent does.
    known = _versions(registry, subject)
    if version != "latest" and version not in known:
        raise _ApiError(404, VERSION_NOT_FOUND, f"Version {version} not found.")
    try:
        return registry.get_version(subject, version)
    except UnknownSchemaError:
        raise _ApiError(404, VERSION_NOT_FOUND, f"Version {version} not found.") from None


def _version(raw: str) -> int | Literal["latest"]:
    """A version as Confluent accepts it: 1 to 2^31-1, "latest", or -1 meaning latest."""
    if raw in ("latest", "-1"):
        return "latest"
    version = _positive_int(raw)
    if version is None:
        raise _ApiError(
            422,
            INVALID_VERSION,
            f"The specified version '{raw}' is not a valid version id. "
            'Allowed values are between [1, 2^31-1] and the string "latest"',
        )
    return version


def _positive_int(raw: str) -> int | None:
    if not _DIGITS.fullmatch(raw):
        return None
    value = int(raw)
    return value if 1 <= value <= SCHEMA_ID_MAX else None


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ConfluentJSONResponse(
        {"error_code": exc.status_code, "message": f"HTTP {exc.status_code} {exc.detail}"},
        status_code=exc.status_code,
        headers=exc.headers,
    )
