"""Per-customer data keys in Postgres, wrapped by the master key (``ledger.sealing``).

Table ``customer_data_keys`` (``sql/020_customer_keys.sql``): one row per
customer ref, holding the data key wrapped by the master key, or, once the
customer is erased, NULL and the time of erasure. The row is never deleted.

Decisions
---------
*Get-or-create under concurrency.* Two requests for a new customer race
without locks: each makes a key and ``INSERT ... ON CONFLICT DO NOTHING``,
then both read the row back; the loser discards its own key and uses the
winner's. Every process and every request gets the same key.

*A forgotten customer is never sealed again.* ``data_key`` refuses an
erased customer ref with ``CustomerErased`` (``seal`` turns it into a 410
problem). The ref is derived from the merchant's reference, so a fresh key
under it would silently re-link new personal data to the erased history and
undo the erasure. A returning customer needs a new merchant reference.

*Cache.* Unwrapping costs a master-key operation (an HSM round trip with the
PKCS#11 backend), so a process keeps unwrapped keys for at most
``CUSTOMER_KEY_CACHE_TTL_S`` and ``CUSTOMER_KEY_CACHE_ENTRIES_MAX`` entries.
Effect on erasure: ``destroy`` evicts the key from *this* process at once,
but another running ingress may keep using its cached copy, to seal and to
open, for up to the TTL after the erasure committed. Data sealed in that
window is under the destroyed key, so it is unreadable too once the cache
expires. Python cannot wipe ``bytes``: an evicted key stays in freed memory
until it is overwritten.

*What erasure removes.* ``destroy`` sets ``wrapped_key`` to NULL. Old row
versions, the WAL and database backups still hold the *wrapped* key until
vacuum and backup expiry; without the master key it is useless, which is
why the master key never leaves its file or token.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ingress.problems import Problem
from ledger import limits, sealing
from ledger.envelope import SealedData
from ledger.errors import KeyError_, LedgerError
from ledger.sealing import CustomerErased, MasterKey, SealingError, check_customer_ref

__all__ = [
    "CustomerErased",
    "CustomerKeys",
    "ErasedKey",
    "MerchantMismatch",
    "UnknownCustomer",
    "destroy_data_key",
    "erased_problem",
]

_SELECT = (
    "SELECT merchant_id, data_key_id, wrapped_key, master_key_id"
    " FROM customer_data_keys WHERE customer_ref = %s"
)
_INSERT = (
    "INSERT INTO customer_data_keys"
    " (customer_ref, merchant_id, data_key_id, wrapped_key, master_key_id)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (customer_ref) DO NOTHING"
)


class UnknownCustomer(LedgerError):
    """No data key was ever made for this customer ref."""

    def __init__(self, customer_ref: str) -> None:
        self.customer_ref = customer_ref
        super().__init__(f"no data key for customer {customer_ref}")


class MerchantMismatch(LedgerError):
    """A customer ref used with a merchant other than the one it was made for.

    Refs are derived from the merchant id, so this is a bug or an attempt to
    reach another merchant's customer, never a legitimate request.
    """


@dataclass(frozen=True, slots=True)
class ErasedKey:
    """What an erasure destroyed: enough for the audit fact, nothing secret."""

    customer_ref: str
    merchant_id: str
    data_key_id: str
    master_key_id: str


@dataclass(frozen=True, slots=True)
class _Row:
    merchant_id: str
    data_key_id: str
    wrapped_key: bytes | None
    master_key_id: str


@dataclass(frozen=True, slots=True)
class _Cached:
    merchant_id: str
    data_key_id: str
    key: bytes
    expires_at: float


class _KeyCache:
    """Least recently used first out, and nothing older than the TTL is returned."""

    def __init__(self, entries_max: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._entries_max = entries_max
        self._ttl_s = ttl_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, customer_ref: str) -> _Cached | None:
        entry = self._entries.get(customer_ref)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            del self._entries[customer_ref]
            return None
        self._entries.move_to_end(customer_ref)
        return entry

    def put(self, customer_ref: str, merchant_id: str, data_key_id: str, key: bytes) -> None:
        if self._entries_max <= 0 or self._ttl_s <= 0:
            return
        self._entries[customer_ref] = _Cached(
            merchant_id, data_key_id, key, self._clock() + self._ttl_s
        )
        self._entries.move_to_end(customer_ref)
        while len(self._entries) > self._entries_max:
            self._entries.popitem(last=False)

    def discard(self, customer_ref: str) -> None:
        self._entries.pop(customer_ref, None)


def erased_problem() -> Problem:
    """The HTTP answer to new personal data for an erased customer."""
    return Problem(
        410,
        "customer-erased",
        "The customer was erased",
        "this customer's personal data was erased; payledger does not take new personal "
        "data under the same customer reference: use a new reference",
    )


async def _fetch(connection: AsyncConnection[Any], customer_ref: str) -> _Row | None:
    cursor = await connection.execute(_SELECT, (customer_ref,))
    row = await cursor.fetchone()
    if row is None:
        return None
    merchant_id, data_key_id, wrapped_key, master_key_id = row
    return _Row(
        merchant_id, data_key_id, None if wrapped_key is None else bytes(wrapped_key), master_key_id
    )


class CustomerKeys:
    """Get-or-create, open with, and destroy customer data keys. One per process."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        master: MasterKey,
        *,
        cache_entries_max: int = limits.CUSTOMER_KEY_CACHE_ENTRIES_MAX,
        cache_ttl_s: float = limits.CUSTOMER_KEY_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._master = master
        self._cache = _KeyCache(cache_entries_max, cache_ttl_s, clock)
        # Bumped by every destroy: a lookup that started before it must not
        # put the key it read back into the cache after the eviction.
        self._epoch = 0

    @property
    def master_key_id(self) -> str:
        return self._master.key_id

    async def data_key(self, merchant_id: str, customer_ref: str) -> tuple[str, bytes]:
        """The customer's ``(data_key_id, key)``, made on first use; ``CustomerErased`` after."""
        check_customer_ref(customer_ref)
        cached = self._cache.get(customer_ref)
        if cached is not None:
            _check_owner(cached.merchant_id, merchant_id, customer_ref)
            return cached.data_key_id, cached.key
        epoch = self._epoch
        async with self._pool.connection() as connection:
            row = await _fetch(connection, customer_ref)
            made: tuple[str, bytes] | None = None
            if row is None:
                made = sealing.new_data_key()
                wrapped = await asyncio.to_thread(self._master.wrap, made[1], customer_ref)
                await connection.execute(
                    _INSERT, (customer_ref, merchant_id, made[0], wrapped, self._master.key_id)
                )
                # Our row, or the one a concurrent request committed first.
                row = await _fetch(connection, customer_ref)
                if row is None:
                    raise KeyError_(f"data key of {customer_ref} vanished while being created")
        _check_owner(row.merchant_id, merchant_id, customer_ref)
        if row.wrapped_key is None:
            raise CustomerErased(customer_ref)
        if made is not None and made[0] == row.data_key_id:
            key = made[1]
        else:
            key = await self._unwrap(customer_ref, row)
        if epoch == self._epoch:
            self._cache.put(customer_ref, row.merchant_id, row.data_key_id, key)
        return row.data_key_id, key

    async def seal(self, merchant_id: str, customer_ref: str, plaintext: bytes) -> SealedData:
        """Seal ``plaintext`` for the customer; an erased customer is a 410 problem."""
        try:
            data_key_id, key = await self.data_key(merchant_id, customer_ref)
        except CustomerErased as error:
            raise erased_problem() from error
        return sealing.seal(key, plaintext, customer_ref, data_key_id=data_key_id)

    async def open(self, customer_ref: str, sealed: SealedData) -> bytes | None:
        """The plaintext of ``sealed``; None once the customer's key was destroyed.

        Raises ``SealingError`` when ``sealed`` is not this customer's (or was
        tampered with) and ``UnknownCustomer`` for a ref that never had a key.
        """
        check_customer_ref(customer_ref)
        if sealed.customer_ref != customer_ref:
            raise SealingError("sealed data belongs to another customer")
        cached = self._cache.get(customer_ref)
        if cached is not None:
            data_key_id, key = cached.data_key_id, cached.key
        else:
            epoch = self._epoch
            async with self._pool.connection() as connection:
                row = await _fetch(connection, customer_ref)
            if row is None:
                raise UnknownCustomer(customer_ref)
            if row.wrapped_key is None:
                return None
            data_key_id, key = row.data_key_id, await self._unwrap(customer_ref, row)
            if epoch == self._epoch:
                self._cache.put(customer_ref, row.merchant_id, data_key_id, key)
        if sealed.data_key_id != data_key_id:
            raise SealingError("sealed data was not sealed under this customer's data key")
        return sealing.open_sealed(key, sealed)

    async def destroy(
        self,
        customer_ref: str,
        *,
        before_commit: Callable[[ErasedKey], Awaitable[None]] | None = None,
    ) -> bool:
        """Destroy the customer's key: True now, False if it already was (idempotent).

        See ``destroy_data_key`` for ``before_commit``.
        """
        self._epoch += 1
        self._cache.discard(customer_ref)
        try:
            erased = await destroy_data_key(self._pool, customer_ref, before_commit=before_commit)
        finally:
            self._epoch += 1
            self._cache.discard(customer_ref)
        return erased is not None

    async def _unwrap(self, customer_ref: str, row: _Row) -> bytes:
        assert row.wrapped_key is not None
        if row.master_key_id != self._master.key_id:
            raise KeyError_(
                f"data key of {customer_ref} is wrapped by master key {row.master_key_id}, "
                f"but this process has {self._master.key_id}"
            )
        return await asyncio.to_thread(self._master.unwrap, row.wrapped_key, customer_ref)


