"""Envelope throughput, each figure beside its peer or limit measured in the same run.

1. encode+sign per second   vs raw fastavro encode + raw libsodium sign of the same data
2. decode+verify per second vs raw fastavro decode + raw libsodium verify of the same data
3. produce records/s through our path (sign, encode, aiokafka, idempotent, acks=all)
   vs a raw aiokafka producer of the same bytes (the Python client's limit)
   vs Kafka's own org.apache.kafka.tools.ProducerPerformance, same record size, acks=all

Usage: python bench/envelope.py [--count N] [--produce-count N] [--skip-kafka]
It starts the local stack (``payledger infra up``) when Kafka is not running.
Figures only: this script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import fastavro
import nacl.bindings

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))

from ledger.codec import SIGNING_CONTEXT, EnvelopeCodec
from ledger.config import Settings, load_settings
from ledger.envelope import Envelope
from ledger.keystore import ActiveSigner, KeyStore
from ledger.registry import FileSchemaRegistry
from ledger.verify import Verifier
from tests.support import events

REPEATS = 3


def best_rate(count: int, run: Callable[[], None]) -> float:
    """Operations per second: the best of a few runs, so noise from a shared machine hurts least."""
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - started))
    return max(rates)


def combined(*rates: float) -> float:
    """The rate of doing each of several steps once per item, one after another."""
    return 1.0 / sum(1.0 / rate for rate in rates)


def sample_envelopes(count: int) -> list[Envelope]:
    return [
        events.create_command(payment_id=f"pay_{index:08d}", amount_minor=100 + index)
        for index in range(count)
    ]


def line(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"  {name:<44} {value:>12,.0f} {unit:<10} {note}")


def bench_codec(settings: Settings, count: int) -> tuple[list[bytes], float]:
    store = KeyStore(settings)
    signer = store.active_key().signer
    registry = FileSchemaRegistry(settings.registry_dir)
    codec = EnvelopeCodec(registry)
    verifier = Verifier(codec, store.keyring())
    topic = "bench.envelope"
    envelopes = sample_envelopes(count)
    records = [envelope.signed_by(signer.key_id, b"").to_avro() for envelope in envelopes]
    parsed = codec.schema.parsed
    codec.schema_id(topic)

    wires: list[bytes] = []

    def ours_encode() -> None:
        wires.clear()
        for envelope in envelopes:
            wires.append(codec.encode(envelope, signer, topic)[1])

    bodies: list[bytes] = []

    def raw_fastavro_encode() -> None:
        bodies.clear()
        for record in records:
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, parsed, record)
            bodies.append(buffer.getvalue())

    secret = nacl.bindings.crypto_sign_seed_keypair(os.urandom(32))[1]

    def raw_sodium_sign() -> None:
        for body in bodies:
            nacl.bindings.crypto_sign(SIGNING_CONTEXT + body, secret)

    encode_ours = best_rate(count, ours_encode)
    encode_avro = best_rate(count, raw_fastavro_encode)
    sign_sodium = best_rate(count, raw_sodium_sign)
    encode_limit = combined(encode_avro, sign_sodium)

    def ours_decode() -> None:
        for wire in wires:
            verifier.open(wire)

    public = signer.public_key
    signed_messages = [SIGNING_CONTEXT + body for body in bodies]
    signatures = [nacl.bindings.crypto_sign(m, secret)[:64] for m in signed_messages]
    public = nacl.bindings.crypto_sign_seed_keypair(secret[:32])[0]

    def raw_fastavro_decode() -> None:
        for body in bodies:
            fastavro.schemaless_reader(io.BytesIO(body), parsed, None, return_record_name=True)

    def raw_sodium_verify() -> None:
        for message, signature in zip(signed_messages, signatures, strict=True):
            nacl.bindings.crypto_sign_open(signature + message, public)

    decode_ours = best_rate(count, ours_decode)
    decode_avro = best_rate(count, raw_fastavro_decode)
    verify_sodium = best_rate(count, raw_sodium_verify)
    decode_limit = combined(decode_avro, verify_sodium)

    size = statistics.mean(len(wire) for wire in wires)
    print(
        f"\nCodec, one core, {count:,} envelopes of {size:.0f} bytes on average (best of {REPEATS})"
    )
    line("raw fastavro encode", encode_avro, "/s")
    line("raw libsodium Ed25519 sign", sign_sodium, "/s")
    line("limit: fastavro encode + libsodium sign", encode_limit, "/s")
    line(
        "payledger encode+sign",
        encode_ours,
        "/s",
        f"ratio {encode_ours / encode_limit:.2f}x (target >= 0.5x)",
    )
    line("raw fastavro decode", decode_avro, "/s")
    line("raw libsodium Ed25519 verify", verify_sodium, "/s")
    line("limit: fastavro decode + libsodium verify", decode_limit, "/s")
    line("payledger decode+verify", decode_ours, "/s", f"ratio {decode_ours / decode_limit:.2f}x")
    registry.close()
    store.close()
    return wires, size


async def _produce_ours(settings: Settings, topic: str, count: int, batch: int) -> float:
    from streams.publisher import kafka_publisher

    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    publisher = kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/payledger/bench"
    )
    envelopes = sample_envelopes(count)
    await publisher.start()
    try:
        started = time.perf_counter()
        for offset in range(0, count, batch):
            await publisher.publish_many(topic, envelopes[offset : offset + batch])
        elapsed = time.perf_counter() - started
    finally:
        await publisher.stop()
        registry.close()
        store.close()
    return count / elapsed


async def _produce_raw(
    settings: Settings, topic: str, wires: list[bytes], count: int, batch: int
) -> float:
    """The same records, already encoded and signed, with the same headers: the client's limit."""
    from ledger.cloudevents import TraceContext, kafka_headers

    headers = kafka_headers(
        events.create_command(),
        source="/payledger/bench",
        trace=TraceContext.new(),
        dataschema=f"{settings.registry_url()}/schemas/ids/1",
    )
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=1_048_576,
    )
    await producer.start()
    try:
        started = time.perf_counter()
        for offset in range(0, count, batch):
            futures = [
                await producer.send(
                    topic, wires[index % len(wires)], key=b"pay_%08d" % index, headers=headers
                )
                for index in range(offset, min(offset + batch, count))
            ]
            await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return count / elapsed


