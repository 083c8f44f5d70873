"""A local Coinbase Commerce charges API (API version 2018-03-22), for tests and development.

What it serves, as Coinbase Commerce documents it:

    POST /charges                          create a charge: 201 {"data": charge, "warnings": []}
    GET  /charges/{id_or_code}             200 {"data": charge}
    POST /charges/{id_or_code}/cancel      only while the charge is NEW; 200 {"data": charge}

Every request must carry ``X-CC-Api-Key`` (the configured key, else 401) and
``X-CC-Version``; errors are ``{"error": {"type", "message"}}`` with the types
Coinbase's client libraries map (``authentication_error``, ``param_required``,
``validation_error``, ``invalid_request``, ``not_found``). A charge has the
documented fields the adapter and the webhook normalizer read: ``id`` (UUID),
``code`` (8 characters), ``hosted_url``, ``pricing_type``, ``pricing.local``,
``metadata``, ``timeline`` and ``payments``, ``created_at`` and ``expires_at``
(one hour later, Coinbase's payment window).

Charges live in memory, for the life of the process. Where the documentation
leaves a choice open the fake is the stricter reading: a missing
``X-CC-Version`` is refused rather than defaulted, so an adapter that forgets
it fails here and not in production.

Run: ``python -m streams.fakes.coinbase --port 14020`` (the key comes from
PAYLEDGER_COINBASE_API_KEY, as the adapter's does).
"""

from __future__ import annotations

import hmac
import re
import secrets
import string
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.config import load_settings
from streams.fakes import (
    BodyTooLarge,
    RequestLog,
    admin_routes,
    argument_parser,
    parse_json,
    read_body,
    serve,
)

SERVICE = "coinbase-fake"
PAYMENT_WINDOW = timedelta(hours=1)
_CODE_ALPHABET = string.ascii_uppercase + string.digits
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_CURRENCY = re.compile(r"^[A-Z]{3,5}$")  # fiat ISO 4217, or a crypto ticker
_NAME_CHARS_MAX = 100
_DESCRIPTION_CHARS_MAX = 200
_METADATA_ENTRIES_MAX = 50


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


class Charges:
    """The charges of one fake, by id and by code."""

    def __init__(self) -> None:
        self._by_id: dict[str, dict[str, Any]] = {}
        self._code_to_id: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, charge: dict[str, Any]) -> None:
        with self._lock:
            self._by_id[charge["id"]] = charge
            self._code_to_id[charge["code"]] = charge["id"]

    def find(self, id_or_code: str) -> dict[str, Any] | None:
        with self._lock:
            charge_id = self._code_to_id.get(id_or_code, id_or_code)
            return self._by_id.get(charge_id)

    def new_code(self) -> str:
        while True:
            code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
            with self._lock:
                if code not in self._code_to_id:
                    return code


def _validate(document: Any) -> tuple[str, str] | None:
    """(type, message) of the first problem with a create-charge body, or None."""
    if not isinstance(document, dict):
        return "invalid_request", "request body must be a JSON object"
    for field in ("name", "pricing_type"):
        if not isinstance(document.get(field), str) or not document[field]:
            return "param_required", f"Required parameter missing: {field}"
    if len(document["name"]) > _NAME_CHARS_MAX:
        return "validation_error", f"name is longer than {_NAME_CHARS_MAX} characters"
    description = document.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > _DESCRIPTION_CHARS_MAX
    ):
        return "validation_error", f"description must be text of at most {_DESCRIPTION_CHARS_MAX}"
    if document["pricing_type"] not in ("fixed_price", "no_price"):
        return "validation_error", "pricing_type must be fixed_price or no_price"
    if document["pricing_type"] == "fixed_price":
        local = document.get("local_price")
        if not isinstance(local, dict):
            return "param_required", "Required parameter missing: local_price"
        amount, currency = local.get("amount"), local.get("currency")
        if not isinstance(amount, str) or not _DECIMAL.match(amount):
            return "validation_error", "local_price.amount must be a decimal string"
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            return "validation_error", "local_price.currency must be a currency code"
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict) or len(metadata) > _METADATA_ENTRIES_MAX:
        return "validation_error", "metadata must be an object of at most 50 entries"
    if not all(isinstance(v, str | int | float | bool) for v in metadata.values()):
        return "validation_error", "metadata values must be scalars"
    return None


