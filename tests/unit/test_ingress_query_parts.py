"""The query API's pure parts: names, balance arithmetic, cursors, the schema setting."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import get_args

import pytest
from pydantic import ValidationError

from ingress import queries
from ingress.problems import Problem
from ingress.queries import (
    Balance,
    EventKindName,
    ListPosition,
    PaymentListQuery,
    ProviderName,
    StatusName,
    balance_of,
    decode_list_cursor,
    decode_timeline_cursor,
    encode_list_cursor,
    encode_timeline_cursor,
    list_binding,
    merchant_accounts,
)
from ledger.config import Settings
from ledger.envelope import PaymentEventKind, Provider
from ledger.payments.postings import CHART
from ledger.payments.status import PaymentStatus

WHEN = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
PAYMENT = "pay_" + "ab" * 16


def _raw_cursor(document: object) -> str:
    raw = json.dumps(document).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Names ----------------------------------------------------------------------------------


def test_the_api_names_are_the_ledger_enums_in_lower_case() -> None:
    assert set(get_args(StatusName)) == {status.value.lower() for status in PaymentStatus}
    assert set(get_args(ProviderName)) == {provider.value.lower() for provider in Provider}
    assert set(get_args(EventKindName)) == {kind.value.lower() for kind in PaymentEventKind}


def test_the_balance_has_one_field_per_merchant_account_of_the_chart() -> None:
    merchant_lines = {
        line.pattern.split(":")[-1] for line in CHART if line.pattern.startswith("merchant:")
    }
    fields = {name.removesuffix("_minor") for name in Balance.model_fields} - {
        "currency",
        "net_payable",
    }
    assert fields == merchant_lines == set(queries.MERCHANT_ACCOUNT_CLASSES)
    assert merchant_accounts("m_shop") == {
        f"merchant:m_shop:{name}": name for name in merchant_lines
    }


# Balances -------------------------------------------------------------------------------


def test_a_balance_is_positive_on_each_normal_side_and_nets_to_what_is_owed() -> None:
    # Debits minus credits per class: captured 1000 and 950 (payable, credit
    # side), a 59 fee, 300 refunded, 120 held for a dispute, 40 lost, 25 in suspense.
    balance = balance_of(
        "EUR",
        {
            "payable": -1950,
            "fees": 59,
            "refunds": 300,
            "dispute_hold": 120,
            "chargebacks": 40,
            "suspense": -25,
        },
    )
    assert balance == Balance(
        currency="EUR",
        net_payable_minor=1950 + 25 - 59 - 300 - 120 - 40,
        payable_minor=1950,
        suspense_minor=25,
        fees_minor=59,
        refunds_minor=300,
        dispute_hold_minor=120,
        chargebacks_minor=40,
    )


def test_absent_classes_are_zero_and_a_merchant_can_owe() -> None:
    balance = balance_of("USD", {"fees": 50})
    assert balance.net_payable_minor == -50
    assert (balance.payable_minor, balance.refunds_minor, balance.suspense_minor) == (0, 0, 0)


def test_an_account_outside_the_merchant_chart_is_refused() -> None:
    with pytest.raises(ValueError, match="clearing"):
        balance_of("EUR", {"clearing": 10})


# Cursors --------------------------------------------------------------------------------


def _query(**fields: object) -> PaymentListQuery:
    return PaymentListQuery.model_validate(fields)


def test_a_list_cursor_round_trips_to_the_microsecond() -> None:
    binding = list_binding("m_shop", _query())
    position = ListPosition(WHEN.astimezone(timezone(timedelta(hours=2))), PAYMENT)
    token = encode_list_cursor(position, binding)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    decoded = decode_list_cursor(token, binding)
    assert decoded == ListPosition(WHEN, PAYMENT)
    assert decoded.created_at.utcoffset() == timedelta(0)


def test_the_binding_is_the_merchant_and_the_filters_not_their_spelling() -> None:
    gte = datetime(2026, 1, 1, tzinfo=UTC)
    same = [
        _query(status=["succeeded", "refunded"], created_gte=gte, limit=5),
        _query(status=["refunded", "succeeded", "refunded"], created_gte=gte.astimezone()),
    ]
    assert len({list_binding("m_shop", query) for query in same}) == 1
    different = [
        list_binding("m_shop", same[0]),
        list_binding("m_other", same[0]),
        list_binding("m_shop", _query(status=["succeeded"], created_gte=gte)),
        list_binding("m_shop", _query(status=["succeeded", "refunded"])),
        list_binding("m_shop", _query(provider=["stripe"])),
        list_binding("m_shop", _query(created_lt=gte)),
    ]
    assert len(set(different)) == len(different)


def test_a_cursor_of_other_filters_or_another_merchant_is_a_mismatch() -> None:
    token = encode_list_cursor(ListPosition(WHEN, PAYMENT), list_binding("m_shop", _query()))
    for binding in (
        list_binding("m_other", _query()),
        list_binding("m_shop", _query(provider=["paypal"])),
    ):
        with pytest.raises(Problem) as raised:
            decode_list_cursor(token, binding)
        assert (raised.value.status, raised.value.slug) == (400, "cursor-mismatch")


GOOD_LIST = {"v": 1, "k": "payments", "t": WHEN.isoformat(), "p": PAYMENT, "b": "x"}


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!!",
        "a",  # not base64 of anything
        "a" * (queries.CURSOR_CHARS_MAX + 1),
        base64.urlsafe_b64encode(b"\xff\xfe not utf-8").decode().rstrip("="),
        base64.urlsafe_b64encode(b"not json").decode().rstrip("="),
        _raw_cursor([1, 2, 3]),
        _raw_cursor({**GOOD_LIST, "v": 2}),
        _raw_cursor({**GOOD_LIST, "k": "events"}),
        _raw_cursor({**GOOD_LIST, "extra": 1}),
        _raw_cursor({key: value for key, value in GOOD_LIST.items() if key != "p"}),
        _raw_cursor({**GOOD_LIST, "t": "2026-11-23T12:00:00"}),  # no offset
        _raw_cursor({**GOOD_LIST, "t": "yesterday"}),
        _raw_cursor({**GOOD_LIST, "t": 1700000000}),
        _raw_cursor({**GOOD_LIST, "p": "pay_'; DROP TABLE payments; --"}),
        _raw_cursor({**GOOD_LIST, "p": "x" * 65}),
        _raw_cursor({**GOOD_LIST, "p": None}),
        _raw_cursor({**GOOD_LIST, "b": 7}),
    ],
)
def test_a_list_cursor_that_is_not_ours_is_invalid(token: str) -> None:
    with pytest.raises(Problem) as raised:
        decode_list_cursor(token, "x")
    assert (raised.value.status, raised.value.slug) == (400, "invalid-cursor")


def test_a_timeline_cursor_round_trips_and_names_its_payment() -> None:
    token = encode_timeline_cursor(PAYMENT, 7)
    assert decode_timeline_cursor(token, PAYMENT) == 7
    with pytest.raises(Problem) as raised:
        decode_timeline_cursor(token, "pay_" + "cd" * 16)
    assert raised.value.slug == "cursor-mismatch"
    # A list cursor is no timeline cursor, and the other way round.
    with pytest.raises(Problem, match="invalid-cursor"):
        decode_timeline_cursor(encode_list_cursor(ListPosition(WHEN, PAYMENT), "x"), PAYMENT)
    with pytest.raises(Problem, match="invalid-cursor"):
        decode_list_cursor(token, "x")


@pytest.mark.parametrize("sequence", [-1, True, 1.5, "3", None, 2**63])
def test_a_timeline_cursor_with_a_bad_sequence_is_invalid(sequence: object) -> None:
    token = _raw_cursor({"v": 1, "k": "events", "p": PAYMENT, "s": sequence})
    with pytest.raises(Problem) as raised:
        decode_timeline_cursor(token, PAYMENT)
    assert raised.value.slug == "invalid-cursor"


# Query parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"limit": 0},
        {"limit": queries.PAYMENTS_PAGE_MAX + 1},
        {"status": ["SUCCEEDED"]},
        {"provider": ["visa"]},
        {"created_gte": datetime(2026, 1, 1)},  # no offset
        {"cursor": "not/base64url"},
        {"staus": ["succeeded"]},
    ],
)
def test_list_parameters_are_checked(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PaymentListQuery.model_validate(fields)


# The setting ------------------------------------------------------------------------------


def test_the_projections_schema_setting() -> None:
    assert Settings().projections_schema == "projections"
    assert Settings(projections_schema="pt_0123abc").projections_schema == "pt_0123abc"
    assert Settings(projections_schema="_" + "a" * 62).projections_schema == "_" + "a" * 62


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Projections",
        "1projections",
        "pro-jections",
        'x"; DROP SCHEMA public; --',
        "a" * 64,
        "public",
        "information_schema",
        "pg_catalog",
        "pg_anything",
    ],
)
def test_the_projections_schema_setting_refuses_what_is_not_a_plain_schema(name: str) -> None:
    with pytest.raises(ValidationError, match="projections_schema"):
        Settings(projections_schema=name)


def test_the_binding_is_defined_at_the_far_ends_of_time() -> None:
    # astimezone(UTC) of either would leave the years datetime can hold.
    first = datetime.fromisoformat("0001-01-01T00:00:00+14:00")
    last = datetime.fromisoformat("9999-12-31T23:59:59-14:00")
    bindings = {
        list_binding("m_shop", _query(created_gte=first, created_lt=last)),
        list_binding("m_shop", _query(created_gte=first)),
        list_binding("m_shop", _query(created_lt=last)),
    }
    assert len(bindings) == 3
