"""Account balances replayed from the postings in the log.

The same figures as the ``account_balances`` projection (debit and credit
totals per account and currency, ``balance_minor`` = debits - credits), built
from the log alone so an auditor can compare the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ledger.envelope import Posting, PostingSide


@dataclass(frozen=True, slots=True)
class AccountBalance:
    account: str
    currency: str
    debit_minor: int
    credit_minor: int

    @property
    def balance_minor(self) -> int:
        return self.debit_minor - self.credit_minor

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "currency": self.currency,
            "debit_minor": self.debit_minor,
            "credit_minor": self.credit_minor,
            "balance_minor": self.balance_minor,
        }


class Balances:
    """Debit and credit totals per (account, currency)."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str], list[int]] = {}

    def apply(self, postings: Iterable[Posting]) -> None:
        for posting in postings:
            totals = self._totals.setdefault((posting.account, posting.currency), [0, 0])
            totals[0 if posting.side is PostingSide.DEBIT else 1] += posting.amount_minor

    def merge(self, other: Balances) -> None:
        """Add another replay's totals (a replay of other partitions)."""
        for key, (debit, credit) in other._totals.items():
            totals = self._totals.setdefault(key, [0, 0])
            totals[0] += debit
            totals[1] += credit

    def get(self, account: str, currency: str) -> AccountBalance:
        debit, credit = self._totals.get((account, currency), (0, 0))
        return AccountBalance(account, currency, debit, credit)

    def rows(self) -> list[AccountBalance]:
        """Every account and currency with a posting, sorted by account then currency."""
        return [self.get(account, currency) for account, currency in sorted(self._totals)]

    def to_json(self) -> list[dict[str, Any]]:
        return [row.to_json() for row in self.rows()]
