"""Per-provider tables: what each provider event means, and which transitions are allowed.

Two kinds of data per provider, and no provider-specific ``if`` anywhere else:

``RULES[provider]``
    Maps a provider event, as the ingress normalizers emit it (its
    ``provider_event_type`` and its provider ``status``), to a ``Rule``: the
    unified intent (a new status and/or a money movement) and where its amount,
    fee and identifiers come from. ``map_event`` applies the rule to one event
    and returns a ``Transition``. Keys are ``(event type, status)``; ``ANY``
    matches any value. A row whose value is ``None`` names an event that is
    known and deliberately not handled: it is rejected (dead letter) so that a
    person looks at it, where guessing could lose money.

``ALLOWED[provider]``
    The allowed status changes, as ``(from, to)`` pairs. A change not in the
    table is rejected, or recorded as stale when it would move the payment
    backwards without moving money (see ``machine``).

``COMMANDS[provider]``
    The statuses from which each merchant command is accepted.

A rule may also name the provider call that the worker makes itself once the
event applies (``Rule.follow_up``, read with ``follow_up``), by the payment's
capture method: PayPal's approved order is authorized (MANUAL) or captured
(AUTOMATIC) by the merchant's side, with no command asking for it.

Sources (the event names and statuses are copied from these):

* Stripe: event types https://docs.stripe.com/api/events/types; PaymentIntent
  statuses https://docs.stripe.com/payments/paymentintents/lifecycle; dispute
  statuses https://docs.stripe.com/api/disputes/object (``status``);
  capture https://docs.stripe.com/api/payment_intents/capture; currency units
  https://docs.stripe.com/currencies.
* PayPal: webhook event names (Payments v2, Orders v2, disputes)
  https://developer.paypal.com/api/rest/webhooks/event-names/ and
  https://developer.paypal.com/docs/disputes/webhooks; dispute outcome codes
  (``dispute_outcome.outcome_code``) https://developer.paypal.com/api/customer-disputes/v1/;
  ``CHECKOUT.PAYMENT-APPROVAL.REVERSED``
  https://developer.paypal.com/payment-methods/uncaptured-payments.
* Coinbase Commerce: charge statuses and unresolved reasons (legacy API)
  https://docs.cloud.coinbase.com/commerce/docs/payment-status; charge
  timeline (``NEW``, ``SIGNED``, ``PENDING``, ``COMPLETED``) and ``charge:*``
  webhooks https://docs.cdp.coinbase.com/commerce/introduction/payment-status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from ledger import currencies
from ledger.envelope import (
    CaptureMethod,
    CommandKind,
    Money,
    PaymentEventKind,
    Provider,
    ProviderEvent,
)
from ledger.errors import EncodingError
from ledger.payments.status import BEFORE_CAPTURE, PaymentStatus

S = PaymentStatus
K = PaymentEventKind
ANY: Final = "*"


class AmountFrom(StrEnum):
    NONE = "none"
    EVENT = "event"  # ProviderEvent.amount (already ISO 4217 minor units)
    STRIPE_FIELD = "stripe-field"  # fields[amount_field]: an integer in Stripe's unit
    DECIMAL_FIELD = "decimal-field"  # fields[amount_field]: decimal text, payment currency


class FeeEffect(StrEnum):
    NONE = "none"
    CHARGED = "charged"  # ProviderEvent.fee is a fee the provider took
    RETURNED = "returned"  # ProviderEvent.fee is a fee the provider gave back (PayPal refunds)


class FollowUp(StrEnum):
    """A provider call the worker makes itself once an event applies (no command asks for it)."""

    AUTHORIZE = "authorize"  # the approved payment becomes an authorization, captured later
    CAPTURE = "capture"  # the approved payment is captured in full


# (capture method, the call it needs), for Rule.follow_up.
FollowUps = tuple[tuple[CaptureMethod, FollowUp], ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """What one kind of provider event means. See the module docstring."""

    kind: PaymentEventKind
    status: PaymentStatus | None = None  # explicit target; None: derived from the totals
    amount_from: AmountFrom = AmountFrom.NONE
    amount_field: str | None = None
    amount_required: bool = False
    cumulative: bool = False  # the amount is the provider's running total, not a delta
    fee: FeeEffect = FeeEffect.NONE
    hold: bool = True  # DISPUTE_OPENED: the provider withdraws the disputed funds
    final_field: str | None = None  # CAPTURED: fields[...] == "false" leaves capture open
    movement: str | None = None  # delta movements are deduplicated on "<movement>:<object id>"
    names_payment: bool = False  # provider_object_id is the payment-level object
    payment_field: str | None = None  # fields[...] names the payment-level object
    dispute: bool = False  # provider_object_id is a dispute id
    follow_up: FollowUps = ()  # the call the worker makes next, per capture method


@dataclass(frozen=True, slots=True)
class Transition:
    """One provider event, read through its provider's table: a provider-independent intent."""

    kind: PaymentEventKind
    key: tuple[str, str]  # the table row that matched
    status: PaymentStatus | None = None
    amount: Money | None = None
    cumulative: bool = False
    fee: Money | None = None
    fee_returned: bool = False
    final_capture: bool = True
    hold: bool = True
    movement_key: str | None = None
    payment_object_id: str | None = None
    dispute_id: str | None = None
    context: str | None = None


