"""The chart of accounts and the double-entry rules of every money movement.

The chart is documented for people in ``ACCOUNTS.md`` (next to this file);
``CHART`` is the same table as data, and the tests check that every posting
the rules produce lands on an account of the chart.

Every rule returns the postings of one movement; ``check_balanced`` then
holds for the postings of every payment event: per currency, the debits equal
the credits. A rule that would break that, or post a non-positive amount, is
a bug, and raises ``LedgerInvariantError`` (an explicit check, not an
``assert``, so that it also holds under ``python -O``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from ledger.envelope import Money, Posting, PostingSide, Provider, unbalanced_currencies

DEBIT = PostingSide.DEBIT
CREDIT = PostingSide.CREDIT


class LedgerInvariantError(RuntimeError):
    """A broken ledger invariant: always a bug in payledger, never bad input."""


class AccountType(StrEnum):
    ASSET = "asset"
    LIABILITY = "liability"
    CONTRA_LIABILITY = "contra-liability"  # reduces a liability: a debit balance


@dataclass(frozen=True, slots=True)
class AccountClass:
    """One line of the chart: a family of accounts, one per provider or merchant."""

    pattern: str  # as documented: <provider> is the lower-case provider name
    type: AccountType
    normal: PostingSide  # the side its balance normally sits on
    meaning: str

    @property
    def regex(self) -> re.Pattern[str]:
        escaped = re.escape(self.pattern)
        escaped = escaped.replace(re.escape("<provider>"), "(?:stripe|paypal|coinbase)")
        escaped = escaped.replace(re.escape("<merchant>"), "[a-z0-9_]{3,64}")
        return re.compile(f"^{escaped}$")


CHART: Final[tuple[AccountClass, ...]] = (
    AccountClass(
        "provider:<provider>:clearing",
        AccountType.ASSET,
        DEBIT,
        "Funds the provider collected for our merchants and has not paid out: up with "
        "captures, down with fees, refunds, dispute withdrawals and (later) payouts.",
    ),
    AccountClass(
        "merchant:<merchant>:payable",
        AccountType.LIABILITY,
        CREDIT,
        "Gross captured sales we owe the merchant.",
    ),
    AccountClass(
        "merchant:<merchant>:fees",
        AccountType.CONTRA_LIABILITY,
        DEBIT,
        "Provider fees the merchant bears (net of fees the provider gave back).",
    ),
    AccountClass(
        "merchant:<merchant>:refunds",
        AccountType.CONTRA_LIABILITY,
        DEBIT,
        "Refunds returned to customers.",
    ),
    AccountClass(
        "merchant:<merchant>:dispute_hold",
        AccountType.CONTRA_LIABILITY,
        DEBIT,
        "Funds the provider withdrew for open disputes; zero once every dispute is closed.",
    ),
    AccountClass(
        "merchant:<merchant>:chargebacks",
        AccountType.CONTRA_LIABILITY,
        DEBIT,
        "Disputes lost: funds that went back to the customer through the card network "
        "or the provider.",
    ),
    AccountClass(
        "merchant:<merchant>:suspense",
        AccountType.LIABILITY,
        CREDIT,
        "Crypto funds received but not accepted: under-, over-, late or multiple "
        "payments until the merchant resolves them.",
    ),
)


def account_class(account: str) -> AccountClass:
    """The chart line ``account`` belongs to; ``LedgerInvariantError`` when none."""
    for line in CHART:
        if line.regex.match(account):
            return line
    raise LedgerInvariantError(f"{account!r} is not in the chart of accounts")


@dataclass(frozen=True, slots=True)
class PaymentAccounts:
    """The accounts one payment posts to: its merchant's and its provider's."""

    merchant_id: str
    provider: Provider

    @property
    def clearing(self) -> str:
        return f"provider:{self.provider.value.lower()}:clearing"

    @property
    def payable(self) -> str:
        return f"merchant:{self.merchant_id}:payable"

    @property
    def fees(self) -> str:
        return f"merchant:{self.merchant_id}:fees"

    @property
    def refunds(self) -> str:
        return f"merchant:{self.merchant_id}:refunds"

    @property
    def dispute_hold(self) -> str:
        return f"merchant:{self.merchant_id}:dispute_hold"

    @property
    def chargebacks(self) -> str:
        return f"merchant:{self.merchant_id}:chargebacks"

    @property
    def suspense(self) -> str:
        return f"merchant:{self.merchant_id}:suspense"


def transfer(debit: str, credit: str, amount_minor: int, currency: str) -> tuple[Posting, ...]:
    """One debit and one credit of ``amount_minor``; nothing when the amount is zero."""
    if amount_minor < 0:
        raise LedgerInvariantError(f"negative transfer {amount_minor} {currency}")
    if amount_minor == 0:
        return ()
    return (
        Posting(debit, DEBIT, amount_minor, currency),
        Posting(credit, CREDIT, amount_minor, currency),
    )


# --------------------------------------------------------------------------
# The rules. Authorizations post nothing: no money moved (the authorized
# amount is a running total on the payment event, a memo).


def capture(accounts: PaymentAccounts, amount: Money) -> tuple[Posting, ...]:
    """The provider collected ``amount`` for the merchant."""
    return transfer(accounts.clearing, accounts.payable, amount.amount_minor, amount.currency)


def fee_charged(accounts: PaymentAccounts, fee: Money) -> tuple[Posting, ...]:
    """The provider kept ``fee`` out of the funds it holds; the merchant bears it."""
    return transfer(accounts.fees, accounts.clearing, fee.amount_minor, fee.currency)


def fee_returned(accounts: PaymentAccounts, fee: Money) -> tuple[Posting, ...]:
    """The provider gave part of a fee back (PayPal, on a refund)."""
    return transfer(accounts.clearing, accounts.fees, fee.amount_minor, fee.currency)


def refund(accounts: PaymentAccounts, amount: Money) -> tuple[Posting, ...]:
    """``amount`` went back to the customer out of the provider's funds."""
    return transfer(accounts.refunds, accounts.clearing, amount.amount_minor, amount.currency)


