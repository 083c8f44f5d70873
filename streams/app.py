"""The Faust app: the payments table and the command and provider-event agents.

``create_app(settings)`` builds an exactly-once app whose two agents (one
record at a time each) hand every record to ``streams.agents.Processor``.
Records the processor emits go through the app's own producer, on the
transaction of the source partition, so they commit atomically with the
consumed offset and the table's changelog; Faust's commits are held back
while a record is half sent (``CommitGate``). Event keys endorsed after the
worker started are learnt from the keys topic (``ledger.keyfeed``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import faust

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.keyfeed import KeysFollower
from ledger.keystore import ActiveSigner, KeyStore
from ledger.registry import open_registry
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams.agents import Emit, Headers, Processor, Record, Result, Table
from streams.keys import keys_follower
from streams.recovery import SeekFirstTableManager

APP_NAME = "ledger-streams"
TABLE_NAME = "payments"

# Processor.command or Processor.provider_event.
Handle = Callable[[Record, Table, Emit], Awaitable[Result]]


class CommitGate:
    """Transaction commits only between records, never in the middle of one.

    Faust commits its transactions on a timer (and every N messages), from
    tasks of its own, whenever the agents yield: between two sends of one
    record, or while a record waits on a provider. Such a commit carries the
    sends made so far but not the record's offset (acked only at its end),
    so a crash right after it replays the record and publishes its first
    outputs twice. Records enter the gate (any number at once, from both
    agents); a commit closes it to new records, waits until those inside
    have sent everything and been acked, commits, and opens it again.
    """

    def __init__(self) -> None:
        self._inside = 0
        self._empty = asyncio.Event()
        self._empty.set()
        self._open = asyncio.Event()
        self._open.set()

    @contextlib.asynccontextmanager
    async def record(self) -> AsyncIterator[None]:
        await self._open.wait()
        self._inside += 1
        self._empty.clear()
        try:
            yield
        finally:
            self._inside -= 1
            if self._inside == 0:
                self._empty.set()

    @contextlib.asynccontextmanager
    async def commit(self) -> AsyncIterator[None]:
        self._open.clear()
        try:
            await self._empty.wait()
            yield
        finally:
            self._open.set()

    def guard(self, transactions: Any) -> None:
        """Route ``transactions.commit`` (Faust's TransactionManager) through the gate, once."""
        if getattr(transactions, "_payledger_gated", False):
            return
        commit = transactions.commit

        async def commit_between_records(*args: Any, **kwargs: Any) -> Any:
            async with self.commit():
                return await commit(*args, **kwargs)

        transactions.commit = commit_between_records
        transactions._payledger_gated = True


class _SourceTable:
    """The payments table as one record's processing sees it.

    ``put`` writes the store and sends the changelog record at once, on the
    source partition's transaction: see ``create_app.process``.
    """

    def __init__(
        self,
        store: MutableMapping[bytes, bytes],
        send_changelog: Callable[[bytes, bytes], Awaitable[object]],
    ) -> None:
        self._store = store
        self._send_changelog = send_changelog

    def get(self, key: bytes) -> bytes | None:
        return self._store.get(key)

    async def put(self, key: bytes, value: bytes) -> None:
        self._store[key] = value
        await self._send_changelog(key, value)


def create_app(settings: Settings, *, processor: Processor | None = None) -> faust.App:
    """The worker's app; ``app.payledger_processor`` is the processor it uses."""
    keys: KeysFollower | None = None
    if processor is None:
        store = KeyStore(settings)
        codec = EnvelopeCodec(open_registry(settings))
        verifier = Verifier(codec, store.keyring())
        keys = keys_follower(settings, verifier)
        processor = Processor(settings, codec, verifier, ActiveSigner(store), keys=keys)
    app = faust.App(
        f"{settings.topic_prefix}{APP_NAME}",
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
        # No standby copies of the other workers' table partitions: Faust
        # crashes seeking a standby partition that has no offset yet, and a
        # worker taking a partition over rebuilds it from the changelog anyway.
        table_standby_replicas=0,
        web_enabled=False,
        # Faust's recovery resumes the source partitions before it seeks them:
        # records read in between were lost (streams/recovery.py).
        TableManager=SeekFirstTableManager,
    )
    app.payledger_processor = processor  # type: ignore[attr-defined]
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
    )

    def source(role: TopicRole) -> faust.TopicT:
        return app.topic(
            topic_name(settings, role),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
        )

    async def send(
        message: Any,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Headers | None,
        *,
        partition: int | None = None,
    ) -> object:
        """Send on the transaction of the source record's partition."""
        if app.in_transaction:
            group = app.assignor.group_for_topic(message.topic)
            transactional_id = f"{app.conf.id}-{group}-{message.partition}"
            return await app.producer.send(
                topic, key, value, partition, None, headers, transactional_id=transactional_id
            )
        return await app.producer.send(topic, key, value, partition, None, headers)

    def emitter(message: Any) -> Emit:
        async def emit(topic: str, key: bytes, value: bytes, headers: Headers) -> object:
            return await send(message, topic, key, value, headers)

        return emit

    def record(event: faust.EventT[Any]) -> Record:
        message = event.message
        return Record(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value or b"",
            headers=list(
                message.headers.items()
                if isinstance(message.headers, Mapping)
                else message.headers or []
            ),
        )

    gate = CommitGate()
    app.payledger_commit_gate = gate  # type: ignore[attr-defined]

    async def process(handle: Handle, stream: faust.StreamT[Any], event: faust.EventT[Any]) -> None:
        """One record: decide, emit and change the table, all before it is acked.

        Faust's own ``table[key] = value`` queues the changelog record in a
        buffer that its transaction commit does not flush, so a commit could
        carry a record's offset and events without the table change they
        made (lost if the worker then stops before the next commit). Here a
        change goes to the store directly and its changelog record is sent
        on the source partition's transaction, like the events, while the
        payment is locked and before the record is acked: whenever the
        record's offset commits, so does its change, in the order made.
        """
        message = event.message
        changelog = table.changelog_topic.get_topic_name()

        async def send_changelog(key: bytes, value: bytes) -> object:
            return await send(message, changelog, key, value, None, partition=message.partition)

        if app.in_transaction:
            gate.guard(app.consumer.transactions)
        async with gate.record():
            await handle(record(event), _SourceTable(table.data, send_changelog), emitter(message))
            # Acked inside the gate: the commit that follows carries the offset
            # together with everything the record sent.
            await stream.ack(event)

    @app.agent(source(TopicRole.COMMANDS), name="commands", concurrency=1)
    async def commands(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await process(processor.command, stream, event)

    @app.agent(source(TopicRole.PROVIDER_EVENTS), name="provider-events", concurrency=1)
    async def provider_events(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await process(processor.provider_event, stream, event)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_providers(app: faust.App, **_: Any) -> None:
        await processor.aclose()
        if keys is not None:
            await keys.stop()

    return app
