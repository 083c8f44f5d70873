"""Stream worker throughput and latency, beside the Faust framework floor, in one run.

In one run, against the same Kafka, topics and processing guarantee (exactly_once):

1. payledger: the real worker (``python -m streams.worker``) draining a backlog
   published in advance, counted as domain events committed on payment-events
   (read back with ``isolation_level=read_committed``):
     a. N CREATE commands alone (each one calls stripe-mock);
     b. a mixed backlog: N ``payment_intent.succeeded`` Stripe deliveries
        (normalized by ingress/webhooks/stripe.py) for the payments of (a),
        plus N CREATE commands for N new payments; both agents run at once;
   and, between (a) and (b), end-to-end latency on a separate paced sample:
   CREATE published -> its first domain event committed (p50, p99).
2. framework floor: a minimal Faust app (exactly_once, same options, one agent
   per input topic, concurrency 1) that reads the same two input topics and
   writes every record's bytes and headers unchanged to an output topic, on the
   transaction of the source partition; it drains everything the run
   published, then gets the same paced latency sample.
3. where the time goes: stripe-mock's CREATE latency, measured directly from
   this process, and its share of the commands agent's time.

Throughput is taken from the records' own timestamps (set by the producer when
the agent sends, i.e. processing time), over the records of one backlog:
(count - 1) / (last - first). Latency is taken from when the read_committed
consumer in this process receives the record, so it includes the transaction
commit interval (``streams_commit_interval_s``, Faust's ``broker_commit_interval``),
the same for both apps.

The stack (Kafka) and stripe-mock are started when not running and stopped
again at the end if this run started them. Every run uses its own topic prefix.

Usage: python bench/streams.py [--payments 2000] [--latency-samples 100] [--pace 20]
Figures only: this script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

if __name__ == "__main__":
    # Run as a script, this directory comes first on sys.path and this file
    # would shadow the ``streams`` package: put the repository first instead.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, os.fspath(ROOT))

from bench.common import BenchError, bench_stack, child_env, say

TARGET_EVENTS_PER_S = 5_000
TARGET_FLOOR_RATIO = 0.5
WEBHOOK_SECRET = "whsec_bench_streams"
FLOOR_APP = "bench-floor"
FLOOR_OUT = "bench-floor-out"
WAIT_TIMEOUT_S = 120.0
PUBLISH_BATCH = 500
STALL_S = 6.0


# --- the floor: a minimal Faust app -------------------------------------------------------------


def floor_app() -> Any:
    """Same broker, guarantee and serializers as streams.app; copies records unchanged."""
    from collections.abc import Mapping

    import faust

    from ledger.config import load_settings
    from ledger.topics import TopicRole, topic_name

    settings = load_settings()
    app = faust.App(
        f"{settings.topic_prefix}{FLOOR_APP}",
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers().split(",")],
        processing_guarantee="exactly_once",
        datadir=str(settings.state_dir / "streams"),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.streams_commit_interval_s,
        web_enabled=False,
    )
    out = f"{settings.topic_prefix}{FLOOR_OUT}"

    def source(role: TopicRole) -> Any:
        return app.topic(
            topic_name(settings, role),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
        )

    async def copy(message: Any) -> None:
        headers = list(
            message.headers.items()
            if isinstance(message.headers, Mapping)
            else message.headers or []
        )
        group = app.assignor.group_for_topic(message.topic)
        transactional_id = f"{app.conf.id}-{group}-{message.partition}"
        await app.producer.send(
            out, message.key, message.value, None, None, headers, transactional_id=transactional_id
        )

    @app.agent(source(TopicRole.COMMANDS), name="floor-commands", concurrency=1)
    async def floor_commands(stream: Any) -> None:
        async for event in stream.events():
            await copy(event.message)

    @app.agent(source(TopicRole.PROVIDER_EVENTS), name="floor-provider-events", concurrency=1)
    async def floor_provider_events(stream: Any) -> None:
        async for event in stream.events():
            await copy(event.message)

    return app


def run_floor_worker() -> None:
    import faust

    faust.Worker(floor_app(), loglevel="INFO", quiet=True).execute_from_commandline()


# --- processes ----------------------------------------------------------------------------------


class Child:
    """A worker subprocess with its log; stopped with SIGTERM like the tests do."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        say(f"{self.name}: starting")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.tail(30)}")

    def stop(self) -> None:
        from ledger import limits

        if self.process is None:
            return
        if self.process.poll() is None:
            say(f"{self.name}: stopping (SIGTERM, pid {self.process.pid})")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=limits.STREAMS_SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"{self.name}: did not stop on SIGTERM, killing it")
                self.process.kill()
                self.process.wait()
        self.process = None
        self._log.close()

    def tail(self, lines: int) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Group:
    """``count`` workers of one app (one consumer group): Faust splits the partitions."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, count: int):
        self.children = [
            Child(name if count == 1 else f"{name} {i}", argv, env, logs / f"{name}-{i}.log")
            for i in range(1, count + 1)
        ]

    def start(self) -> None:
        for child in self.children:
            child.start()

    def check(self) -> None:
        for child in self.children:
            child.check()

    def stop(self) -> None:
        for child in self.children:
            child.stop()

    def tail(self, lines: int) -> str:
        return "\n".join(child.tail(lines) for child in self.children)


# --- records in -----------------------------------------------------------------------------------


def create_command(payment_id: str) -> Any:
    from ledger.envelope import (
        CaptureMethod,
        CommandKind,
        Money,
        PaymentCommand,
        Provider,
        new_envelope,
    )

    return new_envelope(
        event_type="payment.command.create",
        aggregate_id=payment_id,
        sequence=1,
        producer="payledger/bench",
        payload=PaymentCommand(
            command=CommandKind.CREATE,
            merchant_id="mer_bench",
            idempotency_key=f"idem-{payment_id}",
            provider=Provider.STRIPE,
            amount=Money(1050, "USD"),
            capture_method=CaptureMethod.AUTOMATIC,
            description="bench streams",
        ),
    )


def succeeded_event(payment_id: str) -> Any:
    """A signed, verified and normalized Stripe delivery, as ingress records it."""
    from tests.support.streams import succeeded_intent

    return succeeded_intent(payment_id, f"pi_{payment_id}", secret=WEBHOOK_SECRET)


async def publish_all(publisher: Any, topic: str, envelopes: Sequence[Any]) -> None:
    for offset in range(0, len(envelopes), PUBLISH_BATCH):
        await publisher.publish_many(topic, list(envelopes[offset : offset + PUBLISH_BATCH]))


# --- records out ----------------------------------------------------------------------------------


@dataclass
class Seen:
    received: float  # wall clock, when this process's read_committed consumer got it
    timestamp_ms: int  # the record's timestamp: when the agent sent it
    key: str


@dataclass
class Collector:
    """Tails one topic, read_committed, from the beginning, for the whole run."""

    settings: Any
    topic: str
    records: list[Seen] = field(default_factory=list)
    first: dict[str, float] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers(),
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        await self.consumer.start()
        partitions = [TopicPartition(self.topic, p) for p in range(self.settings.topic_partitions)]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=50, max_records=5_000)
            now = time.time()
            for records in batches.values():
                for record in records:
                    key = (record.key or b"").decode("utf-8", "replace")
                    self.records.append(Seen(now, record.timestamp, key))
                    self.first.setdefault(key, now)

    def count(self, prefix: str) -> int:
        return sum(1 for r in self.records if r.key.startswith(prefix))

    async def wait_for(
        self, prefix: str, total: int, children: Iterable[Child | Group], what: str
    ) -> None:
        """Until ``total`` records under ``prefix``, or 99% of them and nothing new for
        STALL_S (a record the app rejected never shows up here: reported as missing)."""
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        last, moved = -1, time.monotonic()
        while (have := self.count(prefix)) < total:
            if have != last:
                last, moved = have, time.monotonic()
            elif have >= 0.99 * total and time.monotonic() - moved > STALL_S:
                self.missing[prefix] = total - have
                say(f"{what}: {total - have} record(s) never came; going on without them")
                return
            for child in children:
                child.check()
            if self._task is not None and self._task.done():
                self._task.result()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{what}: only {have:,} of {total:,} records after {WAIT_TIMEOUT_S:g} s"
                )
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.consumer.stop()


def rate(records: Sequence[Seen]) -> tuple[float, float]:
    """(records/s, span in s) from the records' own timestamps."""
    if len(records) < 2:
        return 0.0, 0.0
    stamps = [r.timestamp_ms for r in records]
    span = (max(stamps) - min(stamps)) / 1e3
    return ((len(records) - 1) / span if span > 0 else float("inf")), span


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def paced_latency(
    publisher: Any,
    topic: str,
    collector: Collector,
    ids: Sequence[str],
    pace_per_s: float,
    children: Iterable[Child | Group],
    what: str,
) -> list[float]:
    published: dict[str, float] = {}
    interval = 1.0 / pace_per_s
    started = time.monotonic()
    for index, payment_id in enumerate(ids):
        delay = started + index * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        envelope = create_command(payment_id)  # built before the clock starts
        published[payment_id] = time.time()
        await publisher.publish(topic, envelope)
    prefix = os.path.commonprefix(list(ids))  # noqa: RUF071 - a string prefix of payment ids, not paths
    await collector.wait_for(prefix, len(ids), children, what)
    return [1e3 * (collector.first[i] - published[i]) for i in ids if i in collector.first]


