"""Payment flows per provider through the stream worker, on real Kafka and the provider mocks.

Each test is one payment: intent (a CREATE command) -> provider call -> signed
provider events and merchant commands, one step at a time, each step waiting
for the payment event it causes -> final status, totals and postings. The
worker runs as a subprocess, one for the module (each payment has its own
id); every command's provider call goes to the real local peer (stripe-mock,
Prism behind the PayPal gateway, the Coinbase fake), and none may fail unless
the test says so.

Provider events name the objects the worker's create call made where the peer
tells: the PaymentIntent and PayPal order ids the worker logged for its
create call, and the Coinbase charge as the fake holds it. Ids the peers
cannot give (Prism answers every authorization, capture and refund with the
spec's placeholder id) are made up, one per object, as PayPal's are.

PayPal's calls are also checked as they reached the gateway in front of Prism
(its ``/__fake/requests`` record), found by the ``PayPal-Request-Id`` each
must carry: derived from the id of the command or webhook that caused it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import string
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import (
    AuditFact,
    CaptureMethod,
    CommandKind,
    DeadLetter,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    PaymentEventKind,
    PostingSide,
    Provider,
    new_envelope,
)
from ledger.keystore import ActiveSigner, KeyStore
from ledger.payments.postings import PaymentAccounts
from ledger.payments.status import PaymentStatus
from ledger.registry import FileSchemaRegistry
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams.agents import PROVIDER_FAILED_ERROR_CLASS, PROVIDER_FAILED_FACT_TYPE
from streams.providers import Operation, derive_idempotency_key
from streams.provision import provision_topics
from streams.publisher import kafka_publisher
from tests.integration.test_envelope_kafka import auditor
from tests.support.deliveries import (
    CryptoPayment,
    coinbase_charge,
    coinbase_delivery,
    paypal_authorization,
    paypal_capture,
    paypal_delivery,
    paypal_dispute,
    paypal_money,
    paypal_order,
    paypal_refund,
)
from tests.support.streams import running_worker, stripe_delivery

pytestmark = pytest.mark.integration

K = PaymentEventKind
S = PaymentStatus
STRIPE_SECRET = "whsec_streams_providers_test"
COINBASE_SECRET = "streams-providers-coinbase-secret"
MERCHANT = "mer_42"
CURRENCY = "USD"
# One step: the record published, consumed, applied, its provider call made
# and the payment event committed, on a shared two-core machine.
STEP_TIMEOUT_S = 120.0
POLL_MS = 200
PROVIDER_FAILED = f"audit.{PROVIDER_FAILED_FACT_TYPE}".encode()
REJECTED = b"dead-letter.payment-rejected"
_PAYPAL_ID = string.ascii_uppercase + string.digits


class ProviderCallFailed(AssertionError):
    """A provider call the flow made failed for good (an audit fact says so)."""


def money(amount_minor: int) -> Money:
    return Money(amount_minor, CURRENCY)


def paypal_id() -> str:
    return "".join(secrets.choice(_PAYPAL_ID) for _ in range(17))


# ---- the module's worker and topics -------------------------------------------------


@pytest.fixture(scope="module")
async def settings(tmp_path_factory: pytest.TempPathFactory, provider_mocks: Settings) -> Settings:
    settings = provider_mocks.model_copy(
        update={
            "topic_prefix": f"p{uuid.uuid4().hex[:10]}.",
            "state_dir": tmp_path_factory.mktemp("providers"),
        }
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    return settings


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with running_worker(settings) as process:
        yield process


class Ledger:
    """The module's topics, as the tests drive and read them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = KeyStore(settings)
        self.registry = FileSchemaRegistry(settings.registry_dir)
        self.publisher = kafka_publisher(
            settings,
            EnvelopeCodec(self.registry),
            ActiveSigner(self.store),
            source="/payledger/test",
        )
        self.read = {
            role: topic_name(settings, role)
            for role in (TopicRole.PAYMENT_EVENTS, TopicRole.REJECTED, TopicRole.AUDIT_FACTS)
        }
        self.consumer = AIOKafkaConsumer(
            *self.read.values(),
            bootstrap_servers=settings.bootstrap_servers(),
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        # topic -> payment id (record key) -> records, in offset order per partition.
        self.records: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
        self._verifier: Verifier | None = None

    async def __aenter__(self) -> Ledger:
        await self.publisher.__aenter__()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.publisher.__aexit__(*exc_info)

    def of(self, role: TopicRole, payment_id: str) -> list[Any]:
        return self.records[self.read[role]][payment_id]

    async def poll(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=POLL_MS)
        for messages in batch.values():
            for record in messages:
                key = record.key.decode() if record.key is not None else ""
                self.records[record.topic][key].append(record)

    async def until(self, payment_id: str, events: int) -> None:
        """Poll until ``payment_id`` has ``events`` payment events; fail on a rejection."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                while len(self.of(TopicRole.PAYMENT_EVENTS, payment_id)) < events:
                    if any(_type(r) == REJECTED for r in self.of(TopicRole.REJECTED, payment_id)):
                        break
                    await self.poll()
        except TimeoutError:
            pass
        seen = len(self.of(TopicRole.PAYMENT_EVENTS, payment_id))
        if seen != events:
            letters = [(d.reason, d.detail) for d in await self.dead_letters(payment_id)]
            raise AssertionError(
                f"{payment_id}: {seen} payment events, expected {events}; "
                f"dead letters: {letters}\n{self.worker_lines(payment_id)}"
            )

    async def verifier(self) -> Verifier:
        # Built once the worker has emitted: its key's endorsement is on the keys topic.
        if self._verifier is None:
            self._verifier = await auditor(self.settings, self.store, self.registry)
        return self._verifier

    async def opened(self, role: TopicRole, payment_id: str) -> list[Envelope]:
        verifier = await self.verifier()
        return [verifier.open(record.value) for record in self.of(role, payment_id)]

    async def dead_letters(self, payment_id: str) -> list[DeadLetter]:
        letters = [e.payload for e in await self.opened(TopicRole.REJECTED, payment_id)]
        return [letter for letter in letters if isinstance(letter, DeadLetter)]

    async def provider_failures(self, payment_id: str) -> list[AuditFact]:
        facts = [
            envelope.payload
            for envelope, record in zip(
                await self.opened(TopicRole.AUDIT_FACTS, payment_id),
                self.of(TopicRole.AUDIT_FACTS, payment_id),
                strict=True,
            )
            if _type(record) == PROVIDER_FAILED
        ]
        return [fact for fact in facts if isinstance(fact, AuditFact)]

    def worker_log(self) -> str:
        return (self.settings.state_dir / "worker.log").read_text(errors="replace")

    def worker_lines(self, payment_id: str, lines_max: int = 40) -> str:
        """The worker's log lines about ``payment_id``, and its warnings and errors."""
        lines = [
            line
            for line in self.worker_log().splitlines()
            if payment_id in line or "[WARNING]" in line or "[ERROR]" in line
        ]
        return "\n".join(lines[-lines_max:])


def _type(record: Any) -> bytes | None:
    return next((value for key, value in record.headers if key == "ce_type"), None)


@pytest.fixture(scope="module")
async def ledger(settings: Settings, worker: subprocess.Popen[bytes]) -> AsyncIterator[Ledger]:
    async with Ledger(settings) as ledger:
        yield ledger


# ---- one payment ------------------------------------------------------------------------


@dataclass
class Payment:
    """One payment's flow: each step publishes one record and waits for its one event."""

    ledger: Ledger
    provider: Provider
    payment_id: str = field(default_factory=lambda: f"pay_{uuid.uuid4().hex[:12]}")
    steps: int = 0
    commands: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    published: list[Envelope] = field(default_factory=list)

    def at(self) -> datetime:
        """Provider time of an event sent now: one second later for each step so far."""
        return self.started + timedelta(seconds=self.steps)

    async def step(self, topic: TopicRole, build: Callable[[], Envelope]) -> None:
        # Built when published: an envelope is recorded after the key that signs it exists.
        envelope = build()
        self.published.append(envelope)
        await self.ledger.publisher.publish(topic_name(self.ledger.settings, topic), envelope)
        self.steps += 1
        await self.ledger.until(self.payment_id, self.steps)

    async def command(
        self,
        kind: CommandKind,
        amount_minor: int | None = None,
        capture_method: CaptureMethod | None = None,
    ) -> None:
        self.commands += 1
        n = self.commands
        payload = PaymentCommand(
            command=kind,
            merchant_id=MERCHANT,
            idempotency_key=f"idem-{self.payment_id}-{n}",
            provider=self.provider,
            amount=money(amount_minor) if amount_minor is not None else None,
            capture_method=capture_method,
            description="streams providers" if kind is CommandKind.CREATE else None,
        )
        await self.step(
            TopicRole.COMMANDS,
            lambda: new_envelope(
                event_type=f"payment.command.{kind.value.lower()}",
                aggregate_id=self.payment_id,
                sequence=n,
                producer="payledger/test",
                payload=payload,
            ),
        )

    async def create(self, amount_minor: int, capture_method: CaptureMethod) -> str:
        """CREATE; the reference the worker's create call returned (from its log)."""
        await self.command(CommandKind.CREATE, amount_minor, capture_method)
        refs = self.refs(Operation.CREATE)
        assert refs, f"the worker logged no create call for {self.payment_id}"
        return refs[0]

    def refs(self, operation: Operation) -> list[str]:
        """The references the worker's ``operation`` calls returned, in order (from its log)."""
        pattern = re.compile(
            rf"\b{operation.value} of {re.escape(self.payment_id)} at "
            rf"{self.provider.value}: (\S+) \("
        )
        return pattern.findall(self.ledger.worker_log())

    def key(self, step: int, operation: str | None = None) -> str:
        """The idempotency key of the call the record of ``step`` (1-based) caused."""
        return derive_idempotency_key(self.published[step - 1].event_id, operation)

    async def delivery(self, build: Callable[[], Envelope]) -> None:
        await self.step(TopicRole.PROVIDER_EVENTS, build)

    async def stripe(self, event_type: str, obj: dict[str, Any]) -> None:
        created = int(self.at().timestamp())
        await self.delivery(
            lambda: stripe_delivery(
                self.payment_id, event_type, obj, secret=STRIPE_SECRET, created=created
            )
        )

    async def paypal(self, event_type: str, resource: dict[str, Any], resource_type: str) -> None:
        at = self.at()
        await self.delivery(
            lambda: paypal_delivery(event_type, resource, resource_type=resource_type, at=at)
        )

    async def coinbase(self, event_type: str, charge: dict[str, Any]) -> None:
        at = self.at()
        await self.delivery(
            lambda: coinbase_delivery(event_type, charge, secret=COINBASE_SECRET, at=at)
        )

    @property
    def accounts(self) -> PaymentAccounts:
        return PaymentAccounts(MERCHANT, self.provider)

    async def settled(
        self,
        kinds: list[PaymentEventKind],
        status: PaymentStatus,
        *,
        authorized: int,
        captured: int,
        refunded: int = 0,
        net_debits: dict[str, int] | None = None,
    ) -> list[PaymentEvent]:
        """Check the payment's events on the log; return their payloads.

        ``net_debits``: every account's debits less credits over the whole flow
        (accounts not named must net to zero). A provider call that failed is
        raised last, as ``ProviderCallFailed``, once everything else holds.
        """
        await self.ledger.poll()  # anything beyond the last step shows up here
        envelopes = sorted(
            await self.ledger.opened(TopicRole.PAYMENT_EVENTS, self.payment_id),
            key=lambda e: e.sequence,
        )
        assert [e.sequence for e in envelopes] == list(range(1, self.steps + 1))
        payloads = [e.payload for e in envelopes if isinstance(e.payload, PaymentEvent)]
        assert len(payloads) == len(envelopes)
        assert [p.kind for p in payloads] == kinds
        assert not any(p.stale for p in payloads)
        last = payloads[-1]
        assert last.status_after is status
        assert (last.authorized_minor, last.captured_minor, last.refunded_minor) == (
            authorized,
            captured,
            refunded,
        )
        net: dict[str, int] = defaultdict(int)
        for payload in payloads:
            assert not unbalanced(payload), (payload.kind, payload.postings)
            for posting in payload.postings:
                assert posting.currency == CURRENCY
                sign = 1 if posting.side is PostingSide.DEBIT else -1
                net[posting.account] += sign * posting.amount_minor
        assert {a: n for a, n in net.items() if n} == (net_debits or {})
        letters = await self.ledger.dead_letters(self.payment_id)
        rejected = [
            (d.reason, d.detail) for d in letters if d.error_class != PROVIDER_FAILED_ERROR_CLASS
        ]
        assert rejected == []
        failures = await self.ledger.provider_failures(self.payment_id)
        if failures:
            raise ProviderCallFailed(
                f"{len(failures)} provider calls failed: "
                + "; ".join(f"{f.details.get('operation')}: {f.reason}" for f in failures)
            )
        return payloads


def unbalanced(payload: PaymentEvent) -> dict[str, int]:
    """Per currency, debits less credits of one event's postings, where not zero."""
    totals: dict[str, int] = defaultdict(int)
    for posting in payload.postings:
        sign = 1 if posting.side is PostingSide.DEBIT else -1
        totals[posting.currency] += sign * posting.amount_minor
    return {currency: total for currency, total in totals.items() if total}


# ---- PayPal ---------------------------------------------------------------------------


def paypal_id_of(ref: str, kind: str) -> str:
    """The PayPal id in an adapter reference of ``kind`` (``order:5O19...``)."""
    found, _, paypal_object_id = ref.partition(":")
    assert found == kind and paypal_object_id, ref
    return paypal_object_id


def paypal_order_id(ref: str) -> str:
    return paypal_id_of(ref, "order")


async def paypal_sent(settings: Settings, *keys: str) -> list[tuple[str, Any]]:
    """(path, body) of the POST the PayPal gateway answered for each key, in ``keys`` order.

    A retried call repeats its request with the same key: all of a key's
    requests must be the same, and the last one answered with success.
    """
    async with httpx.AsyncClient(base_url=settings.paypal_base_url()) as client:
        response = await client.get("/__fake/requests")
    response.raise_for_status()
    recorded = response.json()["requests"]
    sent = []
    for key in keys:
        requests = [r for r in recorded if r["headers"].get("paypal-request-id") == key]
        assert requests, f"no request with PayPal-Request-Id {key} reached the gateway"
        shapes = {(r["method"], r["path"], json.dumps(r["body"], sort_keys=True)) for r in requests}
        assert len(shapes) == 1, shapes
        assert 200 <= requests[-1]["status"] < 300, requests[-1]
        sent.append((requests[-1]["path"], requests[-1]["body"]))
    return sent


async def paypal_authorized(payment: Payment, amount_minor: int) -> tuple[str, str]:
    """CREATE (manual), the buyer's approval and the authorization; (order id, authorization id)."""
    order = paypal_order_id(await payment.create(amount_minor, CaptureMethod.MANUAL))
    await payment.paypal(
        "CHECKOUT.ORDER.APPROVED",
        paypal_order(
            order, payment.payment_id, money(amount_minor), status="APPROVED", intent="AUTHORIZE"
        ),
        "checkout-order",
    )
    authorization = paypal_id()
    await payment.paypal(
        "PAYMENT.AUTHORIZATION.CREATED",
        paypal_authorization(
            authorization, order, payment.payment_id, money(amount_minor), status="CREATED"
        ),
        "authorization",
    )
    return order, authorization


async def test_paypal_manual_capture_in_two_parts_then_refund_in_two(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.PAYPAL)
    order, authorization = await paypal_authorized(payment, 1000)

    await payment.command(CommandKind.CAPTURE, 600)
    await payment.paypal(
        "PAYMENT.CAPTURE.COMPLETED",
        paypal_capture(
            paypal_id(),
            order,
            authorization,
            payment.payment_id,
            money(600),
            fee=money(50),
            final_capture=False,
        ),
        "capture",
    )
    await payment.command(CommandKind.CAPTURE)  # the rest: 400
    await payment.paypal(
        "PAYMENT.CAPTURE.COMPLETED",
        paypal_capture(
            paypal_id(),
            order,
            authorization,
            payment.payment_id,
            money(400),
            fee=money(30),
            final_capture=True,
        ),
        "capture",
    )
    await payment.command(CommandKind.REFUND, 300)
    await payment.paypal(
        "PAYMENT.CAPTURE.REFUNDED",
        paypal_refund(paypal_id(), payment.payment_id, money(300), fee=money(10)),
        "refund",
    )
    await payment.command(CommandKind.REFUND)  # the rest: 700
    await payment.paypal(
        "PAYMENT.CAPTURE.REFUNDED",
        paypal_refund(paypal_id(), payment.payment_id, money(700), fee=money(20)),
        "refund",
    )

    a = payment.accounts
    events = await payment.settled(
        [
            K.CREATED,
            K.STATUS_CHANGED,
            K.AUTHORIZED,
            K.CAPTURE_REQUESTED,
            K.CAPTURED,
            K.CAPTURE_REQUESTED,
            K.CAPTURED,
            K.REFUND_REQUESTED,
            K.REFUNDED,
            K.REFUND_REQUESTED,
            K.REFUNDED,
        ],
        S.REFUNDED,
        authorized=1000,
        captured=1000,
        refunded=1000,
        # Fees 50 + 30 taken, 10 + 20 given back: the merchant bears 50 net.
        net_debits={a.clearing: -50, a.payable: -1000, a.refunds: 1000, a.fees: 50},
    )
    statuses = [e.status_after for e in events]
    assert statuses[4] is S.PARTIALLY_CAPTURED, "final_capture=false leaves the rest open"
    assert statuses[6] is S.SUCCEEDED
    assert statuses[8] is S.PARTIALLY_REFUNDED
    assert events[5].amount == money(400), "a capture without an amount: the rest"
    assert events[9].amount == money(700), "a refund without an amount: the rest"
    assert [e.fees for e in events[4:]][::2] == [
        (money(50),),
        (money(80),),
        (money(70),),
        (money(50),),
    ]
    assert {e.provider_object_id for e in events[1:3]} == {order, authorization}

    # The calls behind it: the approval's authorize, two captures of the
    # authorization (the first keeps the rest open), a refund of the first
    # capture, then the rest refunded from both captures, oldest first.
    (authorized,) = payment.refs(Operation.AUTHORIZE)
    authorization_id = paypal_id_of(authorized, "authorization")
    first, second = (paypal_id_of(ref, "capture") for ref in payment.refs(Operation.CAPTURE))
    sent = await paypal_sent(
        ledger.settings,
        payment.key(2, "authorize"),
        payment.key(4, "capture"),
        payment.key(6, "capture"),
        payment.key(8, "refund"),
        payment.key(10, "refund"),
        payment.key(10, "refund-2"),
    )
    assert sent == [
        (f"/v2/checkout/orders/{order}/authorize", {}),
        (
            f"/v2/payments/authorizations/{authorization_id}/capture",
            {"final_capture": False, "amount": paypal_money(money(600))},
        ),
        (
            f"/v2/payments/authorizations/{authorization_id}/capture",
            {"final_capture": True, "amount": paypal_money(money(400))},
        ),
        (f"/v2/payments/captures/{first}/refund", {"amount": paypal_money(money(300))}),
        (f"/v2/payments/captures/{first}/refund", {"amount": paypal_money(money(300))}),
        (f"/v2/payments/captures/{second}/refund", {"amount": paypal_money(money(400))}),
    ]


async def test_paypal_void_of_an_authorization(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.PAYPAL)
    order, authorization = await paypal_authorized(payment, 1000)
    await payment.command(CommandKind.CANCEL)
    await payment.paypal(
        "PAYMENT.AUTHORIZATION.VOIDED",
        paypal_authorization(
            authorization, order, payment.payment_id, money(1000), status="VOIDED"
        ),
        "authorization",
    )
    await payment.settled(
        [K.CREATED, K.STATUS_CHANGED, K.AUTHORIZED, K.CANCEL_REQUESTED, K.CANCELED],
        S.CANCELED,
        authorized=1000,
        captured=0,
    )
    (authorized,) = payment.refs(Operation.AUTHORIZE)
    authorization_id = paypal_id_of(authorized, "authorization")
    assert await paypal_sent(
        ledger.settings, payment.key(2, "authorize"), payment.key(4, "cancel")
    ) == [
        (f"/v2/checkout/orders/{order}/authorize", {}),
        (f"/v2/payments/authorizations/{authorization_id}/void", None),
    ]


async def test_paypal_approval_reversed_expires_the_order(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.PAYPAL)
    order = paypal_order_id(await payment.create(1000, CaptureMethod.AUTOMATIC))
    approved = paypal_order(
        order, payment.payment_id, money(1000), status="APPROVED", intent="CAPTURE"
    )
    await payment.paypal("CHECKOUT.ORDER.APPROVED", approved, "checkout-order")
    # Not captured within the capture window: PayPal reverses the approval.
    await payment.paypal("CHECKOUT.PAYMENT-APPROVAL.REVERSED", approved, "checkout-order")
    events = await payment.settled(
        [K.CREATED, K.STATUS_CHANGED, K.STATUS_CHANGED], S.EXPIRED, authorized=0, captured=0
    )
    assert events[1].status_after is S.PROCESSING
    # The worker captured the approved order (intent CAPTURE), authorizing nothing.
    assert await paypal_sent(ledger.settings, payment.key(2, "capture")) == [
        (f"/v2/checkout/orders/{order}/capture", {})
    ]
    assert payment.refs(Operation.AUTHORIZE) == []


async def test_paypal_dispute_lost_then_another_won(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.PAYPAL)
    order = paypal_order_id(await payment.create(1000, CaptureMethod.AUTOMATIC))
    await payment.paypal(
        "CHECKOUT.ORDER.APPROVED",
        paypal_order(order, payment.payment_id, money(1000), status="APPROVED", intent="CAPTURE"),
        "checkout-order",
    )
    # The worker captured the approved order (no command asks for it); PayPal reports it.
    assert await paypal_sent(ledger.settings, payment.key(2, "capture")) == [
        (f"/v2/checkout/orders/{order}/capture", {})
    ]
    capture = paypal_id()
    await payment.paypal(
        "PAYMENT.CAPTURE.COMPLETED",
        paypal_capture(
            capture, order, None, payment.payment_id, money(1000), fee=money(35), final_capture=True
        ),
        "capture",
    )
    for dispute_id, amount, outcome in (
        ("PP-D-1" + paypal_id()[:6], 400, "RESOLVED_BUYER_FAVOUR"),
        ("PP-D-2" + paypal_id()[:6], 300, "RESOLVED_SELLER_FAVOUR"),
    ):
        await payment.paypal(
            "CUSTOMER.DISPUTE.CREATED",
            paypal_dispute(dispute_id, payment.payment_id, capture, money(amount), status="OPEN"),
            "dispute",
        )
        await payment.paypal(
            "CUSTOMER.DISPUTE.RESOLVED",
            paypal_dispute(
                dispute_id,
                payment.payment_id,
                capture,
                money(amount),
                status="RESOLVED",
                outcome=outcome,
            ),
            "dispute",
        )
    a = payment.accounts
    events = await payment.settled(
        [
            K.CREATED,
            K.STATUS_CHANGED,
            K.CAPTURED,
            K.DISPUTE_OPENED,
            K.DISPUTE_LOST,
            K.DISPUTE_OPENED,
            K.DISPUTE_WON,
        ],
        S.PARTIALLY_REFUNDED,
        authorized=1000,
        captured=1000,
        # 400 lost to the buyer; the 300 held for the second dispute came back.
        net_debits={a.clearing: 1000 - 35 - 400, a.payable: -1000, a.fees: 35, a.chargebacks: 400},
    )
    statuses = [e.status_after for e in events[2:]]
    assert statuses == [
        S.SUCCEEDED,
        S.DISPUTED,
        S.PARTIALLY_REFUNDED,
        S.DISPUTED,
        S.PARTIALLY_REFUNDED,
    ]
    held = [(e.disputed_minor, e.charged_back_minor) for e in events[3:]]
    assert held == [(400, 0), (0, 400), (300, 400), (0, 400)]
    hold_legs = [sum(p.account == a.dispute_hold for p in e.postings) for e in events[3:]]
    assert hold_legs == [1, 1, 1, 1]


# ---- Stripe ---------------------------------------------------------------------------


def intent(intent_id: str, status: str, **counters: int) -> dict[str, Any]:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": 1000,
        "currency": "usd",
        "status": status,
        **counters,
    }


