"""Property-based fuzzing of the running ingress with schemathesis, over real HTTP.

The app is served by uvicorn with its lifespan on, so real Kafka and Postgres
sit behind every request. The OpenAPI 3.1 document is loaded from the live
``/openapi.json`` and every operation in it is exercised in schemathesis's
examples, coverage and fuzzing phases, with valid (positive) and invalid
(negative) inputs. For every response:

- no 5xx, ever (schemathesis's ``not_a_server_error``): the case fails at
  once, is shrunk, and the failure shows the reproducing ``curl`` command and
  what the server logged for that request (tracebacks included);
- every 4xx is ``application/problem+json`` with a matching ``status``,
  except on the schema registry's Confluent-compatible API, where it is
  Confluent's ``application/vnd.schemaregistry.v1+json`` with ``error_code``
  and ``message``. These are collected (first reproduction of each kind) and
  reported when the run ends, so they never cut the search for 5xx short.

Three runs:

1. ``test_authenticated``: the served document, with a valid API key and a
   fresh ``Idempotency-Key`` on every case (so idempotency never turns a case
   into a replay). For capture/cancel/refund, a stable slice of the valid
   cases addresses a payment that exists (so they get past the 404), and a
   smaller one carries a NUL in the payment id, which schemathesis itself
   never puts into a path parameter.
2. ``test_without_credentials``: the served document again, smaller, with no
   credentials: the merchant API must answer 4xx (401, or 400/404/405/413
   before authentication), never 2xx or 5xx.
3. ``test_undocumented_surface``: what the served document does not describe,
   from a document written here: the schema registry's read API (Starlette
   routes, absent from ``/openapi.json``) and the webhook endpoints with
   provider-shaped JSON bodies and signature headers. Most Stripe and
   Coinbase cases are signed with the configured test secret, so their
   bodies reach the event normalizer and the Kafka publish.

A fuzz dictionary of hostile strings (NUL, separators, path/SQL/format-string
look-alikes) is bound to path parameters and body fields that end up in
Postgres or Kafka. Generation is derandomized (``derandomize=True``), so a
failure reproduces in CI. Case counts per operation, status and phase are
printed when the module ends.

Run (the session fixture starts Kafka, Postgres and SoftHSM2 if needed)::

    .venv/bin/python -m pytest tests/integration/test_openapi_fuzz.py
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import settings
from psycopg import sql
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup, as_reported_failure
from schemathesis.core.result import Err
from schemathesis.pytest.lazy import get_all_tests

from anchoring.pgstore import migrate as migrate_anchoring
from ingress.app import create_app
from ingress.merchants import add_api_key, create_merchant
from ledger import limits
from ledger.config import Settings
from projections.migrations import migrate as migrate_projections
from streams.provision import provision_topics
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"
CONFLUENT_JSON = "application/vnd.schemaregistry.v1+json"
REGISTRY_PATHS = ("/schemas", "/subjects", "/config")
MERCHANT_API = "/v1/payments"

STRIPE_SECRET = "whsec_fuzz_test_secret"
COINBASE_SECRET = "cbc_fuzz_test_secret"
PAYPAL_WEBHOOK_ID = "FUZZ0WEBHOOK0ID"

# Hypothesis budgets for the fuzzing phase, per operation. The coverage and
# examples phases add their own deterministic cases on top (see the summary).
AUTHENTICATED_MAX_EXAMPLES = 250
ANONYMOUS_MAX_EXAMPLES = 50
UNDOCUMENTED_MAX_EXAMPLES = 250
# Every operation with inputs must have been exercised at least this often in
# a run; one without (GET /healthz) has a handful of distinct requests at most.
MIN_CASES_PER_OPERATION = {"authenticated": 200, "anonymous": 50, "undocumented": 200}
MIN_CASES_WITHOUT_INPUTS = 5

FUZZ_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
}


# --- the live server and what it logs ---------------------------------------------------------


class ServerLog(logging.Handler):
    """Warnings and errors the server logs (with tracebacks), collected per case."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock:
            self._lines.append(line)

    def take(self) -> str:
        with self._lock:
            lines, self._lines = self._lines, []
        return "\n".join(lines)


