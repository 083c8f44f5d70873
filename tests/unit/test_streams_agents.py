"""The stream processor without Kafka: provider calls, retries, held events, the table codec."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Self

import pytest

from ledger import limits
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
    Provider,
    ProviderEvent,
    new_envelope,
)
from ledger.errors import InvalidEnvelope, Reason
from ledger.keys import KeyRing
from ledger.keystore import ActiveSigner, KeyStore
from ledger.payments import transitions
from ledger.payments.machine import Outcome, PaymentState
from ledger.payments.status import PaymentStatus
from ledger.signing import FileSigner
from ledger.topics import TopicRole
from ledger.verify import Verifier
from streams import state as state_codec
from streams.agents import (
    HELD,
    Headers,
    MemoryTable,
    PaymentLocks,
    Processor,
    Record,
    backoff_s,
    call_with_retries,
)
from streams.providers import (
    CreatePayment,
    FailureKind,
    Operation,
    ProviderError,
    ProviderResult,
    derive_idempotency_key,
)
from streams.providers.base import RefKind, SeparateAuthorization
from tests.support import events
from tests.support.fakes import MemoryRegistry

T0 = events.T0
PAYMENT = "pay_agents_1"


# call_with_retries ----------------------------------------------------------


def _result() -> ProviderResult:
    return ProviderResult(
        provider=Provider.STRIPE,
        operation=Operation.CAPTURE,
        ref="pi_1",
        object_id="pi_1",
        status="succeeded",
        idempotency_key="k",
    )


def _failing(
    errors: list[ProviderError],
) -> tuple[Callable[[], Awaitable[ProviderResult]], list[int]]:
    calls: list[int] = []

    async def call() -> ProviderResult:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return _result()

    return call, calls


def _error(kind: FailureKind, **kw: object) -> ProviderError:
    return ProviderError(Provider.STRIPE, Operation.CAPTURE, kind, "boom", **kw)  # type: ignore[arg-type]


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def test_retries_are_bounded_with_capped_exponential_backoff() -> None:
    attempts = limits.PROVIDER_CALL_ATTEMPTS_MAX
    call, calls = _failing([_error(FailureKind.UNAVAILABLE) for _ in range(attempts + 3)])
    sleeps = Sleeps()
    with pytest.raises(ProviderError):
        await call_with_retries(call, sleep=sleeps)
    assert len(calls) == attempts
    assert sleeps == [backoff_s(n) for n in range(1, attempts)]
    assert sleeps[0] == limits.PROVIDER_RETRY_BACKOFF_BASE_S
    assert all(b >= a for a, b in itertools.pairwise(sleeps))
    assert max(sleeps) <= limits.PROVIDER_RETRY_BACKOFF_MAX_S
    assert backoff_s(50) == limits.PROVIDER_RETRY_BACKOFF_MAX_S


async def test_retry_after_is_honoured_within_the_cap() -> None:
    call, calls = _failing(
        [
            _error(FailureKind.RATE_LIMITED, retry_after_s=1.5),
            _error(FailureKind.RATE_LIMITED, retry_after_s=3_600.0),
        ]
    )
    sleeps = Sleeps()
    assert (await call_with_retries(call, sleep=sleeps)).ref == "pi_1"
    assert len(calls) == 3
    assert sleeps == [1.5, limits.PROVIDER_RETRY_BACKOFF_MAX_S]


async def test_a_retry_after_shorter_than_the_backoff_does_not_shorten_it() -> None:
    call, _ = _failing([_error(FailureKind.RATE_LIMITED, retry_after_s=0.0)])
    sleeps = Sleeps()
    await call_with_retries(call, sleep=sleeps)
    assert sleeps == [backoff_s(1)]


@pytest.mark.parametrize(
    "error",
    [
        _error(FailureKind.REJECTED, status_code=400),
        _error(FailureKind.NOT_FOUND, status_code=404),
        _error(FailureKind.UNAVAILABLE, retryable=False),
    ],
)
async def test_a_non_retryable_failure_is_not_retried(error: ProviderError) -> None:
    call, calls = _failing([error])
    sleeps = Sleeps()
    with pytest.raises(ProviderError) as raised:
        await call_with_retries(call, sleep=sleeps)
    assert raised.value is error
    assert len(calls) == 1
    assert sleeps == []


# The table codec --------------------------------------------------------------


def _state() -> PaymentState:
    return PaymentState(
        payment_id=PAYMENT,
        merchant_id="mer_1",
        provider=Provider.PAYPAL,
        currency="EUR",
        amount_minor=1000,
        capture_method=CaptureMethod.MANUAL,
        status=PaymentStatus.PARTIALLY_REFUNDED,
        sequence=7,
        authorized_minor=1000,
        captured_minor=800,
        refunded_minor=100,
        fees=(Money(30, "EUR"), Money(5, "USD")),
        capture_final=True,
        dispute_id="PP-D-1",
        provider_object_id="ORDER-1",
        status_since=T0,
        seen_provider_event_ids=("WH-1", "WH-2"),
        seen_command_event_ids=("c1",),
        seen_movement_keys=("capture:1",),
    )


def test_state_round_trip() -> None:
    state = _state()
    assert state_codec.loads(state_codec.dumps(state)) == state


def test_entry_round_trip_with_ref_and_held_events() -> None:
    held = state_codec.HeldEvent("evt_1", "p.provider-events", 2, 41, bytes(range(256)))
    for entry in (
        state_codec.Entry(),
        state_codec.Entry(held=(held, held)),
        state_codec.Entry(state=_state(), provider_ref="order:ORDER-1"),
    ):
        data = state_codec.dumps_entry(entry)
        assert state_codec.loads_entry(data) == entry
        assert state_codec.dumps_entry(state_codec.loads_entry(data)) == data


def test_entry_round_trip_with_authorization_and_capture_refs() -> None:
    entry = state_codec.Entry(
        state=_state(),
        provider_ref="order:ORDER-1",
        authorization_ref="authorization:AUTH-1",
        captures=(
            state_codec.CaptureRef("capture:C-1", 600, 600),
            state_codec.CaptureRef("capture:C-2", 400),
        ),
    )
    data = state_codec.dumps_entry(entry)
    assert state_codec.loads_entry(data) == entry
    assert state_codec.dumps_entry(state_codec.loads_entry(data)) == data


def test_a_version_2_entry_reads_with_its_one_ref() -> None:
    held = state_codec.HeldEvent("evt_1", "p.provider-events", 2, 41, b"wire")
    version_3 = json.loads(
        state_codec.dumps_entry(
            state_codec.Entry(state=_state(), provider_ref="order:ORDER-1", held=(held,))
        )
    )
    del version_3["authorization_ref"], version_3["captures"]
    version_2 = json.dumps({**version_3, "v": 2}).encode()
    assert state_codec.loads_entry(version_2) == state_codec.Entry(
        state=_state(), provider_ref="order:ORDER-1", held=(held,)
    )


def test_a_version_1_state_reads_as_an_entry() -> None:
    state = _state()
    assert state_codec.loads_entry(state_codec.dumps(state)) == state_codec.Entry(state=state)


def test_an_unknown_entry_version_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        state_codec.loads_entry(b'{"v": 99}')


# Processor --------------------------------------------------------------------


class FakeProvider:
    """Records every call; a call may be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[Operation, str | None, Money | None, str]] = []
        self.fail: dict[Operation, ProviderError] = {}

    @property
    def provider(self) -> Provider:
        return Provider.STRIPE

    def _answer(
        self, operation: Operation, ref: str | None, amount: Money | None, key: str
    ) -> ProviderResult:
        self.calls.append((operation, ref, amount, key))
        if operation in self.fail:
            raise self.fail[operation]
        return ProviderResult(
            provider=Provider.STRIPE,
            operation=operation,
            ref="pi_fake",
            object_id="pi_fake",
            status="ok",
            idempotency_key=key,
        )

    async def create(self, payment: CreatePayment, *, idempotency_key: str) -> ProviderResult:
        return self._answer(Operation.CREATE, None, payment.amount, idempotency_key)

    async def capture(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        return self._answer(Operation.CAPTURE, ref, amount, idempotency_key)

    async def cancel(self, ref: str, *, idempotency_key: str) -> ProviderResult:
        return self._answer(Operation.CANCEL, ref, None, idempotency_key)

    async def refund(
        self, ref: str, amount: Money | None, *, idempotency_key: str
    ) -> ProviderResult:
        return self._answer(Operation.REFUND, ref, amount, idempotency_key)

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        provider: Provider = Provider.STRIPE,
        fake: FakeProvider | None = None,
    ) -> None:
        clock = lambda: T0 - timedelta(hours=1)  # noqa: E731
        self.settings = Settings(state_dir=tmp_path)
        store = KeyStore(self.settings, clock=clock)
        store.active_key()
        self.store = store
        self.codec = EnvelopeCodec(MemoryRegistry())
        self.signer = store.active_key().signer
        self.verifier = Verifier(self.codec, store.keyring())
        self.provider = provider
        self.fake = fake or FakeProvider()
        self.processor = self._processor()
        self.topics = self.processor.topics
        self.table = MemoryTable()
        self.emitted: list[tuple[str, bytes, bytes, Headers]] = []
        self.offset = 0
        self.counter = 0

    def _processor(self) -> Processor:
        return Processor(
            self.settings,
            self.codec,
            self.verifier,
            ActiveSigner(self.store, clock=lambda: T0 - timedelta(hours=1)),
            providers=lambda _: self.fake,
            clock=lambda: T0,
        )

    def restart(self) -> None:
        """A new processor on the same table, as after a worker restart."""
        self.processor = self._processor()

    async def emit(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        self.emitted.append((topic, key, value, headers))

    def record(self, role: TopicRole, envelope: Envelope) -> Record:
        _, wire = self.codec.encode(envelope, self.signer, self.topics[role])
        self.offset += 1
        return Record(self.topics[role], 0, self.offset, envelope.aggregate_id.encode(), wire, [])

    def command(
        self,
        kind: CommandKind,
        amount: int | None = None,
        capture_method: CaptureMethod = CaptureMethod.MANUAL,
    ) -> Record:
        self.counter += 1
        envelope = new_envelope(
            event_type=f"payment.command.{kind.value.lower()}",
            aggregate_id=PAYMENT,
            sequence=self.counter,
            producer="payledger/ingress",
            now=T0,
            payload=PaymentCommand(
                command=kind,
                merchant_id="mer_1",
                idempotency_key=f"idem-{self.counter}",
                provider=self.provider,
                amount=Money(amount, "EUR") if amount is not None else None,
                capture_method=capture_method if kind is CommandKind.CREATE else None,
            ),
        )
        return self.record(TopicRole.COMMANDS, envelope)

    def webhook(self, event_type: str, status: str, **fields: str) -> Record:
        self.counter += 1
        envelope = new_envelope(
            event_type=f"provider.stripe.{event_type}",
            aggregate_id=PAYMENT,
            sequence=self.counter,
            producer="payledger/ingress",
            now=T0,
            occurred_at=T0 + timedelta(seconds=self.counter),
            payload=ProviderEvent(
                provider=Provider.STRIPE,
                provider_event_id=f"evt_{self.counter}",
                provider_event_type=event_type,
                received_at=T0,
                body_sha256=hashlib.sha256(str(self.counter).encode()).digest(),
                provider_object_id="pi_fake",
                status=status,
                amount=Money(1000, "EUR"),
                fields=fields,
            ),
        )
        return self.record(TopicRole.PROVIDER_EVENTS, envelope)

    def paypal(
        self,
        event_type: str,
        status: str,
        object_id: str,
        amount: int | None = None,
        **fields: str,
    ) -> Record:
        """A PayPal webhook as the ingress records it; ``fields`` as its normalizer names them."""
        self.counter += 1
        envelope = new_envelope(
            event_type=f"provider.paypal.{event_type.lower()}",
            aggregate_id=PAYMENT,
            sequence=self.counter,
            producer="payledger/ingress",
            now=T0,
            occurred_at=T0 + timedelta(seconds=self.counter),
            payload=ProviderEvent(
                provider=Provider.PAYPAL,
                provider_event_id=f"WH-{self.counter}",
                provider_event_type=event_type,
                received_at=T0,
                body_sha256=hashlib.sha256(str(self.counter).encode()).digest(),
                provider_object_id=object_id,
                status=status,
                amount=Money(amount, "EUR") if amount is not None else None,
                fields=fields,
            ),
        )
        return self.record(TopicRole.PROVIDER_EVENTS, envelope)

    def opened(self, role: TopicRole) -> list[Envelope]:
        topic = self.topics[role]
        return [self.verifier.open(value) for t, _, value, _ in self.emitted if t == topic]

    def payment_events(self) -> list[PaymentEvent]:
        payloads = [e.payload for e in self.opened(TopicRole.PAYMENT_EVENTS)]
        assert all(isinstance(p, PaymentEvent) for p in payloads)
        return payloads  # type: ignore[return-value]

    def entry(self) -> state_codec.Entry:
        return state_codec.loads_entry(self.table[PAYMENT.encode()])


def _id(harness: Harness, record: Record) -> str:
    return harness.verifier.open(record.value).event_id


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def _authorized(h: Harness) -> Record:
    create = h.command(CommandKind.CREATE, 1000)
    assert await h.processor.command(create, h.table, h.emit) is Outcome.APPLIED
    for record in (
        h.webhook("payment_intent.created", "requires_payment_method"),
        h.webhook(
            "payment_intent.amount_capturable_updated",
            "requires_capture",
            amount_capturable="1000",
        ),
    ):
        outcome = await h.processor.provider_event(record, h.table, h.emit)
        assert outcome in (Outcome.APPLIED, Outcome.RECORDED)
    assert h.entry().state.status is PaymentStatus.AUTHORIZED  # type: ignore[union-attr]
    return create


async def test_capture_and_refund_calls_carry_derived_keys_and_the_create_ref(
    harness: Harness,
) -> None:
    h = harness
    create = await _authorized(h)
    assert h.entry().provider_ref == "pi_fake"
    capture = h.command(CommandKind.CAPTURE, 600)
    assert await h.processor.command(capture, h.table, h.emit) is Outcome.RECORDED
    succeeded = h.webhook("payment_intent.succeeded", "succeeded", amount_received="600")
    assert await h.processor.provider_event(succeeded, h.table, h.emit) is Outcome.APPLIED
    refund = h.command(CommandKind.REFUND, 200)
    assert await h.processor.command(refund, h.table, h.emit) is Outcome.RECORDED

    assert h.fake.calls == [
        (Operation.CREATE, None, Money(1000, "EUR"), derive_idempotency_key(_id(h, create))),
        (
            Operation.CAPTURE,
            "pi_fake",
            Money(600, "EUR"),
            derive_idempotency_key(_id(h, capture), "capture"),
        ),
        (
            Operation.REFUND,
            "pi_fake",
            Money(200, "EUR"),
            derive_idempotency_key(_id(h, refund), "refund"),
        ),
    ]
    events_ = h.payment_events()
    assert [e.kind.value for e in events_][-3:] == [
        "CAPTURE_REQUESTED",
        "CAPTURED",
        "REFUND_REQUESTED",
    ]
    sequences = [e.sequence for e in h.opened(TopicRole.PAYMENT_EVENTS)]
    assert sequences == list(range(1, len(sequences) + 1))
    assert h.opened(TopicRole.REJECTED) == []


async def test_a_replayed_command_makes_no_second_provider_call(harness: Harness) -> None:
    h = harness
    await _authorized(h)
    capture = h.command(CommandKind.CAPTURE, None)
    assert await h.processor.command(capture, h.table, h.emit) is Outcome.RECORDED
    calls, emitted = len(h.fake.calls), len(h.emitted)
    assert await h.processor.command(capture, h.table, h.emit) is Outcome.DUPLICATE
    assert len(h.fake.calls) == calls
    assert len(h.emitted) == emitted
    assert h.fake.calls[-1][2] == Money(1000, "EUR"), "no amount: what is capturable"


async def test_a_cancel_calls_the_provider(harness: Harness) -> None:
    h = harness
    await _authorized(h)
    cancel = h.command(CommandKind.CANCEL)
    assert await h.processor.command(cancel, h.table, h.emit) is Outcome.RECORDED
    assert h.fake.calls[-1] == (
        Operation.CANCEL,
        "pi_fake",
        None,
        derive_idempotency_key(_id(h, cancel), "cancel"),
    )


async def test_a_failed_call_is_an_audit_fact_and_a_dead_letter(harness: Harness) -> None:
    h = harness
    await _authorized(h)
    h.fake.fail[Operation.CAPTURE] = ProviderError(
        Provider.STRIPE, Operation.CAPTURE, FailureKind.REJECTED, "no", status_code=400
    )
    capture = h.command(CommandKind.CAPTURE, 600)
    assert await h.processor.command(capture, h.table, h.emit) is Outcome.RECORDED
    assert len([c for c in h.fake.calls if c[0] is Operation.CAPTURE]) == 1, "not retried"
    (fact,) = [e.payload for e in h.opened(TopicRole.AUDIT_FACTS)]
    assert isinstance(fact, AuditFact)
    assert fact.fact_type == "payment.provider-call-failed"
    assert fact.subject == PAYMENT
    assert fact.reason == "rejected"
    assert fact.details["operation"] == "capture"
    assert fact.details["event_id"] == _id(h, capture)
    (letter,) = [e.payload for e in h.opened(TopicRole.REJECTED)]
    assert isinstance(letter, DeadLetter)
    assert letter.error_class == "provider-call-failed"
    assert letter.original_event_id == _id(h, capture)
    assert letter.original_offset == capture.offset
    requested, failed = h.payment_events()[-2:]
    assert requested.kind.value == "CAPTURE_REQUESTED"
    # The merchant reads the failure in the payment's own timeline, in order.
    assert failed.kind.value == "NOTED"
    assert failed.note == "provider call failed: capture at stripe: rejected: no"
    assert failed.command_event_id == _id(h, capture)
    assert (failed.status_after, failed.postings) == (requested.status_after, ())
    sequences = [e.sequence for e in h.opened(TopicRole.PAYMENT_EVENTS)]
    assert sequences == list(range(1, len(sequences) + 1))
    assert h.entry().state.sequence == sequences[-1]  # type: ignore[union-attr]
    assert h.entry().provider_ref == "pi_fake", "the ref is kept for the next command"


async def test_an_early_provider_event_is_held_then_applied_after_create(
    harness: Harness,
) -> None:
    h = harness
    early = h.webhook("payment_intent.created", "requires_payment_method")
    assert await h.processor.provider_event(early, h.table, h.emit) == HELD
    # A redelivery of the same provider event is not held twice.
    assert await h.processor.provider_event(early, h.table, h.emit) == HELD
    assert h.emitted == []
    entry = h.entry()
    assert entry.state is None
    assert [held.offset for held in entry.held] == [early.offset]

    create = h.command(CommandKind.CREATE, 1000)
    assert await h.processor.command(create, h.table, h.emit) is Outcome.APPLIED
    opened = h.opened(TopicRole.PAYMENT_EVENTS)
    assert [e.sequence for e in opened] == [1, 2]
    kinds = [e.payload.kind.value for e in opened]  # type: ignore[union-attr]
    assert kinds == ["CREATED", "STATUS_CHANGED"]
    assert opened[1].causation_id == _id(h, early)
    entry = h.entry()
    assert entry.held == ()
    assert entry.state is not None
    assert entry.state.status is PaymentStatus.AWAITING_PAYMENT_METHOD
    assert entry.state.seen_provider_event_ids == ("evt_1",)
    assert h.opened(TopicRole.REJECTED) == []


async def test_beyond_the_hold_bound_an_early_event_is_dead_lettered(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    monkeypatch.setattr(limits, "STREAMS_HELD_EVENTS_PER_PAYMENT_MAX", 2)
    records = [h.webhook("payment_intent.processing", "processing") for _ in range(3)]
    results = [await h.processor.provider_event(r, h.table, h.emit) for r in records]
    assert results == [HELD, HELD, Outcome.REJECTED]
    (letter,) = [e.payload for e in h.opened(TopicRole.REJECTED)]
    assert isinstance(letter, DeadLetter)
    assert letter.original_offset == records[2].offset
    assert "not held" in letter.detail
    (fact,) = [e.payload for e in h.opened(TopicRole.AUDIT_FACTS)]
    assert isinstance(fact, AuditFact)
    assert fact.reason == "unknown-payment"
    assert len(h.entry().held) == 2


# PayPal: the follow-up call on approval, and one reference per object ----------


class FakePayPal(FakeProvider):
    """Answers as the PayPal adapter does, with Prism's unreadable amounts: each object its ref.

    The create returns the order, authorize the authorization, each capture a
    capture of its own, a void the authorization and a refund its capture.
    ``fail_keys`` fails the call with that idempotency key.
    """

    def __init__(self) -> None:
        super().__init__()
        self.finals: dict[str, bool] = {}
        self.fail_keys: dict[str, ProviderError] = {}
        self._captures = 0

    @property
    def provider(self) -> Provider:
        return Provider.PAYPAL

    def _answer(
        self, operation: Operation, ref: str | None, amount: Money | None, key: str
    ) -> ProviderResult:
        self.calls.append((operation, ref, amount, key))
        failure = self.fail_keys.get(key) or self.fail.get(operation)
        if failure is not None:
            raise failure
        kinds = {
            Operation.CREATE: ("order:O1", RefKind.PAYMENT),
            Operation.AUTHORIZE: ("authorization:A1", RefKind.AUTHORIZATION),
            Operation.CANCEL: (ref or "", RefKind.AUTHORIZATION),
            Operation.REFUND: (ref or "", RefKind.CAPTURE),
        }
        if operation is Operation.CAPTURE:
            self._captures += 1
            answer = (f"capture:C{self._captures}", RefKind.CAPTURE)
        else:
            answer = kinds[operation]
        return ProviderResult(
            provider=Provider.PAYPAL,
            operation=operation,
            ref=answer[0],
            object_id=answer[0].partition(":")[2],
            status="OK",
            idempotency_key=key,
            ref_kind=answer[1],
        )

    async def authorize(self, ref: str, *, idempotency_key: str) -> ProviderResult:
        return self._answer(Operation.AUTHORIZE, ref, None, idempotency_key)

    async def capture(
        self, ref: str, amount: Money | None, *, idempotency_key: str, final: bool = False
    ) -> ProviderResult:
        self.finals[idempotency_key] = final
        return self._answer(Operation.CAPTURE, ref, amount, idempotency_key)


def _paypal_harness(tmp_path: Path) -> tuple[Harness, FakePayPal]:
    fake = FakePayPal()
    assert isinstance(fake, SeparateAuthorization)
    return Harness(tmp_path, Provider.PAYPAL, fake), fake


def _eur(amount: int) -> Money:
    return Money(amount, "EUR")


async def _approved(h: Harness, capture_method: CaptureMethod) -> Record:
    """CREATE and the buyer's approval; the approval's record."""
    create = h.command(CommandKind.CREATE, 1000, capture_method)
    assert await h.processor.command(create, h.table, h.emit) is Outcome.APPLIED
    approval = h.paypal("CHECKOUT.ORDER.APPROVED", "APPROVED", "O1")
    assert await h.processor.provider_event(approval, h.table, h.emit) is Outcome.APPLIED
    return approval


async def _paypal_step(h: Harness, record: Record, outcome: Outcome) -> None:
    process = (
        h.processor.command
        if record.topic == h.topics[TopicRole.COMMANDS]
        else h.processor.provider_event
    )
    assert await process(record, h.table, h.emit) is outcome


def test_only_paypals_approval_names_a_follow_up_call() -> None:
    named = {
        (provider, row, rule.follow_up)
        for provider, table in transitions.RULES.items()
        for row, rule in table.rules.items()
        if rule is not None and rule.follow_up
    }
    assert named == {
        (
            Provider.PAYPAL,
            ("CHECKOUT.ORDER.APPROVED", transitions.ANY),
            (
                (CaptureMethod.AUTOMATIC, transitions.FollowUp.CAPTURE),
                (CaptureMethod.MANUAL, transitions.FollowUp.AUTHORIZE),
            ),
        )
    }


@pytest.mark.parametrize(
    ("capture_method", "operation"),
    [(CaptureMethod.MANUAL, Operation.AUTHORIZE), (CaptureMethod.AUTOMATIC, Operation.CAPTURE)],
)
async def test_an_approval_makes_the_follow_up_call_with_a_key_from_its_event_id(
    tmp_path: Path, capture_method: CaptureMethod, operation: Operation
) -> None:
    h, fake = _paypal_harness(tmp_path)
    approval = await _approved(h, capture_method)
    key = derive_idempotency_key(_id(h, approval), operation.value)
    assert fake.calls[1:] == [(operation, "order:O1", None, key)]
    entry = h.entry()
    assert entry.provider_ref == "order:O1"
    if operation is Operation.AUTHORIZE:
        assert (entry.authorization_ref, entry.captures) == ("authorization:A1", ())
    else:
        assert fake.finals[key] is True
        assert entry.authorization_ref is None
        assert entry.captures == (state_codec.CaptureRef("capture:C1", 1000),)
    # The approval is recorded like any event: one STATUS_CHANGED, nothing else.
    assert [e.kind.value for e in h.payment_events()] == ["CREATED", "STATUS_CHANGED"]
    assert h.opened(TopicRole.REJECTED) == []
    # A redelivery is a duplicate, and a second approval (another event id)
    # finds the call made: neither calls again.
    await _paypal_step(h, approval, Outcome.DUPLICATE)
    again = h.paypal("CHECKOUT.ORDER.APPROVED", "APPROVED", "O1")
    await _paypal_step(h, again, Outcome.RECORDED)
    assert len(fake.calls) == 2


async def test_stripe_events_make_no_follow_up_call(harness: Harness) -> None:
    h = harness
    await _authorized(h)
    assert [call[0] for call in h.fake.calls] == [Operation.CREATE]


async def test_a_failed_follow_up_is_an_audit_fact_and_a_dead_letter_of_the_event(
    tmp_path: Path,
) -> None:
    h, fake = _paypal_harness(tmp_path)
    fake.fail[Operation.AUTHORIZE] = ProviderError(
        Provider.PAYPAL,
        Operation.AUTHORIZE,
        FailureKind.REJECTED,
        "the order is not approved",
        status_code=422,
        provider_code="ORDER_NOT_APPROVED",
    )
    approval = await _approved(h, CaptureMethod.MANUAL)
    assert [c[0] for c in fake.calls] == [Operation.CREATE, Operation.AUTHORIZE], "not retried"
    (fact,) = [e.payload for e in h.opened(TopicRole.AUDIT_FACTS)]
    assert isinstance(fact, AuditFact)
    assert (fact.fact_type, fact.subject, fact.reason) == (
        "payment.provider-call-failed",
        PAYMENT,
        "rejected",
    )
    assert fact.details["operation"] == "authorize"
    assert fact.details["event_id"] == _id(h, approval)
    assert fact.details["status_code"] == "422"
    (letter,) = [e.payload for e in h.opened(TopicRole.REJECTED)]
    assert isinstance(letter, DeadLetter)
    assert letter.error_class == "provider-call-failed"
    assert (letter.original_event_id, letter.original_offset) == (_id(h, approval), approval.offset)
    # The approval stands; no authorization is kept.
    assert h.payment_events()[-1].status_after is PaymentStatus.PROCESSING
    assert h.entry().authorization_ref is None
    # Another approval event (another id) tries again, with its own key.
    del fake.fail[Operation.AUTHORIZE]
    again = h.paypal("CHECKOUT.ORDER.APPROVED", "APPROVED", "O1")
    await _paypal_step(h, again, Outcome.RECORDED)
    assert fake.calls[-1] == (
        Operation.AUTHORIZE,
        "order:O1",
        None,
        derive_idempotency_key(_id(h, again), "authorize"),
    )
    assert h.entry().authorization_ref == "authorization:A1"


async def test_an_approval_held_until_create_makes_its_follow_up_after_it(
    tmp_path: Path,
) -> None:
    h, fake = _paypal_harness(tmp_path)
    approval = h.paypal("CHECKOUT.ORDER.APPROVED", "APPROVED", "O1")
    assert await h.processor.provider_event(approval, h.table, h.emit) == HELD
    create = h.command(CommandKind.CREATE, 1000)
    await _paypal_step(h, create, Outcome.APPLIED)
    assert [c[:2] for c in fake.calls] == [
        (Operation.CREATE, None),
        (Operation.AUTHORIZE, "order:O1"),
    ]
    assert fake.calls[1][3] == derive_idempotency_key(_id(h, approval), "authorize")
    entry = h.entry()
    assert (entry.held, entry.authorization_ref) == ((), "authorization:A1")


async def _captured_in_two(h: Harness) -> list[Record]:
    """MANUAL: approved, authorized, 600 captured then the rest; the two CAPTURE commands."""
    await _approved(h, CaptureMethod.MANUAL)
    await _paypal_step(
        h,
        h.paypal("PAYMENT.AUTHORIZATION.CREATED", "CREATED", "AUTH-WH", 1000, order_id="O1"),
        Outcome.APPLIED,
    )
    captures = [h.command(CommandKind.CAPTURE, 600), h.command(CommandKind.CAPTURE)]
    for n, (command, amount, final) in enumerate(
        zip(captures, (600, 400), ("false", "true"), strict=True), start=1
    ):
        await _paypal_step(h, command, Outcome.RECORDED)
        h.restart()  # the references survive in the table
        completed = h.paypal(
            "PAYMENT.CAPTURE.COMPLETED",
            "COMPLETED",
            f"CAP-WH-{n}",
            amount,
            order_id="O1",
            final_capture=final,
        )
        await _paypal_step(h, completed, Outcome.APPLIED)
    return captures


async def test_captures_go_against_the_authorization_and_only_the_last_is_final(
    tmp_path: Path,
) -> None:
    h, fake = _paypal_harness(tmp_path)
    first, rest = await _captured_in_two(h)
    keys = [derive_idempotency_key(_id(h, c), "capture") for c in (first, rest)]
    assert fake.calls[2:] == [
        (Operation.CAPTURE, "authorization:A1", _eur(600), keys[0]),
        (Operation.CAPTURE, "authorization:A1", _eur(400), keys[1]),
    ]
    assert [fake.finals[key] for key in keys] == [False, True]
    entry = h.entry()
    assert entry.captures == (
        state_codec.CaptureRef("capture:C1", 600),
        state_codec.CaptureRef("capture:C2", 400),
    )
    assert entry.state is not None
    assert (entry.state.status, entry.state.captured_minor) == (PaymentStatus.SUCCEEDED, 1000)


async def test_a_cancel_voids_the_authorization(tmp_path: Path) -> None:
    h, fake = _paypal_harness(tmp_path)
    await _approved(h, CaptureMethod.MANUAL)
    await _paypal_step(
        h,
        h.paypal("PAYMENT.AUTHORIZATION.CREATED", "CREATED", "AUTH-WH", 1000, order_id="O1"),
        Outcome.APPLIED,
    )
    cancel = h.command(CommandKind.CANCEL)
    await _paypal_step(h, cancel, Outcome.RECORDED)
    assert fake.calls[-1] == (
        Operation.CANCEL,
        "authorization:A1",
        None,
        derive_idempotency_key(_id(h, cancel), "cancel"),
    )
    assert h.entry().authorization_ref == "authorization:A1"
    assert h.opened(TopicRole.REJECTED) == []


async def test_refunds_take_the_captures_in_order_each_at_most_what_is_left(
    tmp_path: Path,
) -> None:
    h, fake = _paypal_harness(tmp_path)
    await _captured_in_two(h)
    first = h.command(CommandKind.REFUND, 300)
    await _paypal_step(h, first, Outcome.RECORDED)
    await _paypal_step(
        h,
        h.paypal("PAYMENT.CAPTURE.REFUNDED", "COMPLETED", "REF-WH-1", 300, order_id="O1"),
        Outcome.APPLIED,
    )
    rest = h.command(CommandKind.REFUND)  # 700: 300 of the first capture, 400 of the second
    await _paypal_step(h, rest, Outcome.RECORDED)
    assert fake.calls[4:] == [
        (
            Operation.REFUND,
            "capture:C1",
            _eur(300),
            derive_idempotency_key(_id(h, first), "refund"),
        ),
        (Operation.REFUND, "capture:C1", _eur(300), derive_idempotency_key(_id(h, rest), "refund")),
        (
            Operation.REFUND,
            "capture:C2",
            _eur(400),
            derive_idempotency_key(_id(h, rest), "refund-2"),
        ),
    ]
    assert h.entry().captures == (
        state_codec.CaptureRef("capture:C1", 600, 600),
        state_codec.CaptureRef("capture:C2", 400, 400),
    )
    assert h.opened(TopicRole.REJECTED) == []


async def test_a_refund_failing_part_way_keeps_what_went_through(tmp_path: Path) -> None:
    h, fake = _paypal_harness(tmp_path)
    await _captured_in_two(h)
    refund = h.command(CommandKind.REFUND, 900)
    second = derive_idempotency_key(_id(h, refund), "refund-2")
    fake.fail_keys[second] = ProviderError(
        Provider.PAYPAL, Operation.REFUND, FailureKind.REJECTED, "no", status_code=422
    )
    await _paypal_step(h, refund, Outcome.RECORDED)
    assert [(c[1], c[2]) for c in fake.calls[4:]] == [
        ("capture:C1", _eur(600)),
        ("capture:C2", _eur(300)),
    ]
    assert h.entry().captures == (
        state_codec.CaptureRef("capture:C1", 600, 600),
        state_codec.CaptureRef("capture:C2", 400, 0),
    )
    (fact,) = [e.payload for e in h.opened(TopicRole.AUDIT_FACTS)]
    assert isinstance(fact, AuditFact)
    assert fact.reason == "rejected"
    assert "call 2 of 2 failed after 600 of 900 went through" in fact.details["detail"]
    (letter,) = [e.payload for e in h.opened(TopicRole.REJECTED)]
    assert isinstance(letter, DeadLetter)
    assert letter.original_event_id == _id(h, refund)


async def test_a_refund_the_captures_cannot_cover_is_refused_before_any_call(
    tmp_path: Path,
) -> None:
    h, fake = _paypal_harness(tmp_path)
    await _captured_in_two(h)
    # The second capture was refunded elsewhere (PayPal's dashboard, say).
    entry = h.entry()
    refunded_elsewhere = dataclasses.replace(
        entry,
        captures=(entry.captures[0], dataclasses.replace(entry.captures[1], refunded_minor=400)),
    )
    await h.table.put(PAYMENT.encode(), state_codec.dumps_entry(refunded_elsewhere))
    calls = len(fake.calls)
    refund = h.command(CommandKind.REFUND, 700)
    await _paypal_step(h, refund, Outcome.RECORDED)
    assert len(fake.calls) == calls, "nothing sent"
    (fact,) = [e.payload for e in h.opened(TopicRole.AUDIT_FACTS)]
    assert isinstance(fact, AuditFact)
    assert (fact.reason, fact.details["operation"]) == ("invalid-input", "refund")
    assert "a refund of 700 with 600 left to refund" in fact.details["detail"]
    assert [e.kind.value for e in h.payment_events()[-2:]] == ["REFUND_REQUESTED", "NOTED"]
    assert "a refund of 700 with 600 left" in (h.payment_events()[-1].note or "")
    assert h.entry().captures == refunded_elsewhere.captures


# One payment at a time, across both agents --------------------------------------


async def test_a_webhook_read_during_its_payments_provider_call_waits_for_it(
    harness: Harness,
) -> None:
    h = harness
    await _authorized(h)
    gate = asyncio.Event()
    original = h.fake.capture

    async def held_capture(ref: str, amount: Money | None, *, idempotency_key: str):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(ref, amount, idempotency_key=idempotency_key)

    h.fake.capture = held_capture  # type: ignore[method-assign]
    capture = h.command(CommandKind.CAPTURE, 600)
    succeeded = h.webhook("payment_intent.succeeded", "succeeded", amount_received="600")
    command_task = asyncio.create_task(h.processor.command(capture, h.table, h.emit))
    await asyncio.sleep(0)
    webhook_task = asyncio.create_task(h.processor.provider_event(succeeded, h.table, h.emit))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not command_task.done()
    assert not webhook_task.done(), "the webhook must wait for the command's call"
    gate.set()
    assert await command_task is Outcome.RECORDED
    assert await webhook_task is Outcome.APPLIED
    sequences = [e.sequence for e in h.opened(TopicRole.PAYMENT_EVENTS)]
    assert sequences == list(range(1, len(sequences) + 1))
    state = h.entry().state
    assert state is not None
    assert (state.status, state.captured_minor) == (PaymentStatus.SUCCEEDED, 600)


async def test_payment_locks_serialize_one_key_and_are_dropped_when_free() -> None:
    locks = PaymentLocks()
    order: list[str] = []

    async def use(key: bytes, name: str, pause: int) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            for _ in range(pause):
                await asyncio.sleep(0)
            order.append(f"{name}-")

    await asyncio.gather(use(b"a", "a1", 5), use(b"a", "a2", 0), use(b"b", "b1", 0))
    assert order.index("a1-") < order.index("a2+"), order
    assert order.index("b1-") < order.index("a1-"), "another payment does not wait"
    assert len(locks) == 0


# Keys endorsed after the processor started -------------------------------------


class FakeKeys:
    """A keys topic that holds ``pending`` endorsements until caught up with."""

    def __init__(self, verifier: Verifier, pending: list[object], failures: int = 0) -> None:
        self.verifier = verifier
        self.pending = pending
        self.failures = failures
        self.calls = 0

    async def catch_up(self) -> int:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise TimeoutError("the broker did not answer")
        for endorsement in self.pending:
            self.verifier.keyring.add(endorsement)  # type: ignore[arg-type]
        admitted, self.pending = len(self.pending), []
        return admitted


def _rotated(tmp_path: Path, failures: int) -> tuple[Harness, FakeKeys, Record]:
    """A processor that knows only the root, and a CREATE signed by a key it has not seen."""
    h = Harness(tmp_path)
    store = KeyStore(Settings(state_dir=tmp_path))
    new_key = FileSigner.generate()
    endorsement = store.root().endorse(
        new_key, not_before=T0 - timedelta(hours=1), lifetime=timedelta(days=2)
    )
    verifier = Verifier(h.codec, KeyRing([store.trusted_root()]))
    signer = ActiveSigner(store, clock=lambda: T0 - timedelta(hours=1))
    verifier.keyring.add(signer.endorsement())  # the processor's own key, to read what it emits
    keys = FakeKeys(verifier, [endorsement], failures)
    h.verifier = verifier
    h.processor = Processor(
        Settings(state_dir=tmp_path),
        h.codec,
        verifier,
        signer,
        providers=lambda _: h.fake,
        clock=lambda: T0,
        keys=keys,
    )
    h.signer = new_key
    return h, keys, h.command(CommandKind.CREATE, 1000)


async def test_an_unknown_key_is_looked_up_on_the_keys_topic_before_it_is_poison(
    tmp_path: Path,
) -> None:
    h, keys, create = _rotated(tmp_path, failures=0)
    assert await h.processor.command(create, h.table, h.emit) is Outcome.APPLIED
    assert keys.calls == 1
    assert h.opened(TopicRole.REJECTED) == []


async def test_a_key_the_keys_topic_does_not_endorse_stays_unknown(tmp_path: Path) -> None:
    h, keys, create = _rotated(tmp_path, failures=0)
    keys.pending = []
    assert await h.processor.command(create, h.table, h.emit) is None
    (letter,) = [e.payload for e in h.opened(TopicRole.REJECTED)]
    assert isinstance(letter, DeadLetter)
    assert letter.reason == Reason.UNKNOWN_KEY.value
    with pytest.raises(InvalidEnvelope):
        h.verifier.open(create.value)


async def test_an_unreadable_keys_topic_is_waited_out_not_dead_lettered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, keys, create = _rotated(tmp_path, failures=2)
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("streams.agents.asyncio.sleep", no_sleep)
    assert await h.processor.command(create, h.table, h.emit) is Outcome.APPLIED
    assert keys.calls == 3
    assert waits == [backoff_s(1), backoff_s(2)]
    assert h.opened(TopicRole.REJECTED) == []