async def test_stripe_automatic_capture_with_its_fee(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.STRIPE)
    pi = await payment.create(1000, CaptureMethod.AUTOMATIC)
    assert pi.startswith("pi_"), pi
    await payment.stripe("payment_intent.succeeded", intent(pi, "succeeded", amount_received=1000))
    await payment.stripe(
        "charge.succeeded",
        {
            "id": f"ch_{uuid.uuid4().hex[:14]}",
            "object": "charge",
            "amount": 1000,
            "currency": "usd",
            "status": "succeeded",
            "payment_intent": pi,
            "balance_transaction": {
                "id": f"txn_{uuid.uuid4().hex[:14]}",
                "object": "balance_transaction",
                "fee": 59,
                "currency": "usd",
            },
        },
    )
    a = payment.accounts
    events = await payment.settled(
        [K.CREATED, K.CAPTURED, K.FEE_CHARGED],
        S.SUCCEEDED,
        authorized=1000,
        captured=1000,
        net_debits={a.clearing: 1000 - 59, a.payable: -1000, a.fees: 59},
    )
    assert events[-1].fees == (money(59),)


async def test_stripe_cancel_of_an_authorized_intent(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.STRIPE)
    pi = await payment.create(1000, CaptureMethod.MANUAL)
    await payment.stripe(
        "payment_intent.amount_capturable_updated",
        intent(pi, "requires_capture", amount_capturable=1000),
    )
    await payment.command(CommandKind.CANCEL)
    await payment.stripe("payment_intent.canceled", intent(pi, "canceled"))
    await payment.settled(
        [K.CREATED, K.AUTHORIZED, K.CANCEL_REQUESTED, K.CANCELED],
        S.CANCELED,
        authorized=1000,
        captured=0,
    )


