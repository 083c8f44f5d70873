"""The merchant API: create, capture, cancel and refund a payment.

Every accepted request becomes one signed command on the commands topic, and
the answer is 202 only after the broker acknowledged it. Ids are derived from
the merchant and the ``Idempotency-Key``: a request retried after a 503 makes
the same payment id and the same event id, so even a command the broker took
after all is never acted on twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ingress.auth import Merchant
from ingress.batching import CreateIntent
from ingress.idempotency import StoredResponse, claim, complete, idempotency_key
from ingress.idempotency import request_fingerprint as fingerprint_of
from ingress.models import (
    AcceptedResponse,
    CancelRequest,
    CaptureRequest,
    CreatePaymentRequest,
    CustomerDetails,
    RefundRequest,
    within_settings,
)
from ingress.problems import Problem
from ingress.services import Services, services
from ledger.carddata import contains_pan, pan_paths
from ledger.envelope import (
    CaptureMethod,
    CommandKind,
    Envelope,
    Money,
    PaymentCommand,
    Provider,
    SealedData,
    derived_event_id,
    new_envelope,
)
from ledger.sealing import customer_reference
from ledger.topics import TopicRole

log = logging.getLogger("payledger.ingress.payments")

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/problem+json": {}}, "description": description}
    for status, description in (
        (400, "Malformed request or missing Idempotency-Key"),
        (401, "Missing or invalid credentials"),
        (404, "No such payment for this merchant"),
        (409, "Idempotency-Key reused with a different request"),
        (410, "The customer's personal data was erased; use a new customer reference"),
        (413, "Request body too large"),
        (422, "Invalid request, or card data refused"),
        (429, "Rate limited"),
        (503, "The ledger could not record the command; retry with the same key"),
    )
}

router = APIRouter(prefix="/v1/payments", tags=["payments"], responses=PROBLEM_RESPONSES)


@dataclass(frozen=True, slots=True)
class Admitted:
    merchant: Merchant
    idempotency_key: str


async def _refuse_card_data(
    request: Request, body: bytes, svc: Services, merchant: Merchant
) -> None:
    """Refuse a request that carries what looks like a card number, anywhere.

    Runs before validation, so a number in an unknown field or a malformed
    body is caught too. The number itself goes nowhere: not in the response,
    the log or the audit fact, which records only where it was.
    """
    try:
        paths = pan_paths(json.loads(body)) if body else []
    except ValueError:
        paths = ["(body)"] if contains_pan(body.decode("utf-8", "replace")) else []
    if not paths:
        return
    try:
        await svc.audit(
            "request.card-data-refused",
            actor=merchant.merchant_id,
            subject=request.url.path,
            reason="a primary account number was found in the request",
            digest=hashlib.sha256(body).digest(),
            details={"paths": ",".join(paths)[:500]},
        )
    except Problem:
        log.error("could not record the card-data refusal as an audit fact")
    raise Problem(
        422,
        "card-data-refused",
        "Card data is not accepted",
        "the request contains what looks like a card number; payledger never takes card "
        "data: use the provider's hosted fields or tokens",
        paths=paths,
    )


async def authenticated(request: Request, svc: Services, body: bytes) -> Merchant:
    """The request's merchant, authenticated and within its rate limit (else 401/429)."""
    merchant = await svc.authenticator.authenticate(request, body)
    request.state.merchant_id = merchant.merchant_id
    settings = svc.settings
    wait_s = svc.rate_limiter.take(
        merchant.merchant_id,
        merchant.rate_per_s or settings.rate_limit_per_s,
        merchant.burst or settings.rate_limit_burst,
    )
    if wait_s is not None:
        raise Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"retry in {wait_s:.0f} s",
            headers={"Retry-After": f"{wait_s:.0f}"},
        )
    return merchant


async def admit(request: Request, svc: Annotated[Services, Depends(services)]) -> Admitted:
    """Authentication, rate limit, Idempotency-Key and the card-data guard, before validation."""
    body = await request.body()
    merchant = await authenticated(request, svc, body)
    key = idempotency_key(request.headers.get("idempotency-key"))
    await _refuse_card_data(request, body, svc, merchant)
    return Admitted(merchant, key)


Admission = Annotated[Admitted, Depends(admit)]
ServicesDependency = Annotated[Services, Depends(services)]


async def _seal_customer(svc: Services, merchant_id: str, details: CustomerDetails) -> SealedData:
    """Seal the customer's personal data under their own data key before it goes anywhere."""
    reference = customer_reference(merchant_id, details.reference)
    document = details.model_dump(mode="json", exclude={"reference"}, exclude_none=True)
    plaintext = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return await svc.customer_keys.seal(merchant_id, reference, plaintext)