@dataclass(repr=False)
class Live:
    url: str
    settings: Settings
    api_key: str
    payment_id: str
    log: ServerLog
    # (run, operation label) -> cases; (run, operation label, status) -> responses
    cases: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    phases: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # Error responses of the wrong type, first reproduction of each distinct
    # (run, operation, status, content type): reported after the run, so they
    # do not stop the search for server errors.
    mistyped: dict[tuple[str, str, int, str], str] = field(default_factory=dict)

    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing case
        return f"Live({self.url})"


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        topic_prefix=f"z{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path,
        # The query routes read a projections schema of this module's own.
        projections_schema=f"fuzz_{uuid.uuid4().hex[:10]}",
        # The transparency routes read an (empty) anchoring log of its own.
        anchoring_schema=f"fuzzlog_{uuid.uuid4().hex[:10]}",
        # The fuzzing merchant must not be throttled into a wall of 429s.
        rate_limit_per_s=limits.RATE_LIMIT_PER_S_CEILING,
        rate_limit_burst=limits.RATE_LIMIT_BURST_CEILING,
        stripe_webhook_secrets=[STRIPE_SECRET],
        coinbase_webhook_secrets=[COINBASE_SECRET],
        # Configured, so PayPal deliveries get past "not configured" into the
        # header checks (a certificate is fetched only for a transmission
        # time within minutes of now, which the fuzzer does not produce).
        paypal_webhook_ids=[PAYPAL_WEBHOOK_ID],
    )


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Live]:
    settings = _settings(tmp_path_factory.mktemp("fuzz"))
    assert asyncio.run(provision_topics(settings)).ok
    asyncio.run(migrate_projections(settings.dsn(), settings.projections_schema))
    with psycopg.connect(settings.dsn(), autocommit=True) as connection:
        migrate_anchoring(connection, settings.anchoring_schema)
    request.addfinalizer(lambda: _drop_schema(settings))
    merchant_id = f"m_fuzz_{uuid.uuid4().hex[:12]}"
    asyncio.run(
        create_merchant(
            settings,
            merchant_id,
            "Fuzz shop",
            rate_per_s=limits.RATE_LIMIT_PER_S_CEILING,
            burst=limits.RATE_LIMIT_BURST_CEILING,
        )
    )
    api_key = asyncio.run(add_api_key(settings, merchant_id)).token
    log = ServerLog()
    # "uvicorn.error" (tracebacks of unhandled exceptions) propagates to "uvicorn".
    loggers = [logging.getLogger(name) for name in ("payledger", "uvicorn")]
    with serve_in_thread(create_app(settings), lifespan="on") as url:
        # After uvicorn configured its logging, which would drop a handler added earlier.
        for logger in loggers:
            logger.addHandler(log)
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                created = client.post(
                    MERCHANT_API,
                    json={
                        "provider": "stripe",
                        "amount_minor": settings.amount_minor_max,
                        "currency": "EUR",
                        "capture_method": "manual",
                    },
                    headers={
                        "Authorization": f"Bearer {api_key}",
                        "Idempotency-Key": f"fuzz-setup-{uuid.uuid4().hex}",
                    },
                )
            assert created.status_code == 202, created.text
            state = Live(url, settings, api_key, created.json()["payment_id"], log)
            yield state
        finally:
            for logger in loggers:
                logger.removeHandler(log)
    _report(request, state)


def _drop_schema(settings: Settings) -> None:
    with psycopg.connect(settings.dsn(), autocommit=True) as connection:
        for schema in (settings.projections_schema, settings.anchoring_schema):
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


def _report(request: pytest.FixtureRequest, state: Live) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not state.cases:
        return
    with capture.global_and_fixture_disabled():
        _write_summary(reporter, state)