class MappingError(Exception):
    """A provider event that the tables cannot turn into a transition. ``reason`` is a code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------
# Stripe: PaymentIntents, charges (refunds, fees) and disputes.

_PI = "payment_intent"  # charges, refunds and disputes name their PaymentIntent
_CHARGE_FEE = Rule(K.FEE_CHARGED, fee=FeeEffect.CHARGED, movement="fee", payment_field=_PI)

STRIPE_RULES: Final[Mapping[tuple[str, str], Rule | None]] = MappingProxyType(
    {
        # payment_intent.created carries the PaymentIntent's first status.
        ("payment_intent.created", "requires_payment_method"): Rule(
            K.STATUS_CHANGED, S.AWAITING_PAYMENT_METHOD, names_payment=True
        ),
        ("payment_intent.created", "requires_confirmation"): Rule(
            K.STATUS_CHANGED, S.AWAITING_PAYMENT_METHOD, names_payment=True
        ),
        ("payment_intent.created", "requires_action"): Rule(
            K.STATUS_CHANGED, S.REQUIRES_CUSTOMER_ACTION, names_payment=True
        ),
        ("payment_intent.requires_action", ANY): Rule(
            K.STATUS_CHANGED, S.REQUIRES_CUSTOMER_ACTION, names_payment=True
        ),
        # customer_balance (bank transfer) funded in part: the customer must send the rest.
        ("payment_intent.partially_funded", ANY): Rule(
            K.STATUS_CHANGED, S.REQUIRES_CUSTOMER_ACTION, names_payment=True
        ),
        ("payment_intent.processing", ANY): Rule(
            K.STATUS_CHANGED, S.PROCESSING, names_payment=True
        ),
        # status requires_capture; amount_capturable is what may be captured.
        ("payment_intent.amount_capturable_updated", ANY): Rule(
            K.AUTHORIZED,
            S.AUTHORIZED,
            amount_from=AmountFrom.STRIPE_FIELD,
            amount_field="amount_capturable",
            cumulative=True,
            names_payment=True,
        ),
        # amount_received is the running total captured; a capture with
        # amount_to_capture < amount releases the rest, so it is always final.
        ("payment_intent.succeeded", ANY): Rule(
            K.CAPTURED,
            amount_from=AmountFrom.STRIPE_FIELD,
            amount_field="amount_received",
            cumulative=True,
            names_payment=True,
        ),
        # The PaymentIntent returns to requires_payment_method: the customer may retry.
        ("payment_intent.payment_failed", ANY): Rule(
            K.STATUS_CHANGED, S.FAILED, names_payment=True
        ),
        # Also sent when an uncaptured PaymentIntent is canceled after 7 days.
        ("payment_intent.canceled", ANY): Rule(K.CANCELED, names_payment=True),
        # Charges: the fee, when the event carries its expanded balance
        # transaction; the status comes from the PaymentIntent events.
        ("charge.succeeded", ANY): _CHARGE_FEE,
        ("charge.captured", ANY): _CHARGE_FEE,
        ("charge.updated", ANY): _CHARGE_FEE,
        ("charge.pending", ANY): Rule(K.NOTED, payment_field=_PI),
        ("charge.failed", ANY): Rule(K.NOTED, payment_field=_PI),
        ("charge.expired", ANY): Rule(K.NOTED, payment_field=_PI),
        # amount_refunded is the charge's running total refunded.
        ("charge.refunded", ANY): Rule(
            K.REFUNDED,
            amount_from=AmountFrom.STRIPE_FIELD,
            amount_field="amount_refunded",
            amount_required=True,
            cumulative=True,
            payment_field=_PI,
        ),
        ("charge.refund.updated", ANY): Rule(K.NOTED, payment_field=_PI),
        # A refund that failed after charge.refunded gives money back: not
        # guessed (the charge's amount_refunded decreases), a person reconciles.
        ("charge.refund.updated", "failed"): None,
        ("refund.created", ANY): Rule(K.NOTED, payment_field=_PI),
        ("refund.updated", ANY): Rule(K.NOTED, payment_field=_PI),
        ("refund.failed", ANY): None,
        # Inquiries (warning_*) withdraw no funds; every other dispute does.
        ("charge.dispute.created", "warning_needs_response"): Rule(
            K.DISPUTE_OPENED, hold=False, dispute=True, payment_field=_PI
        ),
        ("charge.dispute.created", "warning_under_review"): Rule(
            K.DISPUTE_OPENED, hold=False, dispute=True, payment_field=_PI
        ),
        ("charge.dispute.created", ANY): Rule(
            K.DISPUTE_OPENED,
            amount_from=AmountFrom.EVENT,
            dispute=True,
            payment_field=_PI,
        ),
        ("charge.dispute.updated", ANY): Rule(K.NOTED, dispute=True, payment_field=_PI),
        ("charge.dispute.funds_withdrawn", ANY): Rule(K.NOTED, dispute=True, payment_field=_PI),
        ("charge.dispute.funds_reinstated", ANY): Rule(K.NOTED, dispute=True, payment_field=_PI),
        ("charge.dispute.closed", "won"): Rule(K.DISPUTE_WON, dispute=True, payment_field=_PI),
        ("charge.dispute.closed", "warning_closed"): Rule(
            K.DISPUTE_WON, dispute=True, payment_field=_PI
        ),
        # Deprecated status: the merchant refunded during an inquiry; the
        # refund itself arrives as charge.refunded.
        ("charge.dispute.closed", "charge_refunded"): Rule(
            K.DISPUTE_WON, dispute=True, payment_field=_PI
        ),
        ("charge.dispute.closed", "lost"): Rule(
            K.DISPUTE_LOST, amount_from=AmountFrom.EVENT, dispute=True, payment_field=_PI
        ),
        ("charge.dispute.closed", ANY): None,
    }
)

# --------------------------------------------------------------------------
# PayPal: Orders v2, Payments v2 (authorizations, captures, refunds), disputes.

_ORDER = "order_id"  # supplementary_data.related_ids.order_id, as the normalizer names it

PAYPAL_RULES: Final[Mapping[tuple[str, str], Rule | None]] = MappingProxyType(
    {
        # The payer approved the order; the merchant captures (intent CAPTURE)
        # or authorizes (intent AUTHORIZE) it next: the worker makes that call.
        ("CHECKOUT.ORDER.APPROVED", ANY): Rule(
            K.STATUS_CHANGED,
            S.PROCESSING,
            names_payment=True,
            follow_up=(
                (CaptureMethod.AUTOMATIC, FollowUp.CAPTURE),
                (CaptureMethod.MANUAL, FollowUp.AUTHORIZE),
            ),
        ),
        ("CHECKOUT.ORDER.COMPLETED", ANY): Rule(K.NOTED, names_payment=True),
        # Not captured within the capture window: PayPal cancels the order.
        ("CHECKOUT.PAYMENT-APPROVAL.REVERSED", ANY): Rule(
            K.STATUS_CHANGED, S.EXPIRED, names_payment=True
        ),
        ("PAYMENT.AUTHORIZATION.CREATED", ANY): Rule(
            K.AUTHORIZED,
            S.AUTHORIZED,
            amount_from=AmountFrom.EVENT,
            cumulative=True,
            payment_field=_ORDER,
        ),
        # Voided by the merchant or at the end of its validity (30 days).
        ("PAYMENT.AUTHORIZATION.VOIDED", ANY): Rule(K.CANCELED, payment_field=_ORDER),
        # One capture of an authorization: a delta; final_capture=false keeps
        # the authorization open for more captures.
        ("PAYMENT.CAPTURE.COMPLETED", ANY): Rule(
            K.CAPTURED,
            amount_from=AmountFrom.EVENT,
            amount_required=True,
            fee=FeeEffect.CHARGED,
            final_field="final_capture",
            movement="capture",
            payment_field=_ORDER,
        ),
        # Pending for compliance or risk; the money moves with COMPLETED.
        ("PAYMENT.CAPTURE.PENDING", ANY): Rule(K.NOTED, payment_field=_ORDER),
        ("PAYMENT.CAPTURE.DENIED", ANY): Rule(K.STATUS_CHANGED, S.FAILED, payment_field=_ORDER),
        ("PAYMENT.CAPTURE.DECLINED", ANY): Rule(K.STATUS_CHANGED, S.FAILED, payment_field=_ORDER),
        # The resource is the refund: its amount is this refund's, and
        # seller_payable_breakdown.paypal_fee is the fee PayPal gives back.
        ("PAYMENT.CAPTURE.REFUNDED", ANY): Rule(
            K.REFUNDED,
            amount_from=AmountFrom.EVENT,
            amount_required=True,
            fee=FeeEffect.RETURNED,
            movement="refund",
            payment_field=_ORDER,
        ),
        # PayPal took the funds back (a chargeback or reversal): a lost dispute.
        ("PAYMENT.CAPTURE.REVERSED", ANY): Rule(
            K.DISPUTE_LOST,
            amount_from=AmountFrom.EVENT,
            amount_required=True,
            movement="reversal",
            payment_field=_ORDER,
        ),
        ("CUSTOMER.DISPUTE.CREATED", ANY): Rule(
            K.DISPUTE_OPENED, amount_from=AmountFrom.EVENT, dispute=True
        ),
        ("CUSTOMER.DISPUTE.UPDATED", ANY): Rule(K.NOTED, dispute=True),
        # The outcome is dispute_outcome.outcome_code, read from fields["outcome_code"].
        ("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED/RESOLVED_SELLER_FAVOUR"): Rule(
            K.DISPUTE_WON, dispute=True
        ),
        ("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED/CANCELED_BY_BUYER"): Rule(
            K.DISPUTE_WON, dispute=True
        ),
        ("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED/DENIED"): Rule(K.DISPUTE_WON, dispute=True),
        # PayPal paid the buyer from its own funds: the merchant keeps the payment.
        ("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED/RESOLVED_WITH_PAYOUT"): Rule(
            K.DISPUTE_WON, dispute=True
        ),
        ("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED/RESOLVED_BUYER_FAVOUR"): Rule(
            K.DISPUTE_LOST, amount_from=AmountFrom.EVENT, dispute=True
        ),
        ("CUSTOMER.DISPUTE.RESOLVED", "RESOLVED/ACCEPTED"): Rule(
            K.DISPUTE_LOST, amount_from=AmountFrom.EVENT, dispute=True
        ),
        # No outcome (NONE, or not in the event): never guessed.
        ("CUSTOMER.DISPUTE.RESOLVED", ANY): None,
    }
)

# --------------------------------------------------------------------------
# Coinbase Commerce: charges. The latest timeline entry's status (and, for
# UNRESOLVED, its context) decides; the event type only when there is no status.
# The amount the customer paid, in the charge's local currency, is read from
# fields["paid_local_amount"] (decimal text: the sum of payments[].value.local).

_PAID = "paid_local_amount"
_UNRESOLVED = Rule(
    K.FUNDS_UNRESOLVED,
    S.UNRESOLVED,
    amount_from=AmountFrom.DECIMAL_FIELD,
    amount_field=_PAID,
    cumulative=True,
    names_payment=True,
)
_RESOLVED = Rule(
    K.FUNDS_RESOLVED,
    amount_from=AmountFrom.DECIMAL_FIELD,
    amount_field=_PAID,
    cumulative=True,
    names_payment=True,
)


COINBASE_RULES: Final[Mapping[tuple[str, str], Rule | None]] = MappingProxyType(
    {
        (ANY, "NEW"): Rule(K.STATUS_CHANGED, S.AWAITING_PAYMENT_METHOD, names_payment=True),
        (ANY, "SIGNED"): Rule(K.STATUS_CHANGED, S.PROCESSING, names_payment=True),
        (ANY, "PENDING"): Rule(K.STATUS_CHANGED, S.PROCESSING, names_payment=True),
        # Paid as asked: the local price is captured (crypto has no separate authorization).
        (ANY, "COMPLETED"): Rule(
            K.CAPTURED, amount_from=AmountFrom.EVENT, cumulative=True, names_payment=True
        ),
        (ANY, "EXPIRED"): Rule(K.STATUS_CHANGED, S.EXPIRED, names_payment=True),
        (ANY, "CANCELED"): Rule(K.CANCELED, names_payment=True),
        (ANY, "FAILED"): Rule(K.STATUS_CHANGED, S.FAILED, names_payment=True),
        (ANY, "UNRESOLVED/UNDERPAID"): _UNRESOLVED,
        (ANY, "UNRESOLVED/OVERPAID"): _UNRESOLVED,
        (ANY, "UNRESOLVED/DELAYED"): _UNRESOLVED,
        (ANY, "UNRESOLVED/MULTIPLE"): _UNRESOLVED,
        (ANY, "UNRESOLVED/MANUAL"): _UNRESOLVED,
        (ANY, "UNRESOLVED/OTHER"): _UNRESOLVED,
        (ANY, "UNRESOLVED"): _UNRESOLVED,
        # The merchant accepted an unresolved payment.
        (ANY, "RESOLVED"): _RESOLVED,
        # Crypto refunds move funds we cannot value from the event: a person reconciles.
        (ANY, "REFUND PENDING"): None,
        (ANY, "REFUNDED"): None,
        # When the delivery has no timeline, the event type decides.
        ("charge:created", ANY): Rule(
            K.STATUS_CHANGED, S.AWAITING_PAYMENT_METHOD, names_payment=True
        ),
        ("charge:pending", ANY): Rule(K.STATUS_CHANGED, S.PROCESSING, names_payment=True),
        ("charge:confirmed", ANY): Rule(
            K.CAPTURED, amount_from=AmountFrom.EVENT, cumulative=True, names_payment=True
        ),
        ("charge:failed", ANY): Rule(K.STATUS_CHANGED, S.FAILED, names_payment=True),
        ("charge:delayed", ANY): _UNRESOLVED,
        ("charge:resolved", ANY): _RESOLVED,
    }
)


@dataclass(frozen=True, slots=True)
class ProviderTable:
    rules: Mapping[tuple[str, str], Rule | None]
    # Coinbase: the charge's status decides before the event type does.
    status_first: bool = False
    # fields[...] that refines the status key as "STATUS/VALUE".
    sub_status_field: str | None = None


RULES: Final[Mapping[Provider, ProviderTable]] = MappingProxyType(
    {
        Provider.STRIPE: ProviderTable(STRIPE_RULES),
        Provider.PAYPAL: ProviderTable(PAYPAL_RULES, sub_status_field="outcome_code"),
        Provider.COINBASE: ProviderTable(
            COINBASE_RULES, status_first=True, sub_status_field="context"
        ),
    }
)

# --------------------------------------------------------------------------
# Allowed status changes, (from, to). Same-status events never need a row.


def _pairs(table: Mapping[PaymentStatus, frozenset[PaymentStatus]]) -> frozenset[tuple[S, S]]:
    return frozenset((source, target) for source, targets in table.items() for target in targets)


_SETTLED = frozenset({S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED})

STRIPE_ALLOWED: Final = _pairs(
    {
        # Cards without 3-D Secure go from created to succeeded in one event.
        S.AWAITING_PAYMENT_METHOD: frozenset(
            {S.REQUIRES_CUSTOMER_ACTION, S.PROCESSING, S.AUTHORIZED, S.SUCCEEDED}
            | {S.FAILED, S.CANCELED}
        ),
        S.REQUIRES_CUSTOMER_ACTION: frozenset(
            {S.PROCESSING, S.AUTHORIZED, S.SUCCEEDED, S.FAILED, S.CANCELED}
        ),
        S.PROCESSING: frozenset({S.AUTHORIZED, S.SUCCEEDED, S.FAILED, S.CANCELED}),
        # payment_failed leaves the PaymentIntent in requires_payment_method: retryable.
        S.FAILED: frozenset(
            {S.REQUIRES_CUSTOMER_ACTION, S.PROCESSING, S.AUTHORIZED, S.SUCCEEDED, S.CANCELED}
        ),
        S.AUTHORIZED: frozenset({S.SUCCEEDED, S.CANCELED}),
        S.SUCCEEDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.DISPUTED}),
        S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED, S.DISPUTED}),
        S.DISPUTED: _SETTLED,
    }
)

PAYPAL_ALLOWED: Final = _pairs(
    {
        S.AWAITING_PAYMENT_METHOD: frozenset(
            {S.PROCESSING, S.AUTHORIZED, S.PARTIALLY_CAPTURED, S.SUCCEEDED, S.FAILED, S.EXPIRED}
        ),
        S.PROCESSING: frozenset(
            {S.AUTHORIZED, S.PARTIALLY_CAPTURED, S.SUCCEEDED, S.FAILED, S.EXPIRED}
        ),
        # VOIDED before any capture: canceled; a denied capture: failed.
        S.AUTHORIZED: frozenset({S.PARTIALLY_CAPTURED, S.SUCCEEDED, S.CANCELED, S.FAILED}),
        # More captures, then a final one or a void of the rest (refunds may
        # come in between, so the capture may close as partially refunded).
        S.PARTIALLY_CAPTURED: frozenset({S.DISPUTED} | _SETTLED),
        S.SUCCEEDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.DISPUTED}),
        S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED, S.DISPUTED}),
        S.DISPUTED: frozenset({S.PARTIALLY_CAPTURED} | _SETTLED),
    }
)

COINBASE_ALLOWED: Final = _pairs(
    {
        S.AWAITING_PAYMENT_METHOD: frozenset(
            {S.PROCESSING, S.SUCCEEDED, S.UNRESOLVED, S.EXPIRED, S.CANCELED, S.FAILED}
        ),
        S.PROCESSING: frozenset({S.SUCCEEDED, S.UNRESOLVED, S.EXPIRED, S.FAILED}),
        # Resolved by the merchant.
        S.UNRESOLVED: frozenset({S.SUCCEEDED}),
        # Paid after the charge expired (UNRESOLVED, DELAYED).
        S.EXPIRED: frozenset({S.UNRESOLVED}),
    }
)

ALLOWED: Final[Mapping[Provider, frozenset[tuple[PaymentStatus, PaymentStatus]]]] = (
    MappingProxyType(
        {
            Provider.STRIPE: STRIPE_ALLOWED,
            Provider.PAYPAL: PAYPAL_ALLOWED,
            Provider.COINBASE: COINBASE_ALLOWED,
        }
    )
)

# --------------------------------------------------------------------------
# Merchant commands: the statuses each is accepted from. CREATE needs no
# payment yet; CANCEL also needs nothing captured, CAPTURE and REFUND amounts
# are bounded by the machine.

_COMMAND = Mapping[CommandKind, frozenset[PaymentStatus]]

COMMANDS: Final[Mapping[Provider, _COMMAND]] = MappingProxyType(
    {
        # A PaymentIntent can be canceled in requires_payment_method,
        # requires_confirmation, requires_action, requires_capture and processing.
        Provider.STRIPE: MappingProxyType(
            {
                CommandKind.CAPTURE: frozenset({S.AUTHORIZED}),
                CommandKind.CANCEL: BEFORE_CAPTURE,
                CommandKind.REFUND: frozenset({S.SUCCEEDED, S.PARTIALLY_REFUNDED}),
            }
        ),
        # Only an authorization can be voided; an unapproved order just expires.
        Provider.PAYPAL: MappingProxyType(
            {
                CommandKind.CAPTURE: frozenset({S.AUTHORIZED, S.PARTIALLY_CAPTURED}),
                CommandKind.CANCEL: frozenset({S.AUTHORIZED}),
                CommandKind.REFUND: frozenset(
                    {S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.PARTIALLY_CAPTURED}
                ),
            }
        ),
        # Only a new charge with no payment detected can be canceled; crypto
        # is never authorized apart from its capture, and refunds are manual.
        Provider.COINBASE: MappingProxyType(
            {
                CommandKind.CAPTURE: frozenset(),
                CommandKind.CANCEL: frozenset({S.AWAITING_PAYMENT_METHOD}),
                CommandKind.REFUND: frozenset(),
            }
        ),
    }
)


def is_allowed(provider: Provider, source: PaymentStatus, target: PaymentStatus) -> bool:
    return (source, target) in ALLOWED[provider]


# --------------------------------------------------------------------------
# Reading one event.


def status_key(event: ProviderEvent) -> str | None:
    """The provider status as the tables key it: ``STATUS`` or ``STATUS/SUB``."""
    table = RULES[event.provider]
    if event.status is None:
        return None
    sub = event.fields.get(table.sub_status_field) if table.sub_status_field else None
    return f"{event.status}/{sub}" if sub else event.status


def find_rule(event: ProviderEvent) -> tuple[tuple[str, str], Rule | None]:
    """The table row for ``event``; ``MappingError`` when there is none."""
    table = RULES[event.provider]
    kind, status, key = event.provider_event_type, event.status, status_key(event)
    candidates: list[tuple[str, str]] = []
    if table.status_first:
        if key is not None and status is not None:
            candidates += [(kind, key), (ANY, key), (ANY, status)]
        else:
            candidates.append((kind, ANY))
    else:
        if key is not None and status is not None:
            candidates += [(kind, key)] if key == status else [(kind, key), (kind, status)]
        candidates.append((kind, ANY))
    for candidate in candidates:
        if candidate in table.rules:
            return candidate, table.rules[candidate]
    raise MappingError(
        "unmapped-event",
        f"{event.provider.value} has no rule for {kind!r} with status {key!r}",
    )


def follow_up(event: ProviderEvent, capture_method: CaptureMethod) -> FollowUp | None:
    """The call the worker makes itself once ``event`` applied to a payment captured so.

    None when the event's rule names none, or when no rule applies (such an
    event is rejected before any call could follow).
    """
    try:
        _, rule = find_rule(event)
    except MappingError:
        return None
    if rule is None:
        return None
    return next((call for method, call in rule.follow_up if method is capture_method), None)


def map_event(event: ProviderEvent, currency: str) -> Transition:
    """Read ``event`` through its provider's table, for a payment in ``currency``."""
    row, rule = find_rule(event)
    if rule is None:
        raise MappingError(
            "unhandled-event",
            f"{event.provider.value} {event.provider_event_type!r} with status "
            f"{status_key(event)!r} needs a person: it is never applied automatically",
        )
    amount = _amount(rule, event, currency)
    fee = event.fee if rule.fee is not FeeEffect.NONE else None
    kind = rule.kind
    if kind is K.FEE_CHARGED and fee is None:
        kind = K.NOTED  # a charge event without its expanded balance transaction
    object_id = event.provider_object_id
    movement_key = None
    if rule.movement is not None:
        if object_id is None:
            raise MappingError("missing-object-id", f"{event.provider_event_type} names no object")
        movement_key = f"{rule.movement}:{object_id}"
    payment_object = object_id if rule.names_payment else None
    if rule.payment_field is not None:
        payment_object = event.fields.get(rule.payment_field)
    final = True
    if rule.final_field is not None:
        final = event.fields.get(rule.final_field, "true") != "false"
    table = RULES[event.provider]
    context = event.fields.get(table.sub_status_field) if table.sub_status_field else None
    return Transition(
        kind=kind,
        key=row,
        status=rule.status,
        amount=amount,
        cumulative=rule.cumulative,
        fee=fee,
        fee_returned=rule.fee is FeeEffect.RETURNED,
        final_capture=final,
        hold=rule.hold,
        movement_key=movement_key,
        payment_object_id=payment_object,
        dispute_id=object_id if rule.dispute else None,
        context=context if event.provider is Provider.COINBASE else None,
    )


