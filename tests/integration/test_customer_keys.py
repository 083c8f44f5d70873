"""Customer data keys in the real Postgres, the master key in the real SoftHSM2 token,
and erasure end to end through the real Kafka broker."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pkcs11
import psycopg
import pytest
from aiokafka.errors import KafkaTimeoutError
from click.testing import CliRunner
from pkcs11 import Attribute
from psycopg_pool import AsyncConnectionPool

from ingress import db
from ingress.customer_keys import (
    CustomerErased,
    CustomerKeys,
    MerchantMismatch,
    UnknownCustomer,
    destroy_data_key,
)
from ingress.gdpr import ERASURE_EVENT_TYPE, erase_customer, forget_customer
from ingress.problems import Problem
from ledger.cli import main
from ledger.codec import EnvelopeCodec
from ledger.config import Settings, SignerBackend
from ledger.envelope import (
    AuditFact,
    CommandKind,
    Money,
    PaymentCommand,
    Provider,
    new_envelope,
)
from ledger.errors import InfrastructureError, KeyError_
from ledger.keystore import ActiveSigner, KeyStore
from ledger.publisher import Publisher
from ledger.registry import FileSchemaRegistry
from ledger.sealing import (
    FileMasterKey,
    Pkcs11MasterKey,
    SealingError,
    customer_reference,
    new_data_key,
    open_master_key,
    seal,
)
from ledger.signing import FileSigner
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier
from streams.provision import provision_topics
from streams.publisher import kafka_publisher
from tests.integration.test_envelope_kafka import read_all

pytestmark = pytest.mark.integration

MIGRATION = "020_customer_keys.sql"
PLAINTEXT = b'{"email":"alice@example.com","name":"Alice Example"}'


@pytest.fixture(scope="session")
async def migrated(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    # Only this suite's migration: the shared test database must not pick up
    # another migration file while someone is still writing it.
    directory = tmp_path_factory.mktemp("migrations")
    shutil.copy(db.SQL_DIR / MIGRATION, directory / MIGRATION)
    dsn = Settings().dsn()
    await db.migrate(dsn, directory)
    return dsn


@pytest.fixture
async def pool(migrated: str) -> AsyncIterator[AsyncConnectionPool]:
    pool: AsyncConnectionPool = AsyncConnectionPool(migrated, min_size=1, max_size=8, open=False)
    await pool.open(wait=True)
    yield pool
    await pool.close()


@pytest.fixture
def master(tmp_path: Path) -> FileMasterKey:
    return FileMasterKey.load_or_create(tmp_path / "master.key")


@pytest.fixture
def merchant_id() -> str:
    return f"m_{uuid.uuid4().hex[:12]}"


def new_customer(merchant_id: str) -> str:
    return customer_reference(merchant_id, f"customer-{uuid.uuid4().hex}")


async def row(pool: AsyncConnectionPool, customer_ref: str) -> tuple | None:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT merchant_id, data_key_id, wrapped_key, master_key_id, destroyed_at"
            " FROM customer_data_keys WHERE customer_ref = %s",
            (customer_ref,),
        )
        return await cursor.fetchone()


# Get-or-create --------------------------------------------------------------------


async def test_get_or_create_is_idempotent_and_stores_only_the_wrapped_key(
    pool, master, merchant_id
) -> None:
    customer = new_customer(merchant_id)
    keys = CustomerKeys(pool, master)
    data_key_id, key = await keys.data_key(merchant_id, customer)
    assert await keys.data_key(merchant_id, customer) == (data_key_id, key)
    # A second process (an empty cache) reads the same key back from Postgres.
    assert await CustomerKeys(pool, master).data_key(merchant_id, customer) == (data_key_id, key)
    stored = await row(pool, customer)
    assert stored is not None
    owner, stored_id, wrapped, master_key_id, destroyed_at = stored
    assert (owner, stored_id, master_key_id, destroyed_at) == (
        merchant_id,
        data_key_id,
        master.key_id,
        None,
    )
    assert key not in bytes(wrapped)
    assert master.unwrap(bytes(wrapped), customer) == key


async def test_concurrent_first_use_yields_one_key(pool, master, merchant_id) -> None:
    customer = new_customer(merchant_id)
    shared = CustomerKeys(pool, master)
    # One process with 20 requests at once, and 20 processes (own caches) at once.
    results = await asyncio.gather(
        *(shared.data_key(merchant_id, customer) for _ in range(20)),
        *(CustomerKeys(pool, master).data_key(merchant_id, customer) for _ in range(20)),
    )
    assert len(set(results)) == 1
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM customer_data_keys WHERE customer_ref = %s", (customer,)
        )
        assert await cursor.fetchone() == (1,)


async def test_different_customers_get_different_keys(pool, master, merchant_id) -> None:
    keys = CustomerKeys(pool, master)
    first = await keys.data_key(merchant_id, new_customer(merchant_id))
    second = await keys.data_key(merchant_id, new_customer(merchant_id))
    assert first[0] != second[0] and first[1] != second[1]


async def test_a_customer_ref_is_bound_to_its_merchant(pool, master, merchant_id) -> None:
    customer = new_customer(merchant_id)
    keys = CustomerKeys(pool, master)
    await keys.data_key(merchant_id, customer)
    with pytest.raises(MerchantMismatch):
        await keys.data_key("m_someone_else", customer)  # cached
    with pytest.raises(MerchantMismatch):
        await CustomerKeys(pool, master).data_key("m_someone_else", customer)  # from Postgres


# Open and destroy -----------------------------------------------------------------


async def test_destroy_makes_sealed_data_unreadable_and_refuses_new_keys(
    pool, master, merchant_id
) -> None:
    customer = new_customer(merchant_id)
    keys = CustomerKeys(pool, master)
    sealed = await keys.seal(merchant_id, customer, PLAINTEXT)
    assert await keys.open(customer, sealed) == PLAINTEXT
    assert await CustomerKeys(pool, master).open(customer, sealed) == PLAINTEXT

    assert await keys.destroy(customer) is True
    assert await keys.destroy(customer) is False  # idempotent

    assert await keys.open(customer, sealed) is None
    assert await CustomerKeys(pool, master).open(customer, sealed) is None
    with pytest.raises(CustomerErased):
        await keys.data_key(merchant_id, customer)
    with pytest.raises(CustomerErased):
        await CustomerKeys(pool, master).data_key(merchant_id, customer)
    with pytest.raises(Problem) as refused:
        await keys.seal(merchant_id, customer, PLAINTEXT)
    assert (refused.value.status, refused.value.slug) == (410, "customer-erased")
    stored = await row(pool, customer)
    assert stored is not None
    _, data_key_id, wrapped, master_key_id, destroyed_at = stored
    assert wrapped is None and destroyed_at is not None
    assert (data_key_id, master_key_id) == (sealed.data_key_id, master.key_id)


async def test_the_table_keeps_wrapped_key_and_destroyed_at_consistent(
    pool, master, merchant_id
) -> None:
    customer = new_customer(merchant_id)
    await CustomerKeys(pool, master).data_key(merchant_id, customer)
    async with pool.connection() as connection:
        with pytest.raises(psycopg.errors.CheckViolation):
            await connection.execute(
                "UPDATE customer_data_keys SET wrapped_key = NULL WHERE customer_ref = %s",
                (customer,),
            )
        await connection.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            await connection.execute(
                "UPDATE customer_data_keys SET destroyed_at = now() WHERE customer_ref = %s",
                (customer,),
            )


async def test_open_refuses_data_of_another_customer_or_key(pool, master, merchant_id) -> None:
    alice, bob = new_customer(merchant_id), new_customer(merchant_id)
    keys = CustomerKeys(pool, master)
    alices = await keys.seal(merchant_id, alice, PLAINTEXT)
    await keys.data_key(merchant_id, bob)
    with pytest.raises(SealingError):
        await keys.open(bob, alices)
    # Sealed under a key id that is not the customer's: refused before decrypting.
    stray_id, stray_key = new_data_key()
    with pytest.raises(SealingError):
        await keys.open(alice, seal(stray_key, PLAINTEXT, alice, data_key_id=stray_id))


async def test_a_wrapped_key_copied_to_another_customer_does_not_unwrap(
    pool, master, merchant_id
) -> None:
    alice, bob = new_customer(merchant_id), new_customer(merchant_id)
    await CustomerKeys(pool, master).data_key(merchant_id, alice)
    await CustomerKeys(pool, master).data_key(merchant_id, bob)
    async with pool.connection() as connection:
        await connection.execute(
            "UPDATE customer_data_keys SET wrapped_key ="
            " (SELECT wrapped_key FROM customer_data_keys WHERE customer_ref = %s)"
            " WHERE customer_ref = %s",
            (alice, bob),
        )
    with pytest.raises(SealingError):
        await CustomerKeys(pool, master).data_key(merchant_id, bob)


async def test_a_key_wrapped_by_another_master_key_is_reported(
    pool, master, merchant_id, tmp_path
) -> None:
    customer = new_customer(merchant_id)
    await CustomerKeys(pool, master).data_key(merchant_id, customer)
    other = FileMasterKey.load_or_create(tmp_path / "other.key")
    with pytest.raises(KeyError_, match=master.key_id):
        await CustomerKeys(pool, other).data_key(merchant_id, customer)


async def test_unknown_customers(pool, master, merchant_id) -> None:
    customer = new_customer(merchant_id)
    keys = CustomerKeys(pool, master)
    key_id, key = new_data_key()
    with pytest.raises(UnknownCustomer):
        await keys.open(customer, seal(key, PLAINTEXT, customer, data_key_id=key_id))
    with pytest.raises(UnknownCustomer):
        await keys.destroy(customer)
    assert await row(pool, customer) is None


async def test_a_failing_before_commit_destroys_nothing(pool, master, merchant_id) -> None:
    customer = new_customer(merchant_id)
    keys = CustomerKeys(pool, master)
    sealed = await keys.seal(merchant_id, customer, PLAINTEXT)

    async def broker_down(_: object) -> None:
        raise InfrastructureError("no ack")

    with pytest.raises(InfrastructureError):
        await keys.destroy(customer, before_commit=broker_down)
    stored = await row(pool, customer)
    assert stored is not None and stored[2] is not None and stored[4] is None
    assert await CustomerKeys(pool, master).open(customer, sealed) == PLAINTEXT
    # ... and the same call with a callback that succeeds does destroy it.
    seen: list[object] = []

    async def record(erased: object) -> None:
        seen.append(erased)

    erased = await destroy_data_key(pool, customer, before_commit=record)
    assert erased is not None and seen == [erased]
    assert (erased.customer_ref, erased.merchant_id, erased.data_key_id) == (
        customer,
        merchant_id,
        sealed.data_key_id,
    )
    assert await destroy_data_key(pool, customer, before_commit=record) is None
    assert len(seen) == 1


async def test_another_process_keeps_a_cached_key_no_longer_than_the_ttl(
    pool, master, merchant_id
) -> None:
    customer = new_customer(merchant_id)
    now = [0.0]
    running = CustomerKeys(pool, master, cache_ttl_s=60.0, clock=lambda: now[0])
    sealed = await running.seal(merchant_id, customer, PLAINTEXT)
    assert await CustomerKeys(pool, master).destroy(customer) is True
    # The documented window: the running process still has the key cached ...
    now[0] = 59.0
    assert await running.open(customer, sealed) == PLAINTEXT
    # ... and not a moment after the TTL.
    now[0] = 60.0
    assert await running.open(customer, sealed) is None
    with pytest.raises(CustomerErased):
        await running.data_key(merchant_id, customer)


async def test_the_cache_is_bounded(pool, master, merchant_id) -> None:
    keys = CustomerKeys(pool, master, cache_entries_max=2)
    customers = [new_customer(merchant_id) for _ in range(3)]
    for customer in customers:
        await keys.data_key(merchant_id, customer)
    assert len(keys._cache) == 2
    # The least recently used one was evicted: a destroy elsewhere shows at once.
    assert await CustomerKeys(pool, master).destroy(customers[0]) is True
    with pytest.raises(CustomerErased):
        await keys.data_key(merchant_id, customers[0])


# The master key in the SoftHSM2 token -----------------------------------------------


@pytest.fixture
def hsm_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    # The session stack's token; its login is per process, like in production.
    settings = Settings().model_copy(update={"signer_backend": SignerBackend.PKCS11})
    monkeypatch.setenv("SOFTHSM2_CONF", str(settings.softhsm_conf))
    return settings


@pytest.fixture
def hsm_master(hsm_settings: Settings) -> Iterator[Pkcs11MasterKey]:
    label = f"test-master-{uuid.uuid4().hex[:12]}"
    master = Pkcs11MasterKey.open(hsm_settings, label=label)
    yield master
    master.key_object.destroy()
    master.close()


def test_the_token_master_key_is_sensitive_and_never_extractable(hsm_master) -> None:
    key = hsm_master.key_object
    assert hsm_master.key_id.startswith("mk-pkcs11-")
    assert key[Attribute.SENSITIVE] is True
    assert key[Attribute.EXTRACTABLE] is False
    assert key[Attribute.NEVER_EXTRACTABLE] is True
    assert key[Attribute.ALWAYS_SENSITIVE] is True
    assert key[Attribute.LOCAL] is True  # generated inside the token
    assert key[Attribute.TOKEN] is True
    with pytest.raises(pkcs11.AttributeSensitive):
        key[Attribute.VALUE]


def test_the_token_master_key_wraps_and_unwraps_with_aes_gcm(hsm_master, hsm_settings) -> None:
    alice = customer_reference("mer_42", "alice")
    bob = customer_reference("mer_42", "bob")
    _, data_key = new_data_key()
    blob = hsm_master.wrap(data_key, alice)
    assert len(blob) == 1 + 12 + 32 + 16 and data_key not in blob
    assert hsm_master.wrap(data_key, alice) != blob  # a fresh IV every time
    assert hsm_master.unwrap(blob, alice) == data_key
    with pytest.raises(SealingError):
        hsm_master.unwrap(blob, bob)
    for index in (0, 1, 13, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(SealingError):
            hsm_master.unwrap(bytes(tampered), alice)


def test_the_token_master_key_persists_across_sessions(hsm_master, hsm_settings) -> None:
    customer = customer_reference("mer_42", "alice")
    _, data_key = new_data_key()
    blob = hsm_master.wrap(data_key, customer)
    label = hsm_master.key_object[Attribute.LABEL]
    with Pkcs11MasterKey.open(hsm_settings, label=label) as reopened:
        assert reopened.key_id == hsm_master.key_id
        assert reopened.unwrap(blob, customer) == data_key


def test_the_master_key_shares_the_login_of_the_signing_keys_session(hsm_settings) -> None:
    # PKCS#11 login is per process. The KeyStore's token session logs in
    # first (as in an ingress with both); the master key must use that login
    # and, when closed, must not log the signing keys' session out.
    store = KeyStore(hsm_settings)
    label = f"test-master-{uuid.uuid4().hex[:12]}"
    try:
        root = store.root()
        with Pkcs11MasterKey.open(hsm_settings, label=label) as master:
            customer = customer_reference("mer_42", "alice")
            _, data_key = new_data_key()
            assert master.unwrap(master.wrap(data_key, customer), customer) == data_key
            master.key_object.destroy()
        endorsement = root.endorse(
            FileSigner.generate(), not_before=datetime.now(UTC), lifetime=timedelta(hours=1)
        )
        assert len(endorsement.root_ed25519_signature) == 64
    finally:
        store.close()


async def test_customer_keys_with_the_token_master_key(pool, hsm_settings, merchant_id) -> None:
    master = open_master_key(hsm_settings)
    try:
        assert isinstance(master, Pkcs11MasterKey)
        assert master.key_object[Attribute.LABEL] == "payledger-master"
        customer = new_customer(merchant_id)
        keys = CustomerKeys(pool, master)
        sealed = await keys.seal(merchant_id, customer, PLAINTEXT)
        assert await CustomerKeys(pool, master).open(customer, sealed) == PLAINTEXT
        assert (await row(pool, customer))[3] == master.key_id
        assert await keys.destroy(customer) is True
        assert await CustomerKeys(pool, master).open(customer, sealed) is None
    finally:
        master.close()


# Erasure end to end -----------------------------------------------------------------


@pytest.fixture
async def kafka_settings(tmp_path: Path, migrated: str) -> Settings:
    settings = Settings(topic_prefix=f"g{uuid.uuid4().hex[:10]}.", state_dir=tmp_path)
    report = await provision_topics(settings)
    assert report.ok, report.mismatches
    return settings


async def test_forget_customer_end_to_end(kafka_settings: Settings, pool, merchant_id) -> None:
    settings = kafka_settings
    customer = new_customer(merchant_id)
    master = open_master_key(settings)
    keys = CustomerKeys(pool, master)
    sealed = await keys.seal(merchant_id, customer, PLAINTEXT)

    # A command carrying the sealed data, published and acknowledged.
    store = KeyStore(settings)
    registry = FileSchemaRegistry(settings.registry_dir)
    commands = topic_name(settings, TopicRole.COMMANDS)
    async with kafka_publisher(
        settings, EnvelopeCodec(registry), ActiveSigner(store), source="/test"
    ) as publisher:
        # Built once the publisher made the signing key: events are recorded
        # inside their key's validity window.
        command = new_envelope(
            event_type="payment.command.create",
            aggregate_id=f"pay_{uuid.uuid4().hex[:12]}",
            sequence=1,
            producer="payledger/test",
            payload=PaymentCommand(
                command=CommandKind.CREATE,
                merchant_id=merchant_id,
                idempotency_key="idem-gdpr",
                provider=Provider.STRIPE,
                amount=Money(1050, "EUR"),
                customer=sealed,
            ),
        )
        await publisher.publish(commands, command)

    assert await forget_customer(settings, customer, actor="dpo@merchant") is True
    assert await forget_customer(settings, customer, actor="dpo@merchant") is False

    verifier = Verifier(EnvelopeCodec(registry), store.keyring())
    (fact_record,) = await read_all(settings, topic_name(settings, TopicRole.AUDIT_FACTS), 1)
    erasure = verifier.open(fact_record.value)
    assert fact_record.key == customer.encode()
    assert erasure.event_type == ERASURE_EVENT_TYPE == "audit.customer.erased"
    assert erasure.aggregate_id == customer
    fact = erasure.payload
    assert isinstance(fact, AuditFact)
    assert (fact.fact_type, fact.actor, fact.subject) == (
        "customer.erased",
        "dpo@merchant",
        customer,
    )
    assert fact.reason
    assert fact.details == {
        "merchant_id": merchant_id,
        "data_key_id": sealed.data_key_id,
        "master_key_id": master.key_id,
    }

    # The event carrying the ciphertext still verifies; the ciphertext is gone for good.
    (command_record,) = await read_all(settings, commands, 1)
    stored = verifier.open(command_record.value)
    assert stored.payload.customer == sealed
    assert await CustomerKeys(pool, master).open(customer, stored.payload.customer) is None
    with pytest.raises(CustomerErased):
        await CustomerKeys(pool, master).data_key(merchant_id, customer)
    # The documented window: forget ran in another process, so the process
    # that sealed the data keeps its cached copy of the key up to the TTL.
    assert await keys.open(customer, sealed) == PLAINTEXT
    store.close()
    registry.close()
    master.close()


async def test_nothing_is_erased_while_kafka_is_down(
    kafka_settings: Settings, pool, merchant_id
) -> None:
    customer = new_customer(merchant_id)
    master = open_master_key(kafka_settings)
    sealed = await CustomerKeys(pool, master).seal(merchant_id, customer, PLAINTEXT)
    unreachable = kafka_settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    with pytest.raises(InfrastructureError, match="nothing was erased"):
        await erase_customer(unreachable, customer, actor="dpo")
    assert await CustomerKeys(pool, master).open(customer, sealed) == PLAINTEXT
    assert await forget_customer(kafka_settings, customer, actor="dpo") is True
    assert await CustomerKeys(pool, master).open(customer, sealed) is None


async def test_nothing_is_erased_when_the_fact_is_not_acknowledged(
    kafka_settings: Settings, pool, merchant_id, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kafka answers at start-up, then the erasure fact's ack never comes.
    customer = new_customer(merchant_id)
    master = open_master_key(kafka_settings)
    sealed = await CustomerKeys(pool, master).seal(merchant_id, customer, PLAINTEXT)

    async def no_ack(*args: object, **kwargs: object) -> None:
        raise KafkaTimeoutError()

    monkeypatch.setattr(Publisher, "publish", no_ack)
    with pytest.raises(InfrastructureError, match="not acknowledged"):
        await erase_customer(kafka_settings, customer, actor="dpo")
    assert await CustomerKeys(pool, master).open(customer, sealed) == PLAINTEXT


async def test_forgetting_an_unknown_customer_publishes_nothing(
    kafka_settings: Settings, merchant_id
) -> None:
    with pytest.raises(UnknownCustomer):
        await forget_customer(kafka_settings, new_customer(merchant_id), actor="dpo")
    records = await read_all(kafka_settings, topic_name(kafka_settings, TopicRole.AUDIT_FACTS), 0)
    assert records == []


def test_the_cli_forgets_a_customer(
    kafka_settings: Settings, migrated: str, merchant_id, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = kafka_settings
    customer = new_customer(merchant_id)

    async def make_key() -> None:
        async with AsyncConnectionPool(migrated, min_size=1, open=False) as pool:
            await CustomerKeys(pool, open_master_key(settings)).data_key(merchant_id, customer)

    asyncio.run(make_key())
    env = {
        "PAYLEDGER_STATE_DIR": str(settings.state_dir),
        "PAYLEDGER_TOPIC_PREFIX": settings.topic_prefix,
    }
    # Only this suite's migration (see ``migrated``); it is already applied.
    applied: list[str] = []

    async def no_migrations(dsn: str) -> list[str]:
        applied.append(dsn)
        return []

    monkeypatch.setattr(db, "migrate", no_migrations)
    runner = CliRunner()
    result = runner.invoke(main, ["gdpr", "forget", customer, "--actor", "dpo"], env=env)
    assert result.exit_code == 0, result.output
    assert f"erased {customer}" in result.output
    assert applied == [settings.dsn()]
    again = runner.invoke(main, ["gdpr", "forget", customer], env=env)
    assert again.exit_code == 0 and "already erased" in again.output
    unknown = runner.invoke(main, ["gdpr", "forget", new_customer(merchant_id)], env=env)
    assert unknown.exit_code == 1 and "no data key" in unknown.output
    bad = runner.invoke(main, ["gdpr", "forget", "alice@example.com"], env=env)
    assert bad.exit_code == 1 and "cus_" in bad.output