def _write_summary(reporter: Any, state: Live) -> None:
    reporter.write_line("")
    reporter.write_line("schemathesis cases per operation (run, operation: cases; statuses)")
    for (run, label), count in sorted(state.cases.items()):
        statuses = sorted(
            (status, n)
            for (r, lab, status), n in state.statuses.items()
            if (r, lab) == (run, label)
        )
        phases = sorted(
            (p, n) for (r, lab, p), n in state.phases.items() if (r, lab) == (run, label)
        )
        reporter.write_line(
            f"  {run:13} {label:50} {count:5}  "
            + " ".join(f"{s}x{n}" for s, n in statuses)
            + "  ["
            + " ".join(f"{p}={n}" for p, n in phases)
            + "]"
        )
    total = sum(state.cases.values())
    reporter.write_line(f"  total: {total} cases")


# --- schemas ----------------------------------------------------------------------------------


# A fuzz dictionary: strings that break things which random text rarely
# produces (a NUL, which Postgres text refuses; separators; look-alikes of
# paths, SQL and format strings). schemathesis puts them, now and then, into
# the values bound below: in positive cases where the schema allows them, in
# negative ones where it does not. Bound to path and body values only: in a
# header most of them are not valid HTTP, and the client would refuse to send.
HOSTILE_STRINGS = [
    "\x00",
    "pay_\x00",
    "evt_\x00",
    "\u2028",
    "\ufeff",
    "\U0001f4b3",
    "%00",
    "../../etc/passwd",
    "' OR '1'='1",
    "%s%n%x",
    "\\",
]


HOSTILE_BINDINGS = {
    "path.payment_id": 0.2,
    "path.subject": 0.1,
    "body.description": 0.1,
    "body.reason": 0.1,
    "body.customer.reference": 0.1,
    "body.id": 0.1,  # Stripe and PayPal event ids
    "body.event.id": 0.1,  # Coinbase event ids
    "body.data.object.id": 0.1,  # Stripe object ids
}


def _config(live: Live) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "base-url": live.url,
            "request-timeout": 30,
            # Not asked for here, and the ingress has no links between operations.
            "phases": {"stateful": {"enabled": False}},
            "dictionaries": {"hostile": {"values": HOSTILE_STRINGS}},
            "generation": {
                "mode": "all",
                "deterministic": True,
                "database": "none",
            },
            "parameters": {
                name: {"dictionary": "hostile", "probability": probability}
                for name, probability in HOSTILE_BINDINGS.items()
            },
            "warnings": False,
        }
    )


@pytest.fixture(scope="module")
def served_schema(live: Live) -> schemathesis.BaseSchema:
    """The document the running app serves, loaded from its URL."""
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=_config(live))


@pytest.fixture(scope="module")
def undocumented_schema(live: Live) -> schemathesis.BaseSchema:
    """The document written below, with the registry's live subjects as likely subject values."""
    subjects = httpx.get(f"{live.url}/subjects", timeout=30).json()
    assert subjects, "the setup payment should have registered schemas"
    document = json.loads(json.dumps(UNDOCUMENTED))
    for item in document["paths"].values():
        for parameter in item.get("get", {}).get("parameters", []):
            if parameter["name"] == "subject":
                parameter["schema"] = {"anyOf": [{"enum": subjects}, parameter["schema"]]}
    return schemathesis.openapi.from_dict(document, config=_config(live))


def _confluent(description: str) -> dict[str, Any]:
    return {"description": description, "content": {CONFLUENT_JSON: {"schema": {}}}}


def _registry_operation(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "tags": ["schema-registry"],
            "parameters": list(parameters),
            "responses": {
                "200": _confluent("Found"),
                "404": _confluent("Unknown subject, version or schema (40401/40402/40403)"),
                "422": _confluent("Invalid version (42202)"),
            },
        }
    }