async def provider_call_ms(settings: Any, count: int) -> list[float]:
    """stripe-mock's CREATE, called the way the worker calls it, one at a time."""
    from ledger.envelope import CaptureMethod, Money, Provider
    from streams.providers import CreatePayment, provider_for

    provider = provider_for(settings, Provider.STRIPE)
    times = []
    try:
        for index in range(count + 10):
            request = CreatePayment(
                payment_id=f"pay_probe_{index}",
                amount=Money(1050, "USD"),
                capture_method=CaptureMethod.AUTOMATIC,
                description="bench streams probe",
            )
            started = time.perf_counter()
            await provider.create(request, idempotency_key=uuid.uuid4().hex)
            if index >= 10:  # warm-up: connection set-up
                times.append(1e3 * (time.perf_counter() - started))
    finally:
        await provider.aclose()
    return times


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Results:
    n: int
    create_only: tuple[float, float] = (0.0, 0.0)
    mixed: tuple[float, float] = (0.0, 0.0)
    mixed_provider: tuple[float, float] = (0.0, 0.0)
    mixed_create: tuple[float, float] = (0.0, 0.0)
    latency_ms: list[float] = field(default_factory=list)
    floor: tuple[float, float] = (0.0, 0.0)
    floor_count: int = 0
    floor_latency_ms: list[float] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)