def create_app(api_key: str) -> Starlette:
    charges = Charges()
    log = RequestLog()
    expected_key = api_key.encode()

    def refused(request: Request) -> JSONResponse | None:
        key = request.headers.get("x-cc-api-key", "")
        if not hmac.compare_digest(key.encode(), expected_key):
            return _error(401, "authentication_error", "No such API key.")
        if not request.headers.get("x-cc-version"):
            return _error(400, "invalid_request", "Missing X-CC-Version header")
        return None

    async def answer(request: Request, body: Any, response: JSONResponse) -> JSONResponse:
        log.record(request, body, response.status_code)
        return response

    async def create(request: Request) -> Response:
        try:
            raw = await read_body(request)
        except BodyTooLarge:
            return await answer(request, None, _error(413, "invalid_request", "body too large"))
        document = parse_json(raw)
        problem = refused(request)
        if problem is not None:
            return await answer(request, document, problem)
        invalid = _validate(document)
        if invalid is not None:
            return await answer(request, document, _error(400, *invalid))
        created = datetime.now(UTC)
        code = charges.new_code()
        charge: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "resource": "charge",
            "code": code,
            "name": document["name"],
            "description": document.get("description"),
            "hosted_url": f"{str(request.base_url).rstrip('/')}/pay/{code}",
            "created_at": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "expires_at": (created + PAYMENT_WINDOW)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            "pricing_type": document["pricing_type"],
            "pricing": (
                {"local": dict(document["local_price"])}
                if document["pricing_type"] == "fixed_price"
                else {}
            ),
            "metadata": dict(document.get("metadata", {})),
            "timeline": [{"time": _now(), "status": "NEW"}],
            "payments": [],
            "addresses": {},
        }
        for field in ("redirect_url", "cancel_url"):
            if isinstance(document.get(field), str):
                charge[field] = document[field]
        charges.add(charge)
        return await answer(
            request, document, JSONResponse({"data": charge, "warnings": []}, status_code=201)
        )

    async def show(request: Request) -> Response:
        problem = refused(request)
        if problem is not None:
            return await answer(request, None, problem)
        charge = charges.find(request.path_params["charge"])
        if charge is None:
            return await answer(request, None, _error(404, "not_found", "Not found"))
        return await answer(request, None, JSONResponse({"data": charge}))

    async def cancel(request: Request) -> Response:
        problem = refused(request)
        if problem is not None:
            return await answer(request, None, problem)
        charge = charges.find(request.path_params["charge"])
        if charge is None:
            return await answer(request, None, _error(404, "not_found", "Not found"))
        # Coinbase: "Only new charges can be successfully canceled. Once
        # payment is detected, charge can no longer be canceled."
        if charge["timeline"][-1]["status"] != "NEW":
            return await answer(
                request,
                None,
                _error(400, "invalid_request", "Only new charges can be canceled"),
            )
        charge["timeline"].append({"time": _now(), "status": "CANCELED"})
        return await answer(request, None, JSONResponse({"data": charge}))

    routes = [
        Route("/charges", create, methods=["POST"]),
        Route("/charges/{charge}", show, methods=["GET"]),
        Route("/charges/{charge}/cancel", cancel, methods=["POST"]),
        *admin_routes(SERVICE, log),
    ]
    return Starlette(routes=routes)


def main() -> None:
    args = argument_parser("A local Coinbase Commerce charges API.").parse_args()
    settings = load_settings()
    serve(create_app(settings.coinbase_api_key.get_secret_value()), args.host, args.port)


if __name__ == "__main__":
    main()
