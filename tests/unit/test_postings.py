"""The chart of accounts and the posting rules: balanced per currency, on chart accounts,
with the documented sides; and the payment event refuses postings that do not balance."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.envelope import (
    Money,
    PaymentEvent,
    PaymentEventKind,
    Posting,
    PostingSide,
    Provider,
    unbalanced_currencies,
)
from ledger.errors import EncodingError
from ledger.payments import postings
from ledger.payments.postings import (
    CHART,
    AccountType,
    LedgerInvariantError,
    PaymentAccounts,
    account_class,
    balances,
    check_balanced,
)
from ledger.payments.status import PaymentStatus

ACCOUNTS = PaymentAccounts("mer_1", Provider.STRIPE)
DEBIT, CREDIT = PostingSide.DEBIT, PostingSide.CREDIT


def legs(entries: tuple[Posting, ...]) -> list[tuple[str, str, int, str]]:
    return [(p.account, p.side.value, p.amount_minor, p.currency) for p in entries]


def test_normal_balances_follow_the_account_types() -> None:
    for line in CHART:
        if line.type in (AccountType.ASSET, AccountType.CONTRA_LIABILITY):
            assert line.normal is DEBIT, line.pattern
        else:
            assert line.normal is CREDIT, line.pattern


def test_the_documentation_lists_the_chart() -> None:
    text = (Path(postings.__file__).with_name("ACCOUNTS.md")).read_text()
    for line in CHART:
        row = re.search(rf"^\| `{re.escape(line.pattern)}` \| (.+?) \| (\w+) \|", text, re.M)
        assert row is not None, f"{line.pattern} is not in ACCOUNTS.md"
        assert row.group(1) == line.type.value
        assert row.group(2) == line.normal.value.lower()


def test_every_payment_account_is_on_the_chart() -> None:
    for provider in Provider:
        accounts = PaymentAccounts("mer_1", provider)
        for name in (
            "clearing",
            "payable",
            "fees",
            "refunds",
            "dispute_hold",
            "chargebacks",
            "suspense",
        ):
            account_class(getattr(accounts, name))
    with pytest.raises(LedgerInvariantError):
        account_class("merchant:mer_1:petty_cash")
    with pytest.raises(LedgerInvariantError):
        account_class("provider:adyen:clearing")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            lambda: postings.capture(ACCOUNTS, Money(1000, "EUR")),
            [("provider:stripe:clearing", "DEBIT", 1000, "EUR"), ("merchant:mer_1:payable", "CREDIT", 1000, "EUR")],
        ),
        (
            lambda: postings.fee_charged(ACCOUNTS, Money(30, "USD")),
            [("merchant:mer_1:fees", "DEBIT", 30, "USD"), ("provider:stripe:clearing", "CREDIT", 30, "USD")],
        ),
        (
            lambda: postings.fee_returned(ACCOUNTS, Money(10, "EUR")),
            [("provider:stripe:clearing", "DEBIT", 10, "EUR"), ("merchant:mer_1:fees", "CREDIT", 10, "EUR")],
        ),
        (
            lambda: postings.refund(ACCOUNTS, Money(400, "EUR")),
            [("merchant:mer_1:refunds", "DEBIT", 400, "EUR"), ("provider:stripe:clearing", "CREDIT", 400, "EUR")],
        ),
        (
            lambda: postings.dispute_opened(ACCOUNTS, Money(500, "EUR")),
            [("merchant:mer_1:dispute_hold", "DEBIT", 500, "EUR"), ("provider:stripe:clearing", "CREDIT", 500, "EUR")],
        ),
        (
            lambda: postings.dispute_won(ACCOUNTS, Money(500, "EUR")),
            [("provider:stripe:clearing", "DEBIT", 500, "EUR"), ("merchant:mer_1:dispute_hold", "CREDIT", 500, "EUR")],
        ),
        (
            lambda: postings.funds_unresolved(ACCOUNTS, Money(950, "EUR")),
            [("provider:stripe:clearing", "DEBIT", 950, "EUR"), ("merchant:mer_1:suspense", "CREDIT", 950, "EUR")],
        ),
        (
            lambda: postings.funds_resolved(ACCOUNTS, Money(950, "EUR"), Money(50, "EUR")),
            [
                ("merchant:mer_1:suspense", "DEBIT", 950, "EUR"), ("merchant:mer_1:payable", "CREDIT", 950, "EUR"),
                ("provider:stripe:clearing", "DEBIT", 50, "EUR"), ("merchant:mer_1:payable", "CREDIT", 50, "EUR"),
            ],
        ),
    ],
)  # fmt: skip
def test_posting_rules(rule, expected) -> None:  # type: ignore[no-untyped-def]
    entries = rule()
    assert legs(entries) == expected
    check_balanced(entries)


@pytest.mark.parametrize(
    ("lost", "held", "expected"),
    [
        # All of the hold is lost.
        (500, 500, [("merchant:mer_1:chargebacks", "DEBIT", 500), ("merchant:mer_1:dispute_hold", "CREDIT", 500)]),
        # Less is lost than was held: the rest is reinstated.
        (300, 500, [
            ("merchant:mer_1:chargebacks", "DEBIT", 300), ("merchant:mer_1:dispute_hold", "CREDIT", 300),
            ("provider:stripe:clearing", "DEBIT", 200), ("merchant:mer_1:dispute_hold", "CREDIT", 200),
        ]),
        # Nothing was held (an inquiry, or a reversal): straight out of clearing.
        (400, 0, [("merchant:mer_1:chargebacks", "DEBIT", 400), ("provider:stripe:clearing", "CREDIT", 400)]),
    ],
)  # fmt: skip
def test_dispute_lost(lost: int, held: int, expected: list[tuple[str, str, int]]) -> None:
    entries = postings.dispute_lost(ACCOUNTS, Money(lost, "EUR"), Money(held, "EUR"))
    assert [(p.account, p.side.value, p.amount_minor) for p in entries] == expected
    check_balanced(entries)
    net = balances(entries)
    assert net.get(("merchant:mer_1:dispute_hold", "EUR"), 0) == -held, "the hold ends at zero"
    assert net[("merchant:mer_1:chargebacks", "EUR")] == lost


def test_zero_moves_nothing_and_negative_is_a_bug() -> None:
    assert postings.capture(ACCOUNTS, Money(0, "EUR")) == ()
    with pytest.raises(LedgerInvariantError):
        postings.refund(ACCOUNTS, Money(-1, "EUR"))
    with pytest.raises(LedgerInvariantError):
        postings.dispute_lost(ACCOUNTS, Money(1, "EUR"), Money(1, "USD"))


def test_every_rule_balances_for_any_amounts() -> None:
    rng = random.Random("payledger-postings")
    for _ in range(2_000):
        amount = Money(rng.randint(0, 10**15), rng.choice(["EUR", "JPY", "KWD"]))
        other = Money(rng.randint(0, 10**15), amount.currency)
        entries = (
            postings.capture(ACCOUNTS, amount)
            + postings.fee_charged(ACCOUNTS, other)
            + postings.refund(ACCOUNTS, other)
            + postings.dispute_lost(ACCOUNTS, amount, other)
            + postings.funds_resolved(ACCOUNTS, amount, other)
        )
        check_balanced(entries)
        assert unbalanced_currencies(entries) == []


def test_check_balanced_refuses_unbalanced_and_unknown_accounts() -> None:
    one_sided = (Posting("provider:stripe:clearing", DEBIT, 5, "EUR"),)
    with pytest.raises(LedgerInvariantError, match="EUR"):
        check_balanced(one_sided)
    # Balanced in total but not per currency.
    mixed = (
        Posting("provider:stripe:clearing", DEBIT, 5, "EUR"),
        Posting("merchant:mer_1:payable", CREDIT, 5, "USD"),
    )
    with pytest.raises(LedgerInvariantError, match="EUR, USD"):
        check_balanced(mixed)
    off_chart = (
        Posting("provider:stripe:clearing", DEBIT, 5, "EUR"),
        Posting("merchant:mer_1:tips", CREDIT, 5, "EUR"),
    )
    with pytest.raises(LedgerInvariantError, match="chart"):
        check_balanced(off_chart)


def test_postings_hold_positive_amounts_on_named_accounts() -> None:
    with pytest.raises(EncodingError):
        Posting("provider:stripe:clearing", DEBIT, 0, "EUR")
    with pytest.raises(EncodingError):
        Posting("provider:stripe:clearing", DEBIT, -5, "EUR")
    with pytest.raises(EncodingError):
        Posting("not an account", DEBIT, 5, "EUR")
    with pytest.raises(EncodingError):
        Posting("provider:stripe:clearing", DEBIT, 5, "eur")


def _payment_event(entries: tuple[Posting, ...], **overrides: object) -> PaymentEvent:
    fields: dict[str, object] = {
        "payment_id": "pay_1",
        "merchant_id": "mer_1",
        "provider": Provider.STRIPE,
        "kind": PaymentEventKind.CAPTURED,
        "status_before": PaymentStatus.AUTHORIZED,
        "status_after": PaymentStatus.SUCCEEDED,
        "payment_amount": Money(1000, "EUR"),
        "authorized_minor": 1000,
        "captured_minor": 1000,
        "postings": entries,
    }
    fields.update(overrides)
    return PaymentEvent(**fields)  # type: ignore[arg-type]


def test_a_payment_event_refuses_postings_that_do_not_balance() -> None:
    good = postings.capture(ACCOUNTS, Money(1000, "EUR"))
    event = _payment_event(good)
    assert PaymentEvent.from_avro(event.to_avro()) == event
    with pytest.raises(EncodingError, match="do not balance"):
        _payment_event(good[:1])
    with pytest.raises(EncodingError, match="do not balance"):
        PaymentEvent.from_avro({**event.to_avro(), "postings": [good[0].to_avro()]})
    with pytest.raises(EncodingError, match="stale"):
        _payment_event(good, stale=True)
    with pytest.raises(EncodingError, match="non-negative"):
        _payment_event((), refunded_minor=-1)


def test_balances_are_signed_by_normal_side() -> None:
    entries = (
        postings.capture(ACCOUNTS, Money(1000, "EUR"))
        + postings.fee_charged(ACCOUNTS, Money(30, "EUR"))
        + postings.refund(ACCOUNTS, Money(200, "EUR"))
    )
    net = balances(entries)
    assert net[("provider:stripe:clearing", "EUR")] == 770
    assert net[("merchant:mer_1:payable", "EUR")] == 1000
    assert net[("merchant:mer_1:fees", "EUR")] == 30
    assert net[("merchant:mer_1:refunds", "EUR")] == 200
    # What we owe the merchant equals what the provider holds for them.
    owed = (
        net[("merchant:mer_1:payable", "EUR")]
        - net[("merchant:mer_1:fees", "EUR")]
        - net[("merchant:mer_1:refunds", "EUR")]
    )
    assert owed == net[("provider:stripe:clearing", "EUR")]


def test_the_checks_hold_under_python_dash_o() -> None:
    program = (
        "from ledger.envelope import Posting, PostingSide\n"
        "from ledger.payments.postings import LedgerInvariantError, check_balanced\n"
        "try:\n"
        "    check_balanced([Posting('provider:stripe:clearing', PostingSide.DEBIT, 5, 'EUR')])\n"
        "except LedgerInvariantError:\n"
        "    print('refused')\n"
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", program],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert result.stdout.strip() == "refused"