def _check_owner(owner: str, merchant_id: str, customer_ref: str) -> None:
    if owner != merchant_id:
        raise MerchantMismatch(f"customer {customer_ref} does not belong to merchant {merchant_id}")


async def destroy_data_key(
    pool: AsyncConnectionPool[Any],
    customer_ref: str,
    *,
    before_commit: Callable[[ErasedKey], Awaitable[None]] | None = None,
) -> ErasedKey | None:
    """Erase the customer's data key; None when it already was erased.

    Needs no master key: erasure must work even where the master key is not
    available. ``before_commit`` runs inside the transaction, with the row
    locked and the key already NULL in it: if it raises, nothing is
    destroyed. ``forget_customer`` publishes the erasure's audit fact there,
    so the key is gone exactly when the fact is on the log.
    Raises ``UnknownCustomer`` for a ref that never had a key.
    """
    check_customer_ref(customer_ref)
    async with pool.connection() as connection, connection.transaction():
        cursor = await connection.execute(
            "SELECT merchant_id, data_key_id, master_key_id, wrapped_key IS NULL"
            " FROM customer_data_keys WHERE customer_ref = %s FOR UPDATE",
            (customer_ref,),
        )
        row = await cursor.fetchone()
        if row is None:
            raise UnknownCustomer(customer_ref)
        merchant_id, data_key_id, master_key_id, already = row
        if already:
            return None
        await connection.execute(
            "UPDATE customer_data_keys SET wrapped_key = NULL, destroyed_at = now()"
            " WHERE customer_ref = %s",
            (customer_ref,),
        )
        erased = ErasedKey(customer_ref, merchant_id, data_key_id, master_key_id)
        if before_commit is not None:
            await before_commit(erased)
    return erased