def _producer_performance(settings: Settings, topic: str, count: int, size: int) -> float:
    from ledger.infra.kafka import ensure_jars

    libs = ensure_jars(settings)
    with tempfile.NamedTemporaryFile("w", suffix=".properties", delete=False) as config:
        config.write(
            f"bootstrap.servers={settings.bootstrap_servers()}\nacks=all\n"
            "enable.idempotence=true\nlinger.ms=5\nbatch.size=1048576\n"
        )
    try:
        output = subprocess.run(
            [
                "java",
                "-Xmx512m",
                "-cp",
                f"{libs}/*",
                "org.apache.kafka.tools.ProducerPerformance",
                "--topic",
                topic,
                "--num-records",
                str(count),
                "--record-size",
                str(size),
                "--throughput",
                "-1",
                "--producer.config",
                config.name,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
    finally:
        os.unlink(config.name)
    totals = [m for m in re.finditer(r"([\d.]+) records/sec", output)]
    if not totals:
        raise RuntimeError(f"ProducerPerformance printed no total:\n{output}")
    return float(totals[-1].group(1))


def bench_produce(settings: Settings, wires: list[bytes], size: float, count: int) -> None:
    from ledger.infra.stack import Stack
    from streams.provision import provision_topics

    Stack(settings).up()
    asyncio.run(provision_topics(settings))
    topic = f"{settings.topic_prefix}commands"
    batch = 1_000
    # Warm both clients and the broker's log segment first.
    asyncio.run(_produce_raw(settings, topic, wires, min(count, 5_000), batch))
    ours = asyncio.run(_produce_ours(settings, topic, count, batch))
    raw = asyncio.run(_produce_raw(settings, topic, wires, count, batch))
    java = _producer_performance(settings, topic, count, round(size))
    print(
        f"\nProduce to Kafka on this machine, {count:,} records of {size:.0f} bytes, acks=all, idempotent"
    )
    line("Kafka ProducerPerformance (Java client)", java, "records/s")
    line(
        "raw aiokafka, same signed bytes and headers",
        raw,
        "records/s",
        f"ratio {raw / java:.2f}x of Java",
    )
    line(
        "payledger sign+encode+produce (aiokafka)",
        ours,
        "records/s",
        f"ratio {ours / java:.2f}x of Java (target >= 0.3x), {ours / raw:.2f}x of raw aiokafka",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--produce-count", type=int, default=100_000)
    parser.add_argument("--skip-kafka", action="store_true")
    arguments = parser.parse_args()
    settings = load_settings()
    with tempfile.TemporaryDirectory() as scratch:
        # Keys and registry for the codec figures live in a scratch directory
        # so the benchmark never touches the stack's own keys.
        codec_settings = settings.model_copy(update={"state_dir": Path(scratch)})
        wires, size = bench_codec(codec_settings, arguments.count)
    if not arguments.skip_kafka:
        bench_produce(settings, wires, size, arguments.produce_count)
    print(f"\n(bench run {uuid.uuid4().hex[:8]}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