def _amount(rule: Rule, event: ProviderEvent, currency: str) -> Money | None:
    amount: Money | None = None
    if rule.amount_from is AmountFrom.EVENT:
        amount = event.amount
    elif rule.amount_from is AmountFrom.STRIPE_FIELD:
        assert rule.amount_field is not None
        raw = event.fields.get(rule.amount_field)
        # Without the counter (an older event shape), the object's own amount.
        amount = event.amount if raw is None else Money(_stripe_minor(raw, currency), currency)
    elif rule.amount_from is AmountFrom.DECIMAL_FIELD:
        assert rule.amount_field is not None
        raw = event.fields.get(rule.amount_field)
        if raw is not None:
            try:
                amount = Money(currencies.to_minor_units(raw, currency), currency)
            except EncodingError as error:
                raise MappingError("bad-amount", f"{rule.amount_field}: {error}") from None
    if amount is not None and amount.currency != currency:
        raise MappingError(
            "currency-mismatch", f"event amount in {amount.currency}, payment in {currency}"
        )
    if amount is not None and amount.amount_minor < 0:
        raise MappingError("bad-amount", "negative amount")
    if amount is None and rule.amount_required:
        unconverted = event.fields.get("amount_unconverted")
        detail = f" (unconverted: {unconverted})" if unconverted else ""
        raise MappingError("missing-amount", f"{event.provider_event_type} has no amount{detail}")
    return amount