async def run(settings: Any, args: argparse.Namespace, run_id: str, logs: Path) -> Results:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from ledger.codec import EnvelopeCodec
    from ledger.keystore import ActiveSigner, KeyStore
    from ledger.registry import FileSchemaRegistry
    from ledger.topics import TopicRole, topic_name
    from streams.publisher import kafka_publisher

    n, samples = args.payments, args.latency_samples
    commands = topic_name(settings, TopicRole.COMMANDS)
    provider_events = topic_name(settings, TopicRole.PROVIDER_EVENTS)
    floor_out = f"{settings.topic_prefix}{FLOOR_OUT}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(floor_out, settings.topic_partitions, settings.topic_replication_factor)]
        )
    finally:
        await admin.close()

    env = child_env(settings)
    worker = Group("worker", [sys.executable, "-m", "streams.worker"], env, logs, args.workers)
    floor = Child(
        "floor", [sys.executable, "-m", "bench.streams", "--floor-worker"], env, logs / "floor.log"
    )
    results = Results(n)
    ids_a = [f"pay_{run_id}_a{i:06d}" for i in range(n)]
    ids_b = [f"pay_{run_id}_b{i:06d}" for i in range(n)]
    ids_l = [f"pay_{run_id}_l{i:06d}" for i in range(samples)]
    ids_f = [f"pay_{run_id}_f{i:06d}" for i in range(samples)]

    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    publisher = kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/bench"
    )
    events = Collector(settings, topic_name(settings, TopicRole.PAYMENT_EVENTS))
    copies = Collector(settings, floor_out)
    await publisher.start()
    await events.start()
    await copies.start()
    try:
        say("stripe-mock: timing CREATE calls from this process")
        results.call_ms = await provider_call_ms(settings, args.probe_calls)

        # (a) a backlog of CREATE commands only.
        say(f"publishing {n:,} CREATE commands (backlog a)")
        await publish_all(publisher, commands, [create_command(i) for i in ids_a])
        worker.start()
        await events.wait_for(f"pay_{run_id}_a", n, [worker], "worker, backlog a")
        results.create_only = rate(
            [r for r in events.records if r.key.startswith(f"pay_{run_id}_a")]
        )
        say(f"backlog a drained: {results.create_only[0]:,.0f} events/s")

        # Latency: paced CREATEs into the idle worker.
        say(f"latency sample: {samples} CREATEs at {args.pace:g}/s")
        results.latency_ms = await paced_latency(
            publisher, commands, events, ids_l, args.pace, [worker], "worker, latency sample"
        )
        worker.stop()

        # (b) a mixed backlog, published while no worker runs.
        say(f"publishing {n:,} provider events + {n:,} CREATE commands (backlog b)")
        already = len(events.records)
        half = PUBLISH_BATCH
        for offset in range(0, n, half):
            await publish_all(
                publisher,
                provider_events,
                [succeeded_event(i) for i in ids_a[offset : offset + half]],
            )
            await publish_all(
                publisher, commands, [create_command(i) for i in ids_b[offset : offset + half]]
            )
        worker.start()
        await events.wait_for(f"pay_{run_id}_a", 2 * n, [worker], "worker, backlog b (provider)")
        await events.wait_for(f"pay_{run_id}_b", n, [worker], "worker, backlog b (commands)")
        run_b = events.records[already:]
        results.mixed = rate(run_b)
        results.mixed_provider = rate([r for r in run_b if r.key.startswith(f"pay_{run_id}_a")])
        results.mixed_create = rate([r for r in run_b if r.key.startswith(f"pay_{run_id}_b")])
        results.missing = dict(events.missing)
        say(f"backlog b drained: {results.mixed[0]:,.0f} events/s")
        worker.stop()

        # The floor: everything published so far, then the same paced sample.
        total_in = 3 * n + samples
        floor.start()
        await copies.wait_for(f"pay_{run_id}_", total_in, [floor], "floor, backlog")
        results.floor = rate(copies.records)
        results.floor_count = len(copies.records)
        say(f"floor drained {results.floor_count:,} records: {results.floor[0]:,.0f}/s")
        results.floor_latency_ms = await paced_latency(
            publisher, commands, copies, ids_f, args.pace, [floor], "floor, latency sample"
        )
    finally:
        worker.stop()
        floor.stop()
        for closing in (events.stop(), copies.stop(), publisher.stop()):
            try:
                await closing
            except Exception as error:
                say(f"while stopping: {error}")
        registry.close()
        store.close()
        if not args.keep_logs:
            await delete_topics(settings)
    return results


