"""The HTTP ingress application.

So far it serves the built-in schema registry's Confluent-compatible read API
(so standard Avro deserializers can read payledger topics) and the health
endpoints. Run it with ``uvicorn --factory ingress.app:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ingress.registry_api import registry_routes
from ledger.config import Settings, load_settings
from ledger.registry import open_registry

READINESS_PROBE_TIMEOUT_S = 2.0

log = logging.getLogger("payledger.ingress")


async def _kafka_reachable(settings: Settings) -> bool:
    """A TCP connection to every bootstrap server; cheap enough for every probe."""
    for server in settings.bootstrap_servers().split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), READINESS_PROBE_TIMEOUT_S
            )
        except (OSError, TimeoutError, ValueError):
            return False
        writer.close()
        await writer.wait_closed()
    return True


async def _postgres_reachable(settings: Settings) -> bool:
    try:
        connection = await psycopg.AsyncConnection.connect(
            settings.dsn(), connect_timeout=int(READINESS_PROBE_TIMEOUT_S)
        )
    except psycopg.Error:
        return False
    await connection.close()
    return True


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    registry = open_registry(settings)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        kafka, postgres = await asyncio.gather(
            _kafka_reachable(settings), _postgres_reachable(settings)
        )
        ready = kafka and postgres
        return JSONResponse(
            {"status": "ready" if ready else "not-ready", "kafka": kafka, "postgres": postgres},
            status_code=200 if ready else 503,
        )

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *registry_routes(registry),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            registry.close()

    return Starlette(routes=routes, lifespan=lifespan)