@pytest.mark.parametrize("outcome", ["lost", "won"])
async def test_stripe_dispute(ledger: Ledger, outcome: str) -> None:
    payment = Payment(ledger, Provider.STRIPE)
    pi = await payment.create(1000, CaptureMethod.AUTOMATIC)
    await payment.stripe("payment_intent.succeeded", intent(pi, "succeeded", amount_received=1000))
    dispute = {
        "id": f"du_{uuid.uuid4().hex[:14]}",
        "object": "dispute",
        "amount": 400,
        "currency": "usd",
        "payment_intent": pi,
        "charge": f"ch_{uuid.uuid4().hex[:14]}",
        "reason": "fraudulent",
    }
    await payment.stripe("charge.dispute.created", {**dispute, "status": "needs_response"})
    await payment.stripe("charge.dispute.closed", {**dispute, "status": outcome})

    a = payment.accounts
    closed_kind = K.DISPUTE_LOST if outcome == "lost" else K.DISPUTE_WON
    if outcome == "lost":
        # The 400 withdrawn for the dispute went to the customer for good.
        net = {a.clearing: 600, a.payable: -1000, a.chargebacks: 400}
        status = S.PARTIALLY_REFUNDED
    else:
        # Withdrawn, then reinstated: the hold nets to zero.
        net = {a.clearing: 1000, a.payable: -1000}
        status = S.SUCCEEDED
    events = await payment.settled(
        [K.CREATED, K.CAPTURED, K.DISPUTE_OPENED, closed_kind],
        status,
        authorized=1000,
        captured=1000,
        net_debits=net,
    )
    opened, closed = events[2], events[3]
    assert opened.status_after is S.DISPUTED
    assert opened.disputed_minor == 400
    assert {(p.account, p.side, p.amount_minor) for p in opened.postings} == {
        (a.dispute_hold, PostingSide.DEBIT, 400),
        (a.clearing, PostingSide.CREDIT, 400),
    }
    assert closed.disputed_minor == 0
    assert closed.charged_back_minor == (400 if outcome == "lost" else 0)
    assert a.dispute_hold in {p.account for p in closed.postings}