_SCHEMA_ID = {
    "name": "schema_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_SUBJECT = {
    "name": "subject",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"anyOf": [{"type": "integer", "minimum": -1}, {"enum": ["latest"]}]},
}
_TEXT = {"type": "string"}
_EVENT_ID = {"type": "string", "minLength": 1, "maxLength": 80}
_EVENT_TYPE = {"type": "string", "pattern": r"^[a-z_]{1,20}(\.[a-z_]{1,20}){0,3}$"}
_CURRENCY = {
    "anyOf": [{"enum": ["usd", "eur", "jpy", "mga", "bhd", "isk", "ugx", "EUR", "XXX"]}, _TEXT]
}


def _header(name: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}


def _webhook_operation(summary: str, body: dict[str, Any], *headers: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": ["webhooks"],
            "parameters": [_header(name) for name in headers],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {"description": "Recorded or duplicate"},
                "400": {
                    "description": "Verification failed or malformed",
                    "content": {PROBLEM_JSON: {}},
                },
                "413": {"description": "Body too large", "content": {PROBLEM_JSON: {}}},
            },
        }
    }


_STRIPE_EVENT = {
    "type": "object",
    "properties": {
        "id": _EVENT_ID,
        "type": _EVENT_TYPE,
        "created": {"type": "integer"},
        "livemode": {"type": "boolean"},
        "api_version": _TEXT,
        "data": {
            "type": "object",
            "properties": {
                "object": {
                    "type": "object",
                    "properties": {
                        "id": _TEXT,
                        "object": _TEXT,
                        "status": _TEXT,
                        "amount": {"type": "integer"},
                        "currency": _CURRENCY,
                        "payment_intent": _TEXT,
                        "amount_received": {"type": "integer"},
                        "amount_capturable": {"type": "integer"},
                        "amount_refunded": {"type": "integer"},
                        "failure_code": _TEXT,
                        "last_payment_error": {"type": "object", "properties": {"code": _TEXT}},
                        "metadata": {
                            "type": "object",
                            "properties": {"payledger_payment_id": _TEXT},
                        },
                        "balance_transaction": {
                            "type": "object",
                            "properties": {"fee": {"type": "integer"}, "currency": _CURRENCY},
                        },
                    },
                }
            },
        },
    },
    "required": ["id", "type", "data"],
}
_DECIMAL = {"anyOf": [{"type": "string", "pattern": r"^-?[0-9]{1,20}(\.[0-9]{1,20})?$"}, _TEXT]}
_COINBASE_DELIVERY = {
    "type": "object",
    "properties": {
        "id": _TEXT,
        "event": {
            "type": "object",
            "properties": {
                "id": _EVENT_ID,
                "type": _EVENT_TYPE,
                "created_at": {"anyOf": [{"type": "string", "format": "date-time"}, _TEXT]},
                "api_version": _TEXT,
                "data": {
                    "type": "object",
                    "properties": {
                        "id": _TEXT,
                        "code": _TEXT,
                        "metadata": {"type": "object", "properties": {"payment_id": _TEXT}},
                        "timeline": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"status": _TEXT, "context": _TEXT},
                            },
                        },
                        "payments": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "network": _TEXT,
                                    "value": {
                                        "type": "object",
                                        "properties": {
                                            "crypto": {
                                                "type": "object",
                                                "properties": {
                                                    "amount": _DECIMAL,
                                                    "currency": _TEXT,
                                                },
                                            }
                                        },
                                    },
                                },
                            },
                        },
                        "pricing": {
                            "type": "object",
                            "properties": {
                                "local": {
                                    "type": "object",
                                    "properties": {"amount": _DECIMAL, "currency": _CURRENCY},
                                }
                            },
                        },
                    },
                },
            },
            "required": ["id", "type"],
        },
    },
    "required": ["event"],
}
_PAYPAL_EVENT = {
    "type": "object",
    "properties": {
        "id": _EVENT_ID,
        "event_type": _EVENT_TYPE,
        "resource_type": _TEXT,
        "event_version": _TEXT,
        "resource": {
            "type": "object",
            "properties": {
                "id": _TEXT,
                "status": _TEXT,
                "custom_id": _TEXT,
                "amount": {
                    "type": "object",
                    "properties": {"value": _DECIMAL, "currency_code": _CURRENCY},
                },
            },
        },
    },
    "required": ["id", "event_type"],
}