def _replay(stored: StoredResponse) -> Response:
    return Response(
        stored.body,
        status_code=stored.status,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def _accepted(payment_id: str, event_id: str) -> tuple[StoredResponse, Response]:
    body = AcceptedResponse(payment_id=payment_id, event_id=event_id).model_dump(mode="json")
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return StoredResponse(202, encoded), Response(
        encoded, status_code=202, media_type="application/json"
    )


@router.post("", status_code=202, response_model=AcceptedResponse)
async def create_payment(
    payload: CreatePaymentRequest, admitted: Admission, svc: ServicesDependency
) -> Response:
    """Create a payment intent with the chosen provider."""
    payload = within_settings(payload, svc.settings)
    merchant_id, key = admitted.merchant.merchant_id, admitted.idempotency_key
    fingerprint = fingerprint_of("POST", "/v1/payments", payload.model_dump(mode="json"))
    payment_id = "pay_" + hashlib.sha256(f"{merchant_id}\0{key}".encode()).hexdigest()[:32]
    event_id = derived_event_id("payment.command.create", merchant_id, key)

    async def command() -> Envelope:
        # Runs inside the batch's transaction, once the key is this request's.
        customer = None
        if payload.customer is not None:
            customer = await _seal_customer(svc, merchant_id, payload.customer)
        return new_envelope(
            event_id=event_id,
            event_type="payment.command.create",
            aggregate_id=payment_id,
            sequence=1,
            producer=svc.source,
            payload=PaymentCommand(
                command=CommandKind.CREATE,
                merchant_id=merchant_id,
                idempotency_key=key,
                provider=Provider(payload.provider.upper()),
                amount=Money(payload.amount_minor, payload.currency),
                capture_method=CaptureMethod(payload.capture_method.upper()),
                description=payload.description,
                metadata=payload.metadata,
                customer=customer,
            ),
            now=svc.clock(),
        )

    stored_response, response = _accepted(payment_id, event_id)
    assert svc.creates is not None, "the app's lifespan sets up the create batcher"
    # Claim, seal, insert, publish, wait for the ack and commit, with other
    # requests in one transaction (ingress/batching.py).
    stored, replayed = await svc.creates.submit(
        CreateIntent(
            merchant_id=merchant_id,
            idempotency_key=key,
            fingerprint=fingerprint,
            payment_id=payment_id,
            provider=payload.provider,
            currency=payload.currency,
            amount_minor=payload.amount_minor,
            accepted=stored_response,
            build=command,
        )
    )
    return _replay(stored) if replayed else response


_PAYMENT_ID = re.compile(r"^pay_[0-9a-f]{32}$")


def _payment_not_found() -> Problem:
    # The detail never repeats the id: it is input, and another merchant's id
    # must not be confirmed either way.
    return Problem(404, "payment-not-found", "No such payment", "no such payment for this merchant")


async def _follow_up(
    svc: Services,
    admitted: Admitted,
    payment_id: str,
    kind: CommandKind,
    document: dict[str, Any],
    *,
    amount_minor: int | None = None,
    reason: str | None = None,
) -> Response:
    merchant_id, key = admitted.merchant.merchant_id, admitted.idempotency_key
    if not _PAYMENT_ID.match(payment_id):
        # Not an id this ingress could have made: as missing as any other.
        raise _payment_not_found()
    path = f"/v1/payments/{payment_id}/{kind.value.lower()}"
    fingerprint = fingerprint_of("POST", path, document)
    async with svc.pool.connection() as connection, connection.transaction():
        stored = await claim(
            connection, merchant_id, key, fingerprint, svc.settings.idempotency_ttl_s
        )
        if stored is not None:
            return _replay(stored)
        cursor = await connection.execute(
            "SELECT provider, currency, amount_minor, next_sequence FROM ingress_payments"
            " WHERE payment_id = %s AND merchant_id = %s FOR UPDATE",
            (payment_id, merchant_id),
        )
        row = await cursor.fetchone()
        if row is None:
            # Another merchant's payment looks exactly like a missing one.
            raise _payment_not_found()
        provider, currency, payment_amount, sequence = row
        if amount_minor is not None and amount_minor > payment_amount:
            raise Problem(
                422,
                "amount-exceeds-payment",
                "Amount larger than the payment",
                f"{kind.value.lower()} of {amount_minor} exceeds the payment's {payment_amount}",
            )
        await connection.execute(
            "UPDATE ingress_payments SET next_sequence = next_sequence + 1 WHERE payment_id = %s",
            (payment_id,),
        )
        event_type = f"payment.command.{kind.value.lower()}"
        event_id = derived_event_id(event_type, merchant_id, key, payment_id)
        command = PaymentCommand(
            command=kind,
            merchant_id=merchant_id,
            idempotency_key=key,
            provider=Provider(provider.upper()),
            amount=None if amount_minor is None else Money(amount_minor, currency),
            reason=reason,
        )
        envelope = new_envelope(
            event_id=event_id,
            event_type=event_type,
            aggregate_id=payment_id,
            sequence=sequence,
            producer=svc.source,
            payload=command,
            now=svc.clock(),
        )
        await svc.publish(TopicRole.COMMANDS, envelope)
        stored_response, response = _accepted(payment_id, event_id)
        await complete(connection, merchant_id, key, stored_response)
    return response


@router.post("/{payment_id}/capture", status_code=202, response_model=AcceptedResponse)
async def capture_payment(
    payment_id: str, payload: CaptureRequest, admitted: Admission, svc: ServicesDependency
) -> Response:
    """Capture an authorized payment, fully (no amount) or partially."""
    payload = within_settings(payload, svc.settings)
    return await _follow_up(
        svc,
        admitted,
        payment_id,
        CommandKind.CAPTURE,
        payload.model_dump(mode="json"),
        amount_minor=payload.amount_minor,
    )


@router.post("/{payment_id}/cancel", status_code=202, response_model=AcceptedResponse)
async def cancel_payment(
    payment_id: str, payload: CancelRequest, admitted: Admission, svc: ServicesDependency
) -> Response:
    """Cancel a payment that is not captured yet."""
    return await _follow_up(
        svc,
        admitted,
        payment_id,
        CommandKind.CANCEL,
        payload.model_dump(mode="json"),
        reason=payload.reason,
    )


@router.post("/{payment_id}/refund", status_code=202, response_model=AcceptedResponse)
async def refund_payment(
    payment_id: str, payload: RefundRequest, admitted: Admission, svc: ServicesDependency
) -> Response:
    """Refund a captured payment, fully (no amount) or partially."""
    payload = within_settings(payload, svc.settings)
    return await _follow_up(
        svc,
        admitted,
        payment_id,
        CommandKind.REFUND,
        payload.model_dump(mode="json"),
        amount_minor=payload.amount_minor,
        reason=payload.reason,
    )