# Stripe's units (https://docs.stripe.com/currencies): integers in these many
# decimal digits, which is ISO 4217's minor unit except where Stripe's lists
# disagree (MGA: Stripe 0, ISO 2). ISK and UGX changed representation over
# time, so they are refused. The same lists as ingress/webhooks/stripe.py.
# fmt: off
_STRIPE_ZERO_DECIMAL = frozenset({
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA",
    "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
})
# fmt: on
_STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
_STRIPE_AMBIGUOUS = frozenset({"ISK", "UGX"})


def _stripe_minor(raw: str, currency: str) -> int:
    """A Stripe integer amount (as the normalizer keeps it, text) in ISO 4217 minor units."""
    if not raw.isascii() or not raw.isdigit():
        raise MappingError("bad-amount", f"not a non-negative integer: {raw[:40]!r}")
    if currency in _STRIPE_AMBIGUOUS:
        raise MappingError("bad-amount", f"Stripe's unit for {currency} is ambiguous")
    stripe_digits = (
        0 if currency in _STRIPE_ZERO_DECIMAL else 3 if currency in _STRIPE_THREE_DECIMAL else 2
    )
    try:
        shift = currencies.exponent(currency) - stripe_digits
    except EncodingError as error:
        raise MappingError("bad-amount", str(error)) from None
    value = int(raw)
    factor: int = 10 ** abs(shift)
    if shift >= 0:
        return value * factor
    if value % factor:
        raise MappingError("bad-amount", f"{value} is not a whole number of {currency} minor units")
    return value // factor