# ---- Coinbase Commerce ----------------------------------------------------------------


async def coinbase_charge_of(settings: Settings, charge_id: str) -> dict[str, Any]:
    """The charge as the Coinbase fake holds it."""
    async with httpx.AsyncClient(base_url=settings.coinbase_base_url()) as client:
        response = await client.get(
            f"/charges/{charge_id}",
            headers={
                "X-CC-Api-Key": settings.coinbase_api_key.get_secret_value(),
                "X-CC-Version": settings.coinbase_api_version,
            },
        )
    response.raise_for_status()
    charge: dict[str, Any] = response.json()["data"]
    return charge


async def coinbase_created(payment: Payment, amount_minor: int) -> dict[str, Any]:
    """CREATE, and the charge the worker's create call made at the fake."""
    charge_id = await payment.create(amount_minor, CaptureMethod.AUTOMATIC)
    charge = await coinbase_charge_of(payment.ledger.settings, charge_id)
    assert charge["metadata"]["payledger_payment_id"] == payment.payment_id
    assert charge["pricing"]["local"] == {"amount": "10.00", "currency": CURRENCY}
    return charge


async def test_coinbase_charge_paid_in_full(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.COINBASE)
    charge = await coinbase_created(payment, 1000)
    pending = CryptoPayment(money(1000), status="PENDING")
    await payment.coinbase(
        "charge:pending",
        coinbase_charge(charge, [("NEW", None), ("PENDING", None)], [pending], at=payment.at()),
    )
    await payment.coinbase(
        "charge:confirmed",
        coinbase_charge(
            charge,
            [("NEW", None), ("PENDING", None), ("COMPLETED", None)],
            [CryptoPayment(money(1000))],
            at=payment.at(),
        ),
    )
    a = payment.accounts
    events = await payment.settled(
        [K.CREATED, K.STATUS_CHANGED, K.CAPTURED],
        S.SUCCEEDED,
        authorized=1000,
        captured=1000,
        net_debits={a.clearing: 1000, a.payable: -1000},
    )
    assert events[1].status_after is S.PROCESSING
    assert {e.provider_object_id for e in events[1:]} == {charge["id"]}