# What /openapi.json leaves out: the registry's Confluent read API (Starlette
# routes mounted next to FastAPI's) and the webhooks' bodies and signature
# headers (the endpoints read the raw body themselves).
UNDOCUMENTED: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "payledger ingress: registry and webhook bodies", "version": "0.1.0"},
    "paths": {
        "/schemas/types": _registry_operation("Schema types"),
        "/schemas/ids/{schema_id}": _registry_operation("Schema by id", _SCHEMA_ID),
        "/schemas/ids/{schema_id}/schema": _registry_operation("Raw schema by id", _SCHEMA_ID),
        "/subjects": _registry_operation("Subjects"),
        "/subjects/{subject}/versions": _registry_operation("Versions of a subject", _SUBJECT),
        "/subjects/{subject}/versions/{version}": _registry_operation(
            "One version of a subject", _SUBJECT, _VERSION
        ),
        "/subjects/{subject}/versions/{version}/schema": _registry_operation(
            "Raw schema of one version", _SUBJECT, _VERSION
        ),
        "/config": _registry_operation("Global compatibility level"),
        "/v1/webhooks/stripe": _webhook_operation(
            "Stripe delivery", _STRIPE_EVENT, "Stripe-Signature"
        ),
        "/v1/webhooks/coinbase": _webhook_operation(
            "Coinbase Commerce delivery", _COINBASE_DELIVERY, "X-CC-Webhook-Signature"
        ),
        "/v1/webhooks/paypal": _webhook_operation(
            "PayPal delivery",
            _PAYPAL_EVENT,
            "PAYPAL-TRANSMISSION-ID",
            "PAYPAL-TRANSMISSION-TIME",
            "PAYPAL-TRANSMISSION-SIG",
            "PAYPAL-CERT-URL",
            "PAYPAL-AUTH-ALGO",
        ),
    },
}


# --- checks -----------------------------------------------------------------------------------


def _is_registry(path: str) -> bool:
    return path.startswith(REGISTRY_PATHS)


