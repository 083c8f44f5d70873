"""The per-provider tables: every row maps, the allowed transitions respect the status order,
and real webhook bodies, read by the ingress normalizers, map to the intended transitions."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingress.webhooks import coinbase, paypal, stripe
from ledger.envelope import CommandKind, Money, PaymentEventKind, Provider, ProviderEvent
from ledger.payments.status import (
    DOCUMENTED_EXCEPTIONS,
    RANK,
    TERMINAL,
    PaymentStatus,
    is_backwards,
)
from ledger.payments.transitions import (
    ALLOWED,
    ANY,
    COMMANDS,
    RULES,
    AmountFrom,
    MappingError,
    Rule,
    find_rule,
    map_event,
)

S = PaymentStatus
K = PaymentEventKind
T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
MONEY_KINDS = {K.CAPTURED, K.REFUNDED, K.DISPUTE_LOST, K.FUNDS_RESOLVED}


def event(
    provider: Provider,
    event_type: str,
    status: str | None = None,
    *,
    amount: Money | None = None,
    fee: Money | None = None,
    fields: dict[str, str] | None = None,
    object_id: str | None = "obj_1",
) -> ProviderEvent:
    return ProviderEvent(
        provider=provider,
        provider_event_id="evt_1",
        provider_event_type=event_type,
        received_at=T0,
        body_sha256=bytes(32),
        provider_object_id=object_id,
        status=status,
        amount=amount,
        fee=fee,
        fields=fields or {},
    )


def _rows() -> list[tuple[Provider, tuple[str, str], Rule | None]]:
    return [
        (provider, key, rule)
        for provider, table in RULES.items()
        for key, rule in table.rules.items()
    ]


@pytest.mark.parametrize(
    ("provider", "key", "rule"),
    _rows(),
    ids=lambda v: v.value if isinstance(v, Provider) else str(v),
)
def test_every_row_maps_an_event_shaped_like_it(
    provider: Provider, key: tuple[str, str], rule: Rule | None
) -> None:
    event_type, status_key = key
    status, _, sub = status_key.partition("/")
    fields = {"amount_received": "700", "amount_capturable": "700", "amount_refunded": "700"}
    fields["paid_local_amount"] = "7.00"
    fields["payment_intent"] = fields["order_id"] = "obj_1"
    if sub:
        fields[RULES[provider].sub_status_field or ""] = sub
    sample = event(
        provider,
        "charge:pending" if event_type == ANY else event_type,
        None if status == ANY else status,
        amount=Money(700, "EUR"),
        fee=Money(20, "EUR"),
        fields=fields,
    )
    matched, found = find_rule(sample)
    assert found is rule, (matched, key)
    if rule is None:
        with pytest.raises(MappingError) as caught:
            map_event(sample, "EUR")
        assert caught.value.reason == "unhandled-event"
        return
    transition = map_event(sample, "EUR")
    assert transition.kind in (rule.kind, K.NOTED)
    assert transition.status is rule.status
    if rule.amount_from is not AmountFrom.NONE:
        assert transition.amount == Money(700, "EUR")


@pytest.mark.parametrize(("provider", "key", "rule"), _rows(), ids=str)
def test_rows_are_well_formed(provider: Provider, key: tuple[str, str], rule: Rule | None) -> None:
    if rule is None:
        return
    if rule.kind in (K.STATUS_CHANGED, K.FUNDS_UNRESOLVED, K.AUTHORIZED):
        assert rule.status is not None, "an explicit status change names its status"
    if rule.kind in MONEY_KINDS | {K.DISPUTE_OPENED, K.DISPUTE_WON, K.CANCELED, K.FEE_CHARGED}:
        assert rule.status is None, "the status after a money movement comes from the totals"
    if rule.kind in (K.CAPTURED, K.REFUNDED) and not rule.cumulative:
        assert rule.amount_required and rule.movement, (
            "a delta is deduplicated and needs its amount"
        )
    if rule.kind is K.REFUNDED:
        assert rule.amount_required
    if rule.amount_from in (AmountFrom.STRIPE_FIELD, AmountFrom.DECIMAL_FIELD):
        assert rule.amount_field
    assert rule.kind not in (
        K.CREATED,
        K.CAPTURE_REQUESTED,
        K.CANCEL_REQUESTED,
        K.REFUND_REQUESTED,
    ), "commands are not provider events"


@pytest.mark.parametrize("provider", list(Provider), ids=lambda p: p.value)
def test_allowed_transitions_respect_the_status_order(provider: Provider) -> None:
    for source, target in ALLOWED[provider]:
        assert source is not target, "a same-status event needs no row"
        if source in TERMINAL or is_backwards(source, target):
            assert (source, target) in DOCUMENTED_EXCEPTIONS, (source, target)
    # Nothing leaves these, for any provider.
    for final in (S.CANCELED, S.REFUNDED):
        assert not [pair for pair in ALLOWED[provider] if pair[0] is final]


def test_every_status_has_a_rank_and_the_documented_exceptions_are_used() -> None:
    assert set(RANK) == set(PaymentStatus)
    used = set().union(*ALLOWED.values())
    assert used >= DOCUMENTED_EXCEPTIONS, DOCUMENTED_EXCEPTIONS - used


def test_the_brief_statuses_exist() -> None:
    names = {status.value for status in PaymentStatus}
    assert {
        "AWAITING_PAYMENT_METHOD",
        "REQUIRES_CUSTOMER_ACTION",
        "PROCESSING",
        "AUTHORIZED",
        "SUCCEEDED",
        "PARTIALLY_REFUNDED",
        "REFUNDED",
        "CANCELED",
        "FAILED",
        "EXPIRED",
        "DISPUTED",
        "UNRESOLVED",
    } <= names


def test_the_avro_enums_list_the_python_enums() -> None:
    directory = Path(__file__).parents[2] / "schemas" / "v2"
    status = json.loads((directory / "io.payledger.PaymentStatus.avsc").read_text())
    assert status["symbols"] == [s.value for s in PaymentStatus]
    payment_event = json.loads((directory / "io.payledger.PaymentEvent.avsc").read_text())
    kind = next(f for f in payment_event["fields"] if f["name"] == "kind")
    assert kind["type"]["symbols"] == [k.value for k in PaymentEventKind]


@pytest.mark.parametrize(
    ("provider", "event_type"),
    [
        *[(Provider.STRIPE, t) for t in (
            "payment_intent.created", "payment_intent.requires_action", "payment_intent.processing",
            "payment_intent.amount_capturable_updated", "payment_intent.succeeded",
            "payment_intent.payment_failed", "payment_intent.canceled", "charge.refunded",
            "charge.dispute.created", "charge.dispute.closed",
        )],
        *[(Provider.PAYPAL, t) for t in (
            "CHECKOUT.ORDER.APPROVED", "PAYMENT.AUTHORIZATION.CREATED", "PAYMENT.AUTHORIZATION.VOIDED",
            "PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.DENIED",
            "PAYMENT.CAPTURE.PENDING", "CUSTOMER.DISPUTE.CREATED", "CUSTOMER.DISPUTE.RESOLVED",
        )],
        *[(Provider.COINBASE, t) for t in (
            "charge:created", "charge:pending", "charge:confirmed", "charge:failed",
            "charge:delayed", "charge:resolved",
        )],
    ],
)  # fmt: skip
def test_the_brief_event_types_are_mapped(provider: Provider, event_type: str) -> None:
    assert any(key[0] == event_type for key in RULES[provider].rules)


@pytest.mark.parametrize(
    ("status", "context", "kind", "target"),
    [
        ("NEW", None, K.STATUS_CHANGED, S.AWAITING_PAYMENT_METHOD),
        ("PENDING", None, K.STATUS_CHANGED, S.PROCESSING),
        ("COMPLETED", None, K.CAPTURED, None),
        ("EXPIRED", None, K.STATUS_CHANGED, S.EXPIRED),
        ("CANCELED", None, K.CANCELED, None),
        ("UNRESOLVED", "UNDERPAID", K.FUNDS_UNRESOLVED, S.UNRESOLVED),
        ("UNRESOLVED", "OVERPAID", K.FUNDS_UNRESOLVED, S.UNRESOLVED),
        ("UNRESOLVED", "DELAYED", K.FUNDS_UNRESOLVED, S.UNRESOLVED),
        ("UNRESOLVED", "MULTIPLE", K.FUNDS_UNRESOLVED, S.UNRESOLVED),
        ("UNRESOLVED", None, K.FUNDS_UNRESOLVED, S.UNRESOLVED),
        ("RESOLVED", None, K.FUNDS_RESOLVED, None),
    ],
)
def test_coinbase_the_timeline_status_decides(
    status: str, context: str | None, kind: PaymentEventKind, target: PaymentStatus | None
) -> None:
    fields = {"context": context} if context else {}
    # charge:failed says little: the latest timeline entry says what happened.
    transition = map_event(event(Provider.COINBASE, "charge:failed", status, fields=fields), "EUR")
    assert (transition.kind, transition.status) == (kind, target)
    assert transition.context == context


def test_coinbase_without_a_timeline_the_event_type_decides() -> None:
    transition = map_event(event(Provider.COINBASE, "charge:delayed"), "EUR")
    assert (transition.kind, transition.status) == (K.FUNDS_UNRESOLVED, S.UNRESOLVED)
    with pytest.raises(MappingError, match="unhandled-event"):
        map_event(event(Provider.COINBASE, "charge:failed", "REFUNDED"), "EUR")


@pytest.mark.parametrize(
    ("status", "kind", "hold"),
    [
        ("needs_response", K.DISPUTE_OPENED, True),
        ("warning_needs_response", K.DISPUTE_OPENED, False),
        ("under_review", K.DISPUTE_OPENED, True),
    ],
)
def test_stripe_dispute_created(status: str, kind: PaymentEventKind, hold: bool) -> None:
    transition = map_event(
        event(Provider.STRIPE, "charge.dispute.created", status, object_id="du_1"), "EUR"
    )
    assert (transition.kind, transition.hold, transition.dispute_id) == (kind, hold, "du_1")


@pytest.mark.parametrize(
    ("status", "kind"),
    [("won", K.DISPUTE_WON), ("warning_closed", K.DISPUTE_WON), ("lost", K.DISPUTE_LOST)],
)
def test_stripe_dispute_closed(status: str, kind: PaymentEventKind) -> None:
    assert map_event(event(Provider.STRIPE, "charge.dispute.closed", status), "EUR").kind is kind
    with pytest.raises(MappingError, match="unhandled-event"):
        map_event(event(Provider.STRIPE, "charge.dispute.closed", "needs_response"), "EUR")


def test_unknown_events_are_unmapped() -> None:
    with pytest.raises(MappingError) as caught:
        map_event(event(Provider.STRIPE, "invoice.paid", "paid"), "EUR")
    assert caught.value.reason == "unmapped-event"
    assert "invoice.paid" in caught.value.detail


@pytest.mark.parametrize(
    ("currency", "raw", "minor"),
    [("EUR", "1050", 1050), ("JPY", "500", 500), ("BHD", "1234", 1234), ("MGA", "700", 70000)],
)
def test_stripe_counters_become_iso_minor_units(currency: str, raw: str, minor: int) -> None:
    sample = event(
        Provider.STRIPE, "payment_intent.succeeded", "succeeded", fields={"amount_received": raw}
    )
    transition = map_event(sample, currency)
    assert transition.amount == Money(minor, currency)
    assert transition.cumulative


@pytest.mark.parametrize(
    ("currency", "raw"), [("ISK", "100"), ("EUR", "-5"), ("EUR", "1e3"), ("XXX", "1")]
)
def test_stripe_counters_that_cannot_be_read_exactly(currency: str, raw: str) -> None:
    sample = event(Provider.STRIPE, "charge.refunded", "succeeded", fields={"amount_refunded": raw})
    with pytest.raises(MappingError, match="bad-amount"):
        map_event(sample, currency)


def test_amounts_in_another_currency_and_missing_amounts() -> None:
    paypal_refund = event(
        Provider.PAYPAL, "PAYMENT.CAPTURE.REFUNDED", "COMPLETED", amount=Money(5, "USD")
    )
    with pytest.raises(MappingError, match="currency-mismatch"):
        map_event(paypal_refund, "EUR")
    unconverted = event(
        Provider.PAYPAL,
        "PAYMENT.CAPTURE.COMPLETED",
        "COMPLETED",
        fields={"amount_unconverted": "1.234 EUR"},
    )
    with pytest.raises(MappingError, match=r"missing-amount.*1\.234 EUR"):
        map_event(unconverted, "EUR")
    bad_paid = event(
        Provider.COINBASE, "charge:resolved", "RESOLVED", fields={"paid_local_amount": "1.234"}
    )
    with pytest.raises(MappingError, match="bad-amount"):
        map_event(bad_paid, "EUR")


def test_delta_movements_need_an_object_id() -> None:
    capture = event(
        Provider.PAYPAL,
        "PAYMENT.CAPTURE.COMPLETED",
        "COMPLETED",
        amount=Money(5, "EUR"),
        object_id=None,
    )
    with pytest.raises(MappingError, match="missing-object-id"):
        map_event(capture, "EUR")


def test_paypal_final_capture() -> None:
    fields = {"final_capture": "false", "order_id": "ORDER-1"}
    partial = event(
        Provider.PAYPAL,
        "PAYMENT.CAPTURE.COMPLETED",
        "COMPLETED",
        amount=Money(5, "EUR"),
        fields=fields,
    )
    transition = map_event(partial, "EUR")
    assert not transition.final_capture
    assert transition.movement_key == "capture:obj_1"
    assert transition.payment_object_id == "ORDER-1"
    whole = event(Provider.PAYPAL, "PAYMENT.CAPTURE.COMPLETED", "COMPLETED", amount=Money(5, "EUR"))
    assert map_event(whole, "EUR").final_capture, "no final_capture field: final"


def test_command_tables_allow_only_statuses_before_or_after_capture() -> None:
    for provider, table in COMMANDS.items():
        assert set(table) == {CommandKind.CAPTURE, CommandKind.CANCEL, CommandKind.REFUND}
        assert table[CommandKind.CAPTURE] <= {S.AUTHORIZED, S.PARTIALLY_CAPTURED}, provider
        assert not table[CommandKind.CANCEL] & {S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED}
        assert table[CommandKind.REFUND] <= {
            S.SUCCEEDED,
            S.PARTIALLY_REFUNDED,
            S.PARTIALLY_CAPTURED,
        }


# --------------------------------------------------------------------------
# Bodies as the providers send them, through the ingress normalizers.


def _provider_event(normalized: object) -> ProviderEvent:
    return normalized.provider_event(received_at=T0, body_sha256=hashlib.sha256(b"").digest())  # type: ignore[attr-defined]


def test_a_stripe_payment_intent_succeeded_body() -> None:
    body = {
        "id": "evt_3", "object": "event", "type": "payment_intent.succeeded", "created": 1795435200,
        "data": {"object": {
            "id": "pi_3", "object": "payment_intent", "amount": 2000, "amount_received": 1500,
            "amount_capturable": 0, "currency": "eur", "status": "succeeded",
            "metadata": {"payledger_payment_id": "pay_1"},
        }},
    }  # fmt: skip
    transition = map_event(_provider_event(stripe.normalize(json.dumps(body).encode())), "EUR")
    assert transition.kind is K.CAPTURED
    assert transition.amount == Money(1500, "EUR")
    assert transition.cumulative
    assert transition.payment_object_id == "pi_3"


def test_a_stripe_charge_refunded_body() -> None:
    body = {
        "id": "evt_4", "type": "charge.refunded", "created": 1795435200,
        "data": {"object": {
            "id": "ch_4", "object": "charge", "amount": 2000, "amount_refunded": 500,
            "currency": "eur", "status": "succeeded", "payment_intent": "pi_3",
        }},
    }  # fmt: skip
    transition = map_event(_provider_event(stripe.normalize(json.dumps(body).encode())), "EUR")
    assert (transition.kind, transition.amount) == (K.REFUNDED, Money(500, "EUR"))
    assert transition.payment_object_id == "pi_3"


def test_a_stripe_dispute_body() -> None:
    body = {
        "id": "evt_5", "type": "charge.dispute.created", "created": 1795435200,
        "data": {"object": {
            "id": "du_5", "object": "dispute", "amount": 2000, "currency": "eur",
            "status": "needs_response", "payment_intent": "pi_3", "charge": "ch_4",
        }},
    }  # fmt: skip
    transition = map_event(_provider_event(stripe.normalize(json.dumps(body).encode())), "EUR")
    assert (transition.kind, transition.amount, transition.hold) == (
        K.DISPUTE_OPENED,
        Money(2000, "EUR"),
        True,
    )
    assert (transition.dispute_id, transition.payment_object_id) == ("du_5", "pi_3")


def test_a_paypal_capture_completed_body() -> None:
    body = {
        "id": "WH-1", "event_type": "PAYMENT.CAPTURE.COMPLETED", "create_time": "2026-11-23T12:00:00Z",
        "resource_type": "capture", "event_version": "1.0",
        "resource": {
            "id": "CAP-1", "status": "COMPLETED", "final_capture": False, "custom_id": "pay_1",
            "amount": {"currency_code": "EUR", "value": "10.50"},
            "seller_receivable_breakdown": {
                "gross_amount": {"currency_code": "EUR", "value": "10.50"},
                "paypal_fee": {"currency_code": "EUR", "value": "0.65"},
            },
            "supplementary_data": {"related_ids": {"order_id": "ORDER-1", "authorization_id": "AUTH-1"}},
        },
    }  # fmt: skip
    transition = map_event(_provider_event(paypal.normalize(json.dumps(body).encode())), "EUR")
    assert transition.kind is K.CAPTURED
    assert (transition.amount, transition.fee) == (Money(1050, "EUR"), Money(65, "EUR"))
    assert not transition.final_capture
    assert (transition.movement_key, transition.payment_object_id) == ("capture:CAP-1", "ORDER-1")


def test_a_paypal_refund_body() -> None:
    body = {
        "id": "WH-2", "event_type": "PAYMENT.CAPTURE.REFUNDED", "create_time": "2026-11-23T12:00:00Z",
        "resource": {
            "id": "REF-1", "status": "COMPLETED", "custom_id": "pay_1",
            "amount": {"currency_code": "EUR", "value": "4.00"},
            "seller_payable_breakdown": {"paypal_fee": {"currency_code": "EUR", "value": "0.20"}},
        },
    }  # fmt: skip
    transition = map_event(_provider_event(paypal.normalize(json.dumps(body).encode())), "EUR")
    assert (transition.kind, transition.amount, transition.fee) == (
        K.REFUNDED,
        Money(400, "EUR"),
        Money(20, "EUR"),
    )
    assert transition.fee_returned
    assert transition.movement_key == "refund:REF-1"


def test_a_coinbase_underpaid_charge_body() -> None:
    body = {
        "id": "delivery-1",
        "event": {
            "id": "evt-cb-1", "type": "charge:failed", "created_at": "2026-11-23T12:00:00Z",
            "data": {
                "id": "charge-1", "code": "ABCD1234", "metadata": {"payment_id": "pay_1"},
                "pricing": {"local": {"amount": "10.00", "currency": "EUR"}},
                "timeline": [
                    {"status": "NEW", "time": "2026-11-23T11:00:00Z"},
                    {"status": "PENDING", "time": "2026-11-23T11:10:00Z"},
                    {"status": "UNRESOLVED", "context": "UNDERPAID", "time": "2026-11-23T12:00:00Z"},
                ],
            },
        },
    }  # fmt: skip
    transition = map_event(_provider_event(coinbase.normalize(json.dumps(body).encode())), "EUR")
    assert (transition.kind, transition.status, transition.context) == (
        K.FUNDS_UNRESOLVED,
        S.UNRESOLVED,
        "UNDERPAID",
    )
    # The normalizer does not (yet) report what was paid: the amount stays unknown.
    assert transition.amount is None
    assert transition.payment_object_id == "charge-1"


def test_a_coinbase_underpaid_charge_body_reports_what_was_paid() -> None:
    body = {
        "id": "delivery-2",
        "event": {
            "id": "evt-cb-2", "type": "charge:failed", "created_at": "2026-11-23T12:00:00Z",
            "data": {
                "id": "charge-2", "code": "ABCD1235",
                "metadata": {"payledger_payment_id": "pay_2"},
                "pricing": {"local": {"amount": "10.00", "currency": "EUR"}},
                "payments": [
                    {"status": "CONFIRMED", "value": {
                        "local": {"amount": "6.00", "currency": "EUR"},
                        "crypto": {"amount": "0.00006", "currency": "BTC"},
                    }},
                ],
                "timeline": [
                    {"status": "NEW", "time": "2026-11-23T11:00:00Z"},
                    {"status": "UNRESOLVED", "context": "UNDERPAID", "time": "2026-11-23T12:00:00Z"},
                ],
            },
        },
    }  # fmt: skip
    normalized = coinbase.normalize(json.dumps(body).encode())
    assert normalized.payment_id == "pay_2"
    transition = map_event(_provider_event(normalized), "EUR")
    assert (transition.kind, transition.amount) == (K.FUNDS_UNRESOLVED, Money(600, "EUR"))