def dispute_opened(accounts: PaymentAccounts, held: Money) -> tuple[Posting, ...]:
    """The provider withdrew ``held`` while the dispute is open."""
    return transfer(accounts.dispute_hold, accounts.clearing, held.amount_minor, held.currency)


def dispute_won(accounts: PaymentAccounts, released: Money) -> tuple[Posting, ...]:
    """The provider reinstated what it held."""
    return transfer(
        accounts.clearing, accounts.dispute_hold, released.amount_minor, released.currency
    )


def dispute_lost(accounts: PaymentAccounts, lost: Money, held: Money) -> tuple[Posting, ...]:
    """``lost`` went to the customer: out of the hold first, the rest out of clearing.

    Whatever the hold had beyond ``lost`` is reinstated; the hold ends at zero.
    """
    if lost.currency != held.currency:
        raise LedgerInvariantError("a dispute is in one currency")
    currency = lost.currency
    from_hold = min(lost.amount_minor, held.amount_minor)
    return (
        transfer(accounts.chargebacks, accounts.dispute_hold, from_hold, currency)
        + transfer(accounts.chargebacks, accounts.clearing, lost.amount_minor - from_hold, currency)
        + transfer(
            accounts.clearing, accounts.dispute_hold, held.amount_minor - from_hold, currency
        )
    )


def funds_unresolved(accounts: PaymentAccounts, amount: Money) -> tuple[Posting, ...]:
    """Crypto received but not accepted: it waits in the merchant's suspense account."""
    return transfer(accounts.clearing, accounts.suspense, amount.amount_minor, amount.currency)


def funds_resolved(
    accounts: PaymentAccounts, from_suspense: Money, received: Money
) -> tuple[Posting, ...]:
    """The merchant accepted the funds: suspense (and any not seen yet) become sales."""
    return transfer(
        accounts.suspense, accounts.payable, from_suspense.amount_minor, from_suspense.currency
    ) + capture(accounts, received)


# --------------------------------------------------------------------------
# Checks.


def check_balanced(postings: Iterable[Posting]) -> None:
    """Per currency, debits equal credits, and every account is in the chart."""
    legs = tuple(postings)
    unbalanced = unbalanced_currencies(legs)
    if unbalanced:
        raise LedgerInvariantError(f"postings do not balance in {', '.join(unbalanced)}")
    for posting in legs:
        if posting.amount_minor <= 0:
            raise LedgerInvariantError(f"non-positive posting on {posting.account}")
        account_class(posting.account)


def balances(postings: Iterable[Posting]) -> dict[tuple[str, str], int]:
    """Net balance per (account, currency), positive on the account's normal side."""
    net: dict[tuple[str, str], int] = {}
    for posting in postings:
        normal = account_class(posting.account).normal
        signed = posting.amount_minor if posting.side is normal else -posting.amount_minor
        key = (posting.account, posting.currency)
        net[key] = net.get(key, 0) + signed
    return net