async def test_coinbase_underpayment_then_resolved(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.COINBASE)
    charge = await coinbase_created(payment, 1000)
    paid = [CryptoPayment(money(600))]
    await payment.coinbase(
        "charge:pending",
        coinbase_charge(
            charge,
            [("NEW", None), ("PENDING", None)],
            [CryptoPayment(money(600), status="PENDING")],
            at=payment.at(),
        ),
    )
    await payment.coinbase(
        "charge:failed",
        coinbase_charge(
            charge,
            [("NEW", None), ("PENDING", None), ("UNRESOLVED", "UNDERPAID")],
            paid,
            at=payment.at(),
        ),
    )
    # The merchant accepts the 6.00 received in its Coinbase dashboard.
    await payment.coinbase(
        "charge:resolved",
        coinbase_charge(
            charge,
            [("NEW", None), ("PENDING", None), ("UNRESOLVED", "UNDERPAID"), ("RESOLVED", None)],
            paid,
            at=payment.at(),
        ),
    )
    a = payment.accounts
    events = await payment.settled(
        [K.CREATED, K.STATUS_CHANGED, K.FUNDS_UNRESOLVED, K.FUNDS_RESOLVED],
        S.SUCCEEDED,
        # What was paid is captured, not the price.
        authorized=600,
        captured=600,
        net_debits={a.clearing: 600, a.payable: -600},
    )
    unresolved, resolved = events[2], events[3]
    assert unresolved.status_after is S.UNRESOLVED
    assert (unresolved.amount, unresolved.suspense_minor, unresolved.captured_minor) == (
        money(600),
        600,
        0,
    )
    assert {(p.account, p.side) for p in unresolved.postings} == {
        (a.clearing, PostingSide.DEBIT),
        (a.suspense, PostingSide.CREDIT),
    }
    assert (resolved.amount, resolved.suspense_minor) == (money(600), 0)
    assert {(p.account, p.side) for p in resolved.postings} == {
        (a.suspense, PostingSide.DEBIT),
        (a.payable, PostingSide.CREDIT),
    }