def errors_are_typed(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 4xx is RFC 9457 problem JSON; from the schema registry, Confluent's error JSON."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = _content_type(response)
    expected = CONFLUENT_JSON if _is_registry(case.operation.path) else PROBLEM_JSON
    if content_type != expected:
        raise AssertionError(
            f"{response.status_code} answered with Content-Type {content_type!r}, expected {expected!r}"
        )
    try:
        document = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(f"{response.status_code} body is not JSON: {error}") from None
    if expected == PROBLEM_JSON:
        if not (isinstance(document, dict) and document.get("status") == response.status_code):
            raise AssertionError("problem body lacks a 'status' equal to the response's status")
    elif not (isinstance(document, dict) and {"error_code", "message"} <= document.keys()):
        raise AssertionError("registry error body lacks Confluent's 'error_code' and 'message'")
    return None


def merchant_api_needs_credentials(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Without credentials the merchant API answers 4xx only, whatever was sent."""
    if case.operation.path.startswith(MERCHANT_API) and not 400 <= response.status_code < 500:
        raise AssertionError(
            f"the merchant API answered {response.status_code} to a request without credentials"
        )
    return None


# Checked on every response, failing the case at once (and shrinking it).
CHECKS = [not_a_server_error]


# --- running one case -------------------------------------------------------------------------


def _phase(case: schemathesis.Case) -> str:
    meta = case.meta
    if meta is None:
        return "unknown"
    return f"{meta.phase.name.value}/{meta.generation.mode.value}"


def _content_type(response: schemathesis.Response) -> str:
    return (response.headers.get("content-type") or [""])[0].split(";")[0].strip()


def _run(case: schemathesis.Case, live: Live, run: str, checks: list[Any], phase: str) -> None:
    """Send the case; fail on ``checks`` at once, record a mistyped error response for later."""
    __tracebackhide__ = True
    live.log.take()  # whatever an earlier case left behind
    try:
        response = case.call()
    except Exception as error:
        # A dropped connection is a server failure too: say which request caused it.
        time.sleep(0.2)  # let the server thread finish logging
        error.add_note(f"\nServer log of this request:\n{live.log.take() or '(nothing)'}")
        raise
    label = case.operation.label
    live.cases[(run, label)] += 1
    live.statuses[(run, label, response.status_code)] += 1
    live.phases[(run, label, phase)] += 1
    try:
        case.validate_response(response, checks=checks)
    except FailureGroup as failure:
        time.sleep(0.2)  # let the server thread finish logging
        failure.add_note(
            f"\nCase: {run} run, {phase} phase"
            f"\nServer log of this request:\n{live.log.take() or '(nothing)'}"
        )
        raise
    try:
        case.validate_response(response, checks=[errors_are_typed])
    except FailureGroup as failure:
        key = (run, label, response.status_code, _content_type(response))
        reasons = "; ".join(str(f.message) for f in failure.exceptions)
        curl = case.as_curl_command(headers=dict(response.request.headers))
        live.mistyped.setdefault(key, f"{reasons}\n    {curl}")


def _assert_errors_were_typed(live: Live, run: str) -> None:
    found = {key: message for key, message in live.mistyped.items() if key[0] == run}
    assert not found, f"{len(found)} kinds of error response with the wrong type:\n" + "\n".join(
        f"  {label}: {message}"
        for (_, label, status, content_type), message in sorted(found.items())
    )


def _authenticate(case: schemathesis.Case, live: Live) -> None:
    case.headers["Authorization"] = f"Bearer {live.api_key}"
    # Fresh per case: a repeated key would make every later case a replay or a 409.
    case.headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4().hex}"
    generated = case.path_parameters.get("payment_id")
    if not isinstance(generated, str):
        return
    meta = case.meta
    positive = meta is not None and meta.generation.mode.value == "positive"
    slot = _slot(generated)
    if positive and slot < 96:
        # A payment that exists, so a valid follow-up gets past the 404.
        case.path_parameters["payment_id"] = live.payment_id
    elif slot >= 224:
        # schemathesis never puts a NUL into a path parameter (nor uses the
        # fuzz dictionary's NUL there); Postgres text refuses NUL, so an
        # eighth of the follow-ups carry one (already URL-encoded, as
        # path parameters are here).
        case.path_parameters["payment_id"] = f"{generated}%00"


def _slot(value: object) -> int:
    """A stable byte (0-255) of a generated value: derandomized runs stay reproducible."""
    return hashlib.sha256(repr(value).encode()).digest()[0]


def _halves(value: object) -> bool:
    """A stable coin flip on a generated value."""
    return _slot(value) < 128


def _sign_webhook(case: schemathesis.Case) -> None:
    """Sign most Stripe and Coinbase cases with the configured test secret.

    The body is serialized here and sent as exactly these bytes, so the
    signature matches what the server reads and the case reaches the event
    normalizer (and the Kafka publish) instead of a 400. Left unsigned, to
    fuzz the header parser: coverage cases aimed at the signature header, and
    half of the generated headers in the fuzzing phase (a stable coin flip).
    """
    path = case.operation.path
    if path not in ("/v1/webhooks/stripe", "/v1/webhooks/coinbase"):
        return
    header = "Stripe-Signature" if path.endswith("stripe") else "X-CC-Webhook-Signature"
    meta = case.meta
    if meta is not None and meta.phase.name.value == "coverage":
        target = getattr(meta.phase.data, "parameter", None) or ""
        if target.lower() == header.lower():
            return
    elif header in case.headers and _halves(case.headers[header]):
        return
    try:
        raw = b"" if isinstance(case.body, NotSet) else json.dumps(case.body).encode()
    except TypeError:
        return  # raw bytes inside the body: sent as generated, unsigned
    case.body = raw
    case.media_type = case.media_type or "application/json"
    if path.endswith("stripe"):
        timestamp = int(time.time())
        mac = hmac.new(STRIPE_SECRET.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256)
        case.headers[header] = f"t={timestamp},v1={mac.hexdigest()}"
    else:
        case.headers[header] = hmac.new(COINBASE_SECRET.encode(), raw, hashlib.sha256).hexdigest()


# --- the tests --------------------------------------------------------------------------------
#
# schemathesis's pytest integration for schemas that come from a fixture
# (``schemathesis.pytest.from_fixture(...).parametrize()``) writes
# ``Node._nodeid``, which pytest 9.2 no longer has. So the tests below run the
# very same per-operation Hypothesis tests it builds (``get_all_tests``:
# examples, coverage and fuzzing phases) themselves, one pytest subtest per
# operation, so one failing operation does not hide the others.


def _fuzz(
    schema: schemathesis.BaseSchema,
    case_test: Any,
    run: str,
    max_examples: int,
    live: Live,
    subtests: pytest.Subtests,
) -> None:
    """Every operation's examples, coverage and fuzzing phases, each in a subtest."""
    __tracebackhide__ = True
    explicit = settings(max_examples=max_examples, **FUZZ_SETTINGS)
    built = list(
        get_all_tests(
            schema=schema.clone(test_function=case_test),
            test_func=case_test,
            settings=explicit,
            given_kwargs={},
        )
    )
    assert built, "the schema has no operations"
    for result in built:
        if isinstance(result, Err):
            raise result.err()
        operation, test = result.ok()
        with subtests.test(msg=operation.label):
            try:
                test(live=live)
            except FailureGroup as failure:
                raise as_reported_failure(failure) from None
            # Guards against a run that silently generated (next to) nothing.
            has_inputs = bool(operation.body) or any(operation.iter_parameters())
            minimum = MIN_CASES_PER_OPERATION[run] if has_inputs else MIN_CASES_WITHOUT_INPUTS
            assert live.cases[(run, operation.label)] >= minimum, (
                f"only {live.cases[(run, operation.label)]} cases for {operation.label}"
            )


def _authenticated_case(case: schemathesis.Case, live: Live) -> None:
    __tracebackhide__ = True
    phase = _phase(case)
    _authenticate(case, live)
    _run(case, live, "authenticated", CHECKS, phase)


def _anonymous_case(case: schemathesis.Case, live: Live) -> None:
    __tracebackhide__ = True
    _run(case, live, "anonymous", [*CHECKS, merchant_api_needs_credentials], _phase(case))


def _undocumented_case(case: schemathesis.Case, live: Live) -> None:
    __tracebackhide__ = True
    phase = _phase(case)
    _sign_webhook(case)
    _run(case, live, "undocumented", CHECKS, phase)


def test_authenticated(
    served_schema: schemathesis.BaseSchema, live: Live, subtests: pytest.Subtests
) -> None:
    """Every served operation with a valid API key: never a 5xx, every 4xx a problem."""
    _fuzz(
        served_schema,
        _authenticated_case,
        "authenticated",
        AUTHENTICATED_MAX_EXAMPLES,
        live,
        subtests,
    )
    _assert_errors_were_typed(live, "authenticated")


def test_without_credentials(
    served_schema: schemathesis.BaseSchema, live: Live, subtests: pytest.Subtests
) -> None:
    """No credentials: the merchant API answers 4xx (401, or 400/404/405/413 before auth)."""
    _fuzz(served_schema, _anonymous_case, "anonymous", ANONYMOUS_MAX_EXAMPLES, live, subtests)
    _assert_errors_were_typed(live, "anonymous")


def test_undocumented_surface(
    undocumented_schema: schemathesis.BaseSchema, live: Live, subtests: pytest.Subtests
) -> None:
    """The registry's Confluent API and webhook bodies, which /openapi.json does not describe."""
    _fuzz(
        undocumented_schema,
        _undocumented_case,
        "undocumented",
        UNDOCUMENTED_MAX_EXAMPLES,
        live,
        subtests,
    )
    _assert_errors_were_typed(live, "undocumented")
