"""The Faust app: the payments table and the command and provider-event agents.

``create_app(settings)`` builds an exactly-once app whose two agents (one
record at a time each) hand every record to ``streams.agents.Processor``.
Records the processor emits go through the app's own producer, on the
transaction of the source partition, so they commit atomically with the
consumed offset and the table's changelog.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust

from ledger.codec import EnvelopeCodec
from ledger.config import Settings
from ledger.keystore import ActiveSigner, KeyStore
from ledger.registry import open_registry
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams.agents import Emit, Headers, Processor, Record

APP_NAME = "ledger-streams"
TABLE_NAME = "payments"


def create_app(settings: Settings, *, processor: Processor | None = None) -> faust.App:
    """The worker's app; ``app.payledger_processor`` is the processor it uses."""
    if processor is None:
        store = KeyStore(settings)
        codec = EnvelopeCodec(open_registry(settings))
        processor = Processor(
            settings, codec, Verifier(codec, store.keyring()), ActiveSigner(store)
        )
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
        web_enabled=False,
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

    def emitter(message: Any) -> Emit:
        """Send on the transaction of the source record's partition."""

        async def emit(topic: str, key: bytes, value: bytes, headers: Headers) -> object:
            if app.in_transaction:
                group = app.assignor.group_for_topic(message.topic)
                transactional_id = f"{app.conf.id}-{group}-{message.partition}"
                return await app.producer.send(
                    topic, key, value, None, None, headers, transactional_id=transactional_id
                )
            return await app.producer.send(topic, key, value, None, None, headers)

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

    @app.agent(source(TopicRole.COMMANDS), name="commands", concurrency=1)
    async def commands(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await processor.command(record(event), table, emitter(event.message))

    @app.agent(source(TopicRole.PROVIDER_EVENTS), name="provider-events", concurrency=1)
    async def provider_events(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await processor.provider_event(record(event), table, emitter(event.message))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_providers(app: faust.App, **_: Any) -> None:
        await processor.aclose()

    return app
