"""The HTTP ingress: merchant API, provider webhooks, schema registry, health, metrics.

``create_app(settings)`` wires everything; the lifespan opens the Postgres
pool, applies migrations, starts the Kafka producer and builds the services;
shutdown closes them in reverse. Run with
``uvicorn --factory ingress.app:create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ingress import db, idempotency
from ingress.auth import Authenticator
from ingress.batching import INGRESS_PRODUCER_LINGER_MS, CreateBatcher
from ingress.bodylimit import BodyLimitMiddleware
from ingress.customer_keys import CustomerKeys
from ingress.observability import Metrics, ObservabilityMiddleware, configure_json_logging
from ingress.payments import router as payments_router
from ingress.problems import Problem, problem_handler
from ingress.queries import router as queries_router
from ingress.ratelimit import RateLimiter
from ingress.registry_api import error_response as registry_error_response
from ingress.registry_api import registry_routes
from ingress.services import Services
from ingress.transparency import router as transparency_router
from ingress.validation import install_validation_handlers
from ingress.webhooks.routes import webhook_router
from ledger.codec import EnvelopeCodec
from ledger.config import Settings, load_settings
from ledger.envelope import utc_now
from ledger.keystore import ActiveSigner, KeyStore
from ledger.publisher import Publisher, producer_options
from ledger.registry import open_registry
from ledger.sealing import open_master_key

READINESS_PROBE_TIMEOUT_S = 2.0
_REGISTRY_PREFIXES = ("/schemas", "/subjects", "/config")
IDEMPOTENCY_PURGE_INTERVAL_S = 600.0

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


async def _postgres_reachable(svc: Services) -> bool:
    try:
        async with asyncio.timeout(READINESS_PROBE_TIMEOUT_S):
            async with svc.pool.connection() as connection:
                await connection.execute("SELECT 1")
    except Exception:  # any failure means not ready; the probe must answer, not raise
        return False
    return True


async def _purge_idempotency_keys(svc: Services) -> None:
    while True:
        await asyncio.sleep(IDEMPOTENCY_PURGE_INTERVAL_S)
        try:
            async with svc.pool.connection() as connection:
                await idempotency.purge_expired(connection)
        except Exception:
            log.exception("purging expired idempotency keys failed; will retry")


def create_app(
    settings: Settings | None = None, *, clock: Callable[[], datetime] = utc_now
) -> FastAPI:
    settings = settings or load_settings()
    configure_json_logging()
    registry = open_registry(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.migrate(settings.dsn())
        pool = db.open_pool(settings)
        await pool.open()
        store = KeyStore(settings)
        producer = AIOKafkaProducer(
            **producer_options(settings, client_id="payledger-ingress")
            | {"linger_ms": INGRESS_PRODUCER_LINGER_MS}
        )
        publisher = Publisher(
            settings,
            EnvelopeCodec(registry),
            ActiveSigner(store, clock),
            producer,
            source="/payledger/ingress",
        )
        await publisher.start()
        master_key = open_master_key(settings)
        svc = Services(
            settings=settings,
            pool=pool,
            publisher=publisher,
            authenticator=Authenticator(pool),
            rate_limiter=RateLimiter(),
            customer_keys=CustomerKeys(pool, master_key),
            clock=clock,
        )
        svc.creates = CreateBatcher(svc)
        svc.tasks.append(asyncio.create_task(_purge_idempotency_keys(svc)))
        app.state.services = svc
        try:
            yield
        finally:
            for task in svc.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await svc.creates.close()
            await publisher.stop()
            await pool.close()
            master_key.close()
            store.close()
            registry.close()

    app = FastAPI(
        title="payledger ingress",
        version="0.1.0",
        summary="Merchant intents and provider webhooks for an event-sourced payment ledger",
        lifespan=lifespan,
    )

    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(request: Request) -> JSONResponse:
        svc: Services = request.app.state.services
        kafka, postgres = await asyncio.gather(_kafka_reachable(settings), _postgres_reachable(svc))
        ready = kafka and postgres
        return JSONResponse(
            {"status": "ready" if ready else "not-ready", "kafka": kafka, "postgres": postgres},
            status_code=200 if ready else 503,
        )

    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["operations"])
    app.add_api_route("/readyz", readyz, methods=["GET"], tags=["operations"])
    app.add_api_route("/metrics", prometheus, methods=["GET"], tags=["operations"])
    app.include_router(payments_router)
    app.include_router(queries_router)
    app.include_router(transparency_router)
    _include_webhooks(app, settings, clock)
    for route in registry_routes(registry):
        app.router.routes.append(route)

    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit_bytes=settings.request_body_bytes_max)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as a problem document (Confluent's error body on registry paths)."""

    async def http_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith(_REGISTRY_PREFIXES):
            # Registry clients expect Confluent's error body on every registry
            # path, including methods and paths no registry route matched.
            return registry_error_response(
                exc.status_code, exc.status_code, str(exc.detail or "HTTP error")
            )
        titles = {404: "Not found", 405: "Method not allowed"}
        problem = Problem(
            exc.status_code,
            "not-found" if exc.status_code == 404 else f"http-{exc.status_code}",
            titles.get(exc.status_code, "HTTP error"),
            headers=exc.headers,
        )
        return problem.response(instance=request.url.path)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # A bug, not a bad request: logged with its traceback, answered as a
        # problem document that says nothing about the internals.
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return Problem(500, "internal-error", "Internal error").response(request.url.path)

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(Problem, problem_handler)
    install_validation_handlers(app)
    app.add_exception_handler(StarletteHTTPException, http_problem)


def _include_webhooks(app: FastAPI, settings: Settings, clock: Callable[[], datetime]) -> None:
    """Provider webhook endpoints; their dependencies come from the services at request time."""
    app.include_router(webhook_router(settings=settings, clock=clock))