async def test_coinbase_charge_expires_unpaid(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.COINBASE)
    charge = await coinbase_created(payment, 1000)
    await payment.coinbase(
        "charge:failed",
        coinbase_charge(charge, [("NEW", None), ("EXPIRED", None)], [], at=payment.at()),
    )
    await payment.settled([K.CREATED, K.STATUS_CHANGED], S.EXPIRED, authorized=0, captured=0)


async def test_coinbase_cancel_of_a_new_charge(ledger: Ledger) -> None:
    payment = Payment(ledger, Provider.COINBASE)
    charge = await coinbase_created(payment, 1000)
    await payment.command(CommandKind.CANCEL)
    # The worker's cancel call reached the fake: the charge's last status is CANCELED.
    canceled = await coinbase_charge_of(ledger.settings, charge["id"])
    assert [entry["status"] for entry in canceled["timeline"]] == ["NEW", "CANCELED"]
    # The charge as Coinbase holds it: its timeline decides, not the event type.
    at = payment.at()
    await payment.delivery(
        lambda: coinbase_delivery("charge:failed", canceled, secret=COINBASE_SECRET, at=at)
    )
    await payment.settled(
        [K.CREATED, K.CANCEL_REQUESTED, K.CANCELED], S.CANCELED, authorized=0, captured=0
    )
