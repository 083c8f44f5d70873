"""The stream worker killed with SIGKILL in the middle of a backlog, then restarted.

A backlog of ``PAYMENTS`` Stripe payments waits on the topics before the
worker starts: for each, an automatic-capture CREATE on commands and its
``payment_intent.succeeded`` delivery on provider-events (a delivery read
before its CREATE is held by the worker, in the payments table, until the
CREATE comes). The worker (a subprocess, as in ``test_streams_slice``) calls
Stripe through a recording proxy in front of stripe-mock. Once part of the
domain events are committed, the worker is killed with SIGKILL -- no
shutdown, open transactions left behind -- and a new one is started on the
same state. When every payment is done:

- every payment ends succeeded with 10.50 USD captured, and every record
  verifies for an auditor that starts from the root key;
- per payment the sequence numbers are 1..n, with no gap and no duplicate,
  and no event id appears twice, so no posting is recorded twice; the
  postings balance in every event and add up to exactly one capture per
  payment;
- every (payment, provider operation) reached Stripe under exactly one
  idempotency key -- the one derived from its CREATE -- however many times
  it was sent (a call repeated after the crash carries the same key);
- nothing was dead-lettered and no audit fact names these payments.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, TopicPartition

from ledger import limits
from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.envelope import (
    CaptureMethod,
    CommandKind,
    Envelope,
    Money,
    PaymentCommand,
    PaymentEvent,
    PaymentEventKind,
    PostingSide,
    Provider,
    new_envelope,
    unbalanced_currencies,
)
from ledger.keystore import ActiveSigner, KeyStore
from ledger.payments.postings import PaymentAccounts
from ledger.payments.status import PaymentStatus
from ledger.registry import FileSchemaRegistry
from ledger.topics import TopicRole, topic_name
from streams.app import APP_NAME
from streams.providers import derive_idempotency_key
from streams.provision import provision_topics
from streams.publisher import Published, kafka_publisher
from tests.integration.test_envelope_kafka import auditor
from tests.support.processes import ServiceProcess
from tests.support.recording_proxy import Exchange, RecordingProxy, recording_proxy
from tests.support.streams import succeeded_intent, worker_env

pytestmark = pytest.mark.integration

PAYMENTS = 1_000
AMOUNT = Money(1050, "USD")
MERCHANT = "mer_crash"
WEBHOOK_SECRET = "whsec_streams_crash_test"
# What an automatic-capture CREATE and then its succeeded delivery record.
KINDS = [PaymentEventKind.CREATED, PaymentEventKind.CAPTURED]
EXPECTED_EVENTS = PAYMENTS * len(KINDS)
# The kill comes once at least this share of the domain events is committed,
# and the worker has made this many Stripe calls since the last commit seen:
# work done and not committed, which the restarted worker must do again.
KILL_AFTER = EXPECTED_EVENTS // 5
KILL_IN_FLIGHT_CALLS = 5
# stripe-mock answers at once; this much latency per call spreads the run
# over several of the worker's transaction commits, so that the kill finds
# some of the work committed and some in flight.
PROVIDER_LATENCY_S = 0.01
# Generous: the machine is shared, and a restarted member may wait out the
# killed one's session in the consumer group.
RUN_TIMEOUT_S = 600.0
POLL_MS = 100
CREATE_PATH = "/v1/payment_intents"
ACCOUNTS = PaymentAccounts(MERCHANT, Provider.STRIPE)


@pytest.fixture
async def settings(tmp_path: Path, provider_mocks: Settings) -> Settings:
    settings = provider_mocks.model_copy(
        update={"topic_prefix": f"s{uuid.uuid4().hex[:10]}.", "state_dir": tmp_path}
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    return settings


@pytest.fixture
def proxy(provider_mocks: Settings) -> Iterator[RecordingProxy]:
    with recording_proxy(provider_mocks.stripe_base_url(), delay_s=PROVIDER_LATENCY_S) as proxy:
        yield proxy


def worker_process(settings: Settings, proxy: RecordingProxy) -> ServiceProcess:
    """``python -m streams.worker`` run by the test, so that it can be killed outright."""
    # The worker reaches Stripe through the proxy: stripe_mock_port is
    # what its Stripe base URL is built from when no URL is set.
    routed = settings.model_copy(update={"stripe_mock_port": proxy.port})
    env = worker_env(routed)
    env.pop("PAYLEDGER_STRIPE_API_BASE_URL", None)
    return ServiceProcess(
        "worker",
        ["-m", "streams.worker"],
        env,
        settings.state_dir,
        shutdown_timeout_s=limits.STREAMS_SHUTDOWN_TIMEOUT_S,
    )


@pytest.fixture
def worker(settings: Settings, proxy: RecordingProxy) -> Iterator[ServiceProcess]:
    worker = worker_process(settings, proxy)
    try:
        yield worker
    finally:
        worker.cleanup()


def create(payment_id: str) -> Envelope:
    return new_envelope(
        event_type="payment.command.create",
        aggregate_id=payment_id,
        sequence=1,
        producer="payledger/test",
        payload=PaymentCommand(
            command=CommandKind.CREATE,
            merchant_id=MERCHANT,
            idempotency_key=f"idem-{payment_id}",
            provider=Provider.STRIPE,
            amount=AMOUNT,
            capture_method=CaptureMethod.AUTOMATIC,
            description="streams crash",
        ),
    )


class Progress:
    """The worker's progress: committed payment events per payment, and its input offsets."""

    def __init__(
        self, settings: Settings, inputs: dict[TopicPartition, int], proxy: RecordingProxy
    ) -> None:
        self.consumer = AIOKafkaConsumer(
            topic_name(settings, TopicRole.PAYMENT_EVENTS),
            bootstrap_servers=settings.bootstrap_servers(),
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
        self.group = f"{settings.topic_prefix}{APP_NAME}"
        self.inputs = inputs  # the end offset of every input partition
        self.per_payment: Counter[str] = Counter()
        self.proxy = proxy
        self.calls_at_last_commit = 0  # Stripe calls made when the last events came in

    async def __aenter__(self) -> Progress:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    @property
    def total(self) -> int:
        return sum(self.per_payment.values())

    @property
    def calls_since_last_commit(self) -> int:
        return len(self.proxy.exchanges()) - self.calls_at_last_commit

    async def inputs_consumed(self) -> bool:
        """Whether the worker committed its offsets at the end of every input partition.

        Its events commit in the same transactions as those offsets: once this
        holds, everything the worker will ever emit for the backlog is committed.
        """
        committed = await self.admin.list_consumer_group_offsets(
            self.group, partitions=list(self.inputs)
        )
        return all(
            tp in committed and committed[tp].offset >= end for tp, end in self.inputs.items()
        )

    async def until(
        self, done: Callable[[], Awaitable[bool]], worker: ServiceProcess, what: str
    ) -> None:
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                while not await done():
                    if worker.current.poll() is not None:
                        pytest.fail(f"the worker exited while {what}:\n{worker.logs()}")
                    calls = len(self.proxy.exchanges())
                    batch = await self.consumer.getmany(timeout_ms=POLL_MS)
                    for messages in batch.values():
                        for message in messages:
                            self.per_payment[message.key.decode()] += 1
                    if batch:
                        self.calls_at_last_commit = calls
        except TimeoutError:
            pytest.fail(
                f"stalled while {what}: {self.total} of {EXPECTED_EVENTS} events committed\n"
                f"{worker.logs()}"
            )


async def read_to_end(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topic``, up to its last stable offset now."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers(),
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = sorted(consumer.assignment())
        assert partitions, f"no partitions for {topic}"
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(RUN_TIMEOUT_S):
            for tp in partitions:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=POLL_MS)
                    records.extend(batch.get(tp, []))
    finally:
        await consumer.stop()
    return records


async def delete_topics(settings: Settings) -> None:
    """The test's topics, the worker's own included: some sixty partitions a run."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def end_offsets(published: list[Published]) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = {}
    for item in published:
        tp = TopicPartition(item.topic, item.partition)
        ends[tp] = max(ends.get(tp, 0), item.offset + 1)
    return ends


def operation_of(exchange: Exchange) -> tuple[str, str]:
    """(payment id, operation) of one Stripe call the worker made."""
    assert (exchange.method, exchange.path) == ("POST", CREATE_PATH), (
        f"an automatic-capture payment needs only its create call: {exchange}"
    )
    form = parse_qs(exchange.body.decode())
    (payment_id,) = form["metadata[payledger_payment_id]"]
    return payment_id, "create"


@pytest.mark.timeout(3 * RUN_TIMEOUT_S)
async def test_sigkill_mid_backlog_then_restart_loses_and_doubles_nothing(
    settings: Settings, proxy: RecordingProxy, worker: ServiceProcess
) -> None:
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    payment_ids = [f"pay_crash_{n:05d}_{uuid.uuid4().hex[:8]}" for n in range(PAYMENTS)]

    # The backlog: every delivery and every CREATE, before any worker runs.
    async with kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/test"
    ) as publisher:
        deliveries = await publisher.publish_many(
            topic_name(settings, TopicRole.PROVIDER_EVENTS),
            [
                succeeded_intent(payment_id, f"pi_crash_{n:05d}", secret=WEBHOOK_SECRET)
                for n, payment_id in enumerate(payment_ids)
            ],
        )
        creates = await publisher.publish_many(
            topic_name(settings, TopicRole.COMMANDS), [create(p) for p in payment_ids]
        )
    create_keys = {
        item.envelope.aggregate_id: derive_idempotency_key(item.envelope.event_id)
        for item in creates
    }

    async with Progress(settings, end_offsets(deliveries + creates), proxy) as progress:

        async def kill_time() -> bool:
            if await progress.inputs_consumed():
                pytest.fail("the worker went through the whole backlog before the kill")
            return (
                progress.total >= KILL_AFTER
                and progress.calls_since_last_commit >= KILL_IN_FLIGHT_CALLS
            )

        async def all_done() -> bool:
            complete = all(progress.per_payment[p] >= len(KINDS) for p in payment_ids)
            return complete or await progress.inputs_consumed()

        worker.start()
        await progress.until(kill_time, worker, "running up to the kill")
        worker.kill()
        seen_at_kill = progress.total
        calls_at_kill = len(proxy.exchanges())
        in_flight_at_kill = progress.calls_since_last_commit
        worker.start()
        await progress.until(all_done, worker, "finishing after the restart")
    code = worker.terminate()
    assert code in (0, -signal.SIGTERM), worker.logs()
    # The kill came mid-run: some events were committed, not all.
    assert 0 < seen_at_kill < EXPECTED_EVENTS, (seen_at_kill, calls_at_kill)

    # Every record verifies for an auditor that trusts the root key alone.
    verifier = await auditor(settings, store, registry)
    records = await read_to_end(settings, topic_name(settings, TopicRole.PAYMENT_EVENTS))
    opened = [verifier.open(record.value) for record in records]
    for record, event in zip(records, opened, strict=True):
        assert record.key == event.aggregate_id.encode()

    # Nothing twice: no event id, no (payment, sequence).
    ids = Counter(e.event_id for e in opened)
    twice = [
        (r.partition, r.offset, e.aggregate_id, e.sequence, e.event_type, e.event_id)
        for r, e in zip(records, opened, strict=True)
        if ids[e.event_id] > 1
    ]
    assert twice == [], (
        f"event ids recorded more than once (partition, offset, payment, sequence, type, id): "
        f"{twice[:20]}\nworker logs in {settings.state_dir}"
    )
    twice_seq = [
        k for k, n in Counter((e.aggregate_id, e.sequence) for e in opened).items() if n > 1
    ]
    assert twice_seq == [], f"{len(twice_seq)} sequence numbers used twice: {twice_seq[:20]}"

    # Every payment complete: created, then captured, sequences 1..n, succeeded with 10.50.
    by_payment: dict[str, list[Envelope]] = defaultdict(list)
    for event in opened:
        by_payment[event.aggregate_id].append(event)
    assert set(by_payment) <= set(payment_ids)
    timelines = {
        p: [
            (e.sequence, getattr(e.payload, "kind", None))
            for e in sorted(by_payment[p], key=lambda e: e.sequence)
        ]
        for p in payment_ids
    }
    expected_timeline = list(enumerate(KINDS, start=1))
    wrong = {p: t for p, t in timelines.items() if t != expected_timeline}
    assert wrong == {}, (
        f"{len(wrong)} of {PAYMENTS} payments did not end as {expected_timeline}: "
        f"{dict(list(wrong.items())[:20])}\nworker logs in {settings.state_dir}"
    )
    for payment_id in payment_ids:
        last = max(by_payment[payment_id], key=lambda e: e.sequence).payload
        assert isinstance(last, PaymentEvent)
        assert last.status_after is PaymentStatus.SUCCEEDED, (payment_id, last.status_after)
        assert last.captured_minor == AMOUNT.amount_minor, (payment_id, last.captured_minor)
    assert len(opened) == EXPECTED_EVENTS

    # Postings: balanced in every event, exactly one capture per payment over the run.
    totals: Counter[tuple[str, PostingSide, str]] = Counter()
    for event in opened:
        payload = event.payload
        assert isinstance(payload, PaymentEvent)
        assert unbalanced_currencies(payload.postings) == [], event.event_id
        for posting in payload.postings:
            totals[posting.account, posting.side, posting.currency] += posting.amount_minor
    expected = PAYMENTS * AMOUNT.amount_minor
    assert totals == {
        (ACCOUNTS.clearing, PostingSide.DEBIT, AMOUNT.currency): expected,
        (ACCOUNTS.payable, PostingSide.CREDIT, AMOUNT.currency): expected,
    }

    # Stripe saw one idempotency key per (payment, operation): the derived one.
    # A failed try (an upstream outage answered 502 by the proxy) counts: it
    # must carry the same key as the try that succeeded.
    calls = proxy.exchanges()
    keys: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    succeeded: set[tuple[str, str]] = set()
    for call in calls:
        keys[operation_of(call)].add(call.idempotency_key)
        if call.status == 200:
            succeeded.add(operation_of(call))
    assert set(keys) == {(p, "create") for p in payment_ids}
    assert succeeded == set(keys), proxy.errors()[:10]
    for (payment_id, _), seen in keys.items():
        assert seen == {create_keys[payment_id]}, (payment_id, seen)
    distinct = {c.idempotency_key for c in calls}
    assert None not in distinct
    assert len(distinct) == PAYMENTS
    repeats = sum(c.status == 200 for c in calls) - len(distinct)

    # Nothing rejected, no audit fact about these payments.
    rejected = await read_to_end(settings, topic_name(settings, TopicRole.REJECTED))
    letters = [verifier.open(r.value) for r in rejected]
    assert letters == [], [(e.aggregate_id, e.event_type, e.payload) for e in letters[:10]]
    facts = [
        verifier.open(r.value).payload
        for r in await read_to_end(settings, topic_name(settings, TopicRole.AUDIT_FACTS))
    ]
    assert [f for f in facts if getattr(f, "subject", None) in create_keys] == []

    # Only once everything held: a failure leaves its topics for the post-mortem.
    await delete_topics(settings)
    print(
        f"killed at {seen_at_kill}/{EXPECTED_EVENTS} committed events after "
        f"{calls_at_kill} Stripe calls ({in_flight_at_kill} since the last commit seen); "
        f"{len(calls)} calls in all, {repeats} repeated with the same key "
        f"({sum(c.status != 200 for c in calls)} failed tries)"
    )
