"""The unified payment status, its progress order and its terminal statuses.

One status model for every provider (``transitions`` maps each provider's own
statuses and events onto it). Statuses are ordered by *progress*: a payment
never moves to a status of lower rank, except through one of the documented
exits below. An event that would move a payment backwards without moving any
money is *stale* (an out-of-order delivery): it is recorded in the timeline
and changes nothing.

Rank (higher = further along)::

    0  AWAITING_PAYMENT_METHOD   created; no payment method or no payment yet
    1  REQUIRES_CUSTOMER_ACTION  3-D Secure, redirect, bank transfer to send...
    2  PROCESSING                paid, the provider has not settled the outcome
    2  FAILED                    the last attempt failed (Stripe: retryable)
    3  AUTHORIZED                funds reserved, awaiting capture
    3  UNRESOLVED                crypto: paid, but not as asked (under/over/late)
    4  PARTIALLY_CAPTURED        captured in part, the authorization stays open
    5  SUCCEEDED                 captured; no further capture possible
    6  PARTIALLY_REFUNDED        part of the captured amount went back
    6  DISPUTED                  a dispute (chargeback) is open
    7  REFUNDED                  everything captured went back (refund or lost dispute)
    8  CANCELED                  voided before any capture
    8  EXPIRED                   the customer never paid in time

``CANCELED`` and ``EXPIRED`` rank above everything: they end a payment that
never captured, so any later event that moves no money is stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class PaymentStatus(StrEnum):
    AWAITING_PAYMENT_METHOD = "AWAITING_PAYMENT_METHOD"
    REQUIRES_CUSTOMER_ACTION = "REQUIRES_CUSTOMER_ACTION"
    PROCESSING = "PROCESSING"
    AUTHORIZED = "AUTHORIZED"
    PARTIALLY_CAPTURED = "PARTIALLY_CAPTURED"
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    DISPUTED = "DISPUTED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    UNRESOLVED = "UNRESOLVED"


S = PaymentStatus

RANK: Final[Mapping[PaymentStatus, int]] = MappingProxyType(
    {
        S.AWAITING_PAYMENT_METHOD: 0,
        S.REQUIRES_CUSTOMER_ACTION: 1,
        S.PROCESSING: 2,
        S.FAILED: 2,
        S.AUTHORIZED: 3,
        S.UNRESOLVED: 3,
        S.PARTIALLY_CAPTURED: 4,
        S.SUCCEEDED: 5,
        S.PARTIALLY_REFUNDED: 6,
        S.DISPUTED: 6,
        S.REFUNDED: 7,
        S.CANCELED: 8,
        S.EXPIRED: 8,
    }
)

INITIAL: Final = S.AWAITING_PAYMENT_METHOD

# Final outcomes: a payment in one of these is done, except through an exit
# listed in DOCUMENTED_EXCEPTIONS.
TERMINAL: Final = frozenset(
    {S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED, S.CANCELED, S.FAILED, S.EXPIRED}
)

# Before any capture: a CANCEL command is allowed from these (if nothing was captured).
BEFORE_CAPTURE: Final = frozenset(
    {
        S.AWAITING_PAYMENT_METHOD,
        S.REQUIRES_CUSTOMER_ACTION,
        S.PROCESSING,
        S.AUTHORIZED,
        S.FAILED,
    }
)

# Every way out of a terminal status, and every allowed move to a lower rank.
# A provider's transition table may hold only these among such pairs (checked
# by the tests): they are the documented exceptions to "terminal stays terminal"
# and "never backwards".
DOCUMENTED_EXCEPTIONS: Final = frozenset(
    {
        # refunds and disputes after the capture
        (S.SUCCEEDED, S.PARTIALLY_REFUNDED),
        (S.SUCCEEDED, S.REFUNDED),
        (S.SUCCEEDED, S.DISPUTED),
        (S.PARTIALLY_REFUNDED, S.REFUNDED),
        (S.PARTIALLY_REFUNDED, S.DISPUTED),
        # a dispute ends: won gives the funds back (SUCCEEDED or PARTIALLY_REFUNDED,
        # from the totals), lost counts as a refund
        (S.DISPUTED, S.SUCCEEDED),
        (S.DISPUTED, S.PARTIALLY_CAPTURED),
        # Stripe: a failed attempt returns the PaymentIntent to
        # requires_payment_method; the customer may try again and succeed.
        (S.FAILED, S.REQUIRES_CUSTOMER_ACTION),
        (S.FAILED, S.PROCESSING),
        (S.FAILED, S.AUTHORIZED),
        (S.FAILED, S.SUCCEEDED),
        (S.FAILED, S.CANCELED),
        # PayPal: a capture of the authorization was denied.
        (S.AUTHORIZED, S.FAILED),
        # Coinbase: a payment that arrives after the charge expired (UNRESOLVED, DELAYED)
        (S.EXPIRED, S.UNRESOLVED),
    }
)


def rank(status: PaymentStatus) -> int:
    return RANK[status]


def is_backwards(current: PaymentStatus, target: PaymentStatus) -> bool:
    """True when ``target`` is an earlier stage than ``current``."""
    return RANK[target] < RANK[current]


def is_terminal(status: PaymentStatus) -> bool:
    return status in TERMINAL