async def delete_topics(settings: Any) -> None:
    """Every topic of this run (its prefix), the worker's changelog included."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if ours:
            await admin.delete_topics(ours)
            say(f"deleted this run's {len(ours)} topics")
    finally:
        await admin.close()


# --- report ---------------------------------------------------------------------------------------


def line(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<52} {value:>14}  {note}".rstrip())


def report(r: Results, args: argparse.Namespace) -> None:
    n = r.n
    print(
        "\nStream worker (exactly_once Faust, real Kafka, stripe-mock), backlogs published in "
        "advance; events/s = domain events committed on payment-events, from record timestamps"
    )
    if args.workers > 1:
        print(f"  payledger app on {args.workers} worker processes; the floor on one")
    line(f"(a) {n:,} CREATE commands only", f"{r.create_only[0]:,.0f} events/s",
         f"{n:,} events in {r.create_only[1]:.1f} s")  # fmt: skip
    line(f"(b) mixed: {n:,} CREATE + {n:,} payment_intent.succeeded",
         f"{r.mixed[0]:,.0f} events/s", f"{2 * n:,} events in {r.mixed[1]:.1f} s")  # fmt: skip
    line("    of which provider events (own agent, concurrent)",
         f"{r.mixed_provider[0]:,.0f} events/s", f"{n:,} in {r.mixed_provider[1]:.1f} s")  # fmt: skip
    line("    of which CREATE commands (own agent, concurrent)",
         f"{r.mixed_create[0]:,.0f} events/s", f"{n:,} in {r.mixed_create[1]:.1f} s")  # fmt: skip
    if r.missing:
        line("records that never produced a domain event", f"{sum(r.missing.values()):,}",
             "(rejected or dead-lettered: see the rejected topic)")  # fmt: skip
    line("framework floor: Faust pass-through, same topics",
         f"{r.floor[0]:,.0f} records/s",
         f"{r.floor_count:,} records in {r.floor[1]:.1f} s")  # fmt: skip
    ratio = r.mixed[0] / r.floor[0] if r.floor[0] else 0.0
    line("events/s, mixed backlog", f"{r.mixed[0]:,.0f} /s",
         f"target >= {TARGET_EVENTS_PER_S:,}: "
         f"{'met' if r.mixed[0] >= TARGET_EVENTS_PER_S else 'MISSED'}")  # fmt: skip
    line("ratio mixed / floor", f"{ratio:.2f}x",
         f"target >= {TARGET_FLOOR_RATIO}x: {'met' if ratio >= TARGET_FLOOR_RATIO else 'MISSED'}")  # fmt: skip
    pratio = r.mixed_provider[0] / r.floor[0] if r.floor[0] else 0.0
    line("ratio provider events only / floor", f"{pratio:.2f}x")

    print(
        f"\nEnd-to-end latency, paced sample ({args.latency_samples} CREATEs at {args.pace:g}/s "
        f"into an idle app): published -> first record committed and read (read_committed)"
    )
    for name, values in (("payledger worker: CREATE -> first domain event", r.latency_ms),
                         ("framework floor: record -> its copy", r.floor_latency_ms)):  # fmt: skip
        line(name, f"p50 {percentile(values, 50):,.0f} ms",
             f"p99 {percentile(values, 99):,.0f} ms, max {max(values):,.0f} ms")  # fmt: skip

    call = statistics.mean(r.call_ms) if r.call_ms else 0.0
    print("\nWhere the time goes")
    line(f"stripe-mock CREATE call from this process ({len(r.call_ms)} calls)",
         f"mean {call:.1f} ms",
         f"p50 {percentile(r.call_ms, 50):.1f} ms, p99 {percentile(r.call_ms, 99):.1f} ms")  # fmt: skip
    if r.create_only[0]:
        per_create = 1e3 / r.create_only[0]
        line("commands agent: wall time per CREATE, backlog a", f"{per_create:.1f} ms",
             f"CREATE-call share ~{min(1.0, call / per_create):.0%} "
             f"(one call at a time: concurrency=1)")  # fmt: skip
        line("ceiling of the commands agent from the call alone", f"{1e3 / call:,.0f} /s"
             if call else "-")  # fmt: skip
    if r.mixed_provider[0]:
        line("provider-events agent: wall time per event, backlog b",
             f"{1e3 / r.mixed_provider[0]:.2f} ms", "no provider call; verify, decide, sign, send")  # fmt: skip
    if r.floor[0]:
        line("floor: wall time per record", f"{1e3 / r.floor[0]:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=2_000, help="N payments per backlog")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--pace", type=float, default=20.0, help="latency sample, commands/s")
    parser.add_argument("--probe-calls", type=int, default=200)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of the payledger app (the floor: 1); with more than one, Faust's"
        " exactly-once recovery currently crashes on the first rebalance (see the README)",
    )
    parser.add_argument("--keep-stack", action="store_true")
    parser.add_argument(
        "--keep-logs", type=Path, help="keep the worker logs and this run's state in this directory"
    )
    parser.add_argument("--floor-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_worker:
        run_floor_worker()
        return 0

    import logging

    from ledger.infra.mocks import StripeMockPart
    from ledger.infra.part import wait_until_ready
    from ledger.infra.ports import check_ports

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    overall = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    with bench_stack(
        run_id,
        keep_stack=args.keep_stack,
        scratch_prefix="bench-streams-",
        scratch=args.keep_logs,
    ) as (settings, bench_settings, scratch):
        # Only stripe-mock of the peers: every payment of this run is a Stripe payment.
        stripe = StripeMockPart(settings)
        stripe_was_running = stripe.running_pid() is not None
        try:
            if not stripe_was_running:
                check_ports(stripe.name, stripe.ports())
                stripe.prepare()
                stripe.start_daemon()
                # Until the child has exec'd, its command line is not stripe-mock's yet.
                settle = time.monotonic() + 5
                while stripe.running_pid() is None and time.monotonic() < settle:
                    time.sleep(0.05)
                wait_until_ready([stripe])
            try:
                results = asyncio.run(run(bench_settings, args, run_id, scratch))
            except BenchError:
                for log in scratch.glob("*.log"):
                    print(f"--- {log.name} (tail)", file=sys.stderr)
                    text = log.read_text(errors="replace").splitlines()
                    errors = [x for x in text if "ERROR" in x or "CRITICAL" in x or "Error" in x]
                    print("\n".join([*errors[:15], "...", *text[-10:]]), file=sys.stderr)
                raise
            report(results, args)
            print(
                f"\n(bench run {run_id}, topics {bench_settings.topic_prefix}*, "
                f"{settings.topic_partitions} partitions, {os.cpu_count()} cores, "
                f"{time.monotonic() - overall:.0f} s)"
            )
        finally:
            if not stripe_was_running and (pid := stripe.running_pid()) is not None:
                say("stripe-mock: stopping it (this run started it)")
                stripe.stop(pid)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench/streams.py: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
