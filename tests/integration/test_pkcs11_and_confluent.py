"""Keys in SoftHSM2 over PKCS#11, and our topics read with Confluent's own deserializer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import pytest
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from ingress.registry_api import create_registry_app
from ledger.codec import EnvelopeCodec
from ledger.config import Settings, SignerBackend
from ledger.keystore import ActiveSigner, KeyStore
from ledger.pkcs11 import Pkcs11Signer, Pkcs11Token
from ledger.registry import FileSchemaRegistry
from ledger.topics import TopicRole, topic_name
from streams.provision import provision_topics
from streams.publisher import Publisher, kafka_publisher
from tests.integration.test_envelope_kafka import auditor, read_all
from tests.support import events
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.integration


@pytest.fixture
async def settings(tmp_path: Path) -> Settings:
    base = Settings()
    # The token lives in the session stack's state dir; keys and registry in a
    # fresh copy of it per test so tests never see each other's keys.
    settings = base.model_copy(
        update={
            "topic_prefix": f"h{uuid.uuid4().hex[:10]}.",
            "signer_backend": SignerBackend.PKCS11,
        }
    )
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    return settings


def open_token(settings: Settings) -> Pkcs11Token:
    import os

    os.environ["SOFTHSM2_CONF"] = os.fspath(settings.softhsm_conf)
    return Pkcs11Token(
        settings.pkcs11_module,
        settings.pkcs11_token_label,
        settings.pkcs11_user_pin.get_secret_value(),
    )


def test_a_token_signature_verifies_with_plain_libsodium(settings: Settings) -> None:
    with open_token(settings) as token:
        signer = token.generate_ed25519(f"test-{uuid.uuid4().hex}")
        assert isinstance(signer, Pkcs11Signer)
        message = b"payledger pkcs11 " + uuid.uuid4().bytes
        signature = signer.sign(message)
        assert len(signature) == 64
        assert nacl.bindings.crypto_sign_open(signature + message, signer.public_key) == message
        with pytest.raises(nacl.exceptions.BadSignatureError):
            nacl.bindings.crypto_sign_open(signature + message + b"!", signer.public_key)
        # The private key cannot be read out of the token.
        from pkcs11 import Attribute

        assert signer.private_key_object[Attribute.SENSITIVE] is True
        assert signer.private_key_object[Attribute.EXTRACTABLE] is False


@pytest.fixture
async def hsm_publisher(settings: Settings) -> AsyncIterator[tuple[Publisher, KeyStore]]:
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    publisher = kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/test"
    )
    await publisher.start()
    yield publisher, store
    await publisher.stop()
    store.close()


async def test_an_hsm_signed_event_verifies_end_to_end(settings, hsm_publisher) -> None:
    publisher, store = hsm_publisher
    topic = topic_name(settings, TopicRole.COMMANDS)
    published = await publisher.publish(topic, events.create_command(now=datetime.now(UTC)))
    registry = FileSchemaRegistry(settings.registry_dir)
    verifier = await auditor(settings, store, registry)
    (record,) = await read_all(settings, topic, 1)
    assert verifier.open(record.value) == published.envelope
    # And with nothing but libsodium and the endorsed public key:
    decoded = verifier.codec.decode(record.value)
    public_key = verifier.keyring.endorsement(decoded.envelope.signing_key_id).public_key
    nacl.bindings.crypto_sign_open(decoded.envelope.signature + decoded.signed_message, public_key)


async def test_confluent_avro_deserializer_reads_our_topic(settings, hsm_publisher) -> None:
    publisher, _ = hsm_publisher
    topic = topic_name(settings, TopicRole.COMMANDS)
    original = events.create_command(now=datetime.now(UTC))
    published = await publisher.publish(topic, original)
    registry = FileSchemaRegistry(settings.registry_dir)
    with serve_in_thread(create_registry_app(registry)) as url:
        client = SchemaRegistryClient({"url": url})
        deserializer = AvroDeserializer(client)
        consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers(),
                "group.id": f"confluent-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        try:
            message = None
            for _ in range(60):
                message = consumer.poll(1.0)
                if message is not None and message.error() is None:
                    break
            assert message is not None and message.error() is None
            value = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
        finally:
            consumer.close()
            client.close()
    envelope = published.envelope
    assert str(value["event_id"]) == envelope.event_id
    assert value["event_type"] == envelope.event_type
    assert value["aggregate_id"] == envelope.aggregate_id
    assert value["sequence"] == envelope.sequence
    assert value["signature"] == envelope.signature
    assert value["payload"]["amount"] == {"amount_minor": 1050, "currency": "EUR"}
    assert value["payload"]["metadata"] == {"order": "1234", "channel": "web"}
