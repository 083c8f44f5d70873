"""Group commit for ``POST /v1/payments``: many create requests, one transaction.

Each create request is validated, authenticated and checked for card data on
its own, then handed to the process's ``CreateBatcher``. The batcher collects
the requests that arrive within ``CREATE_BATCH_WINDOW_S`` (or until
``CREATE_BATCH_REQUESTS_MAX`` are waiting) and processes them together, on one
pool connection in pipeline mode, in one transaction:

1. BEGIN + one INSERT claiming every Idempotency-Key (new or expired rows),
   in sorted order so two batches never wait on each other's keys in a cycle;
2. for the keys another request already holds, one SELECT of the stored
   responses: same body -> replay, different body -> 409 (answered at once);
   for the keys this batch owns, the customer data is sealed and the command
   built (a 410 for an erased customer fails that request only); then one
   INSERT of every ``ingress_payments`` row (a payment id that exists already,
   a key reused after its record expired, is a 409 for that request only),
   and one INSERT of the sealed customer data of those that carry it
   (``ingress_payment_customers``: the same bytes the command carries);
3. every command is handed to the producer (one that cannot even be signed
   or encoded fails its request only), then the batch waits for all the
   broker's acks within ``publish_timeout_s``; if any ack fails or the time is
   up, the whole transaction rolls back and every request still waiting gets
   503 with Retry-After, exactly as a single request would (a Postgres error
   likewise fails every request still waiting: their inputs are validated
   before, so only an outage of Postgres can make a statement fail);
4. one UPDATE storing every response (plus a DELETE of the key rows of the
   requests dropped in step 2) and COMMIT; only then does each request get
   its 202.

So the guarantees of the one-request-one-transaction path hold per request:
202 only after that request's command was acknowledged and its key committed;
a request with the same key as one in another batch in flight blocks on the
uncommitted row (the claim INSERT waits for the other transaction), then
replays. Two requests with the same key in one batch are deduplicated in
memory: the first does the work, the later one follows it and gets the same
response as a replay (409 if its body differs); if the first one fails, the
later one goes into the next batch and does the work itself, exactly as it
would after waiting for a rolled-back transaction.
A request dropped from a batch has its key row deleted before the commit; for
a key recycled from an expired row that is the same as the purge would do.
Payment rows need no lock order: their ids derive from the keys, and no two
batches in flight own the same key.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ingress.idempotency import StoredResponse, key_reused, stored_outcome
from ingress.problems import Problem
from ingress.services import is_unavailable, unavailable
from ledger.envelope import Envelope, PaymentCommand
from ledger.topics import TopicRole

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from ingress.services import Services

# How long the first request of a batch waits for others to join it: the
# latency a request pays for batching when the process is not busy.
CREATE_BATCH_WINDOW_S: Final = 0.001
# Requests in one batch; a full batch goes at once, without waiting the window.
CREATE_BATCH_REQUESTS_MAX: Final = 64
# Batches in flight at once, each holding one pool connection across its Kafka
# acks: half of ``ingress.db.POOL_CONNECTIONS_MAX``, the rest stays for the
# follow-up commands, authentication and customer keys. While all are busy,
# requests queue up and the next batch is larger.
CREATE_BATCHES_IN_FLIGHT_MAX: Final = 8
# How long shutdown waits for the batches in flight (each bounded by the
# publish timeout anyway).
CREATE_BATCHER_SHUTDOWN_TIMEOUT_S: Final = 30.0
# The ingress's Kafka producer sends at once (``linger_ms``): a batch hands it
# all its records together, so waiting for more would only delay every 202.
INGRESS_PRODUCER_LINGER_MS: Final = 0

_CLAIM = (
    "INSERT INTO idempotency_keys (merchant_id, idempotency_key, request_sha256, expires_at)"
    " SELECT m, k, f, now() + make_interval(secs => %s)"
    " FROM unnest(%s::text[], %s::text[], %s::bytea[]) WITH ORDINALITY AS c(m, k, f, n)"
    " ORDER BY n"  # the caller's (sorted) order: batches take row locks in one order
    " ON CONFLICT (merchant_id, idempotency_key) DO UPDATE SET"
    "  request_sha256 = EXCLUDED.request_sha256, response_status = NULL,"
    "  response_body = NULL, created_at = now(), expires_at = EXCLUDED.expires_at"
    "  WHERE idempotency_keys.expires_at < now()"
    " RETURNING merchant_id, idempotency_key"
)
_STORED = (
    "SELECT i.merchant_id, i.idempotency_key, i.request_sha256, i.response_status,"
    " i.response_body FROM idempotency_keys i"
    " JOIN unnest(%s::text[], %s::text[]) AS c(m, k)"
    " ON i.merchant_id = c.m AND i.idempotency_key = c.k"
)
_INSERT_PAYMENTS = (
    "INSERT INTO ingress_payments (payment_id, merchant_id, provider, currency, amount_minor)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[])"
    " ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id"
)
_INSERT_CUSTOMERS = (
    "INSERT INTO ingress_payment_customers"
    " (payment_id, customer_ref, data_key_id, algorithm, nonce, ciphertext)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::bytea[], %s::bytea[])"
)
# Deleting a payment row deletes its customer row too (ON DELETE CASCADE).
_DELETE_PAYMENTS = "DELETE FROM ingress_payments WHERE payment_id = ANY(%s::text[])"
_RELEASE_KEYS = (
    "DELETE FROM idempotency_keys i USING unnest(%s::text[], %s::text[]) AS c(m, k)"
    " WHERE i.merchant_id = c.m AND i.idempotency_key = c.k"
)
_COMPLETE = (
    "UPDATE idempotency_keys i SET response_status = c.s, response_body = c.b"
    " FROM unnest(%s::text[], %s::text[], %s::int[], %s::bytea[]) AS c(m, k, s, b)"
    " WHERE i.merchant_id = c.m AND i.idempotency_key = c.k"
)

Outcome = tuple[StoredResponse, bool]  # the response, and whether it is a replay


@dataclass(eq=False, slots=True)
class CreateIntent:
    """One validated create request, waiting for its batch."""

    merchant_id: str
    idempotency_key: str
    fingerprint: bytes
    payment_id: str
    provider: str
    currency: str
    amount_minor: int
    # The 202 to store and send once the command is acknowledged.
    accepted: StoredResponse
    # Seals the customer data and builds the command; called only once the
    # batch owns the key (a replay never seals anything).
    build: Callable[[], Awaitable[Envelope]]
    future: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def claim_key(self) -> tuple[str, str]:
        return self.merchant_id, self.idempotency_key

    def resolve(self, outcome: Outcome) -> None:
        if not self.future.done():  # a request cancelled meanwhile is simply not answered
            self.future.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class CreateBatcher:
    """Collects concurrent create requests and runs them as batches (one per process)."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._queue: deque[CreateIntent] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(CREATE_BATCHES_IN_FLIGHT_MAX)
        self._collector: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, intent: CreateIntent) -> Outcome:
        """Queue the request and wait for its answer; raises its ``Problem`` if it has one."""
        if self._closed:
            raise unavailable(RuntimeError("the ingress is shutting down"))
        if self._collector is None:
            self._collector = asyncio.create_task(self._collect(), name="create-batcher")
        self._queue.append(intent)
        if len(self._queue) >= CREATE_BATCH_REQUESTS_MAX and not self._slots.locked():
            # A full batch runs at once, in this request's own task: its first
            # statement is on the wire before the requests queued behind this
            # one in the event loop are parsed and validated (a new task would
            # start only after all of them), so Postgres and Kafka work while
            # this process works on the next batch.
            await self._slots.acquire()  # free: returns at once
            try:
                batch = self._take()
                if batch:
                    await self._run(batch)
            finally:
                self._slots.release()
        elif len(self._queue) == 1 or len(self._queue) >= CREATE_BATCH_REQUESTS_MAX:
            self._arrived.set()
        return await intent.future

    async def close(self) -> None:
        """Stop taking requests, let the batches in flight finish, refuse what still waits."""
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        if self._batches:
            await asyncio.wait(self._batches, timeout=CREATE_BATCHER_SHUTDOWN_TIMEOUT_S)
        while self._queue:
            self._queue.popleft().fail(unavailable(RuntimeError("the ingress is shutting down")))

    # --- forming batches ---------------------------------------------------------------------

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # While every slot is busy, requests pile up: the next batch is larger.
            await self._slots.acquire()
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + CREATE_BATCH_WINDOW_S
            while len(self._queue) < CREATE_BATCH_REQUESTS_MAX:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._batches.add(task)
            task.add_done_callback(self._finished)

    def _take(self) -> list[CreateIntent]:
        """Up to ``CREATE_BATCH_REQUESTS_MAX`` requests with distinct keys, in arrival order.

        A later request for a key already in the batch does not join it (one
        statement cannot claim a key twice): it follows the first one.
        """
        batch: list[CreateIntent] = []
        firsts: dict[tuple[str, str], CreateIntent] = {}
        while self._queue and len(batch) < CREATE_BATCH_REQUESTS_MAX:
            intent = self._queue.popleft()
            if intent.future.done():  # cancelled while queued (the client went away)
                continue
            first = firsts.get(intent.claim_key)
            if first is not None:
                self._follow(first, intent)
            else:
                firsts[intent.claim_key] = intent
                batch.append(intent)
        return batch

    def _follow(self, first: CreateIntent, later: CreateIntent) -> None:
        """Answer ``later`` from the outcome of ``first``, which has the same key."""

        def answer(future: asyncio.Future[Outcome]) -> None:
            if future.cancelled() or future.exception() is not None:
                # The first one failed (or its client went away): the later one
                # goes again, first in line, and meets in Postgres whatever the
                # first one committed, if anything, as a concurrent request would.
                self._requeue(later)
                return
            response, _ = future.result()
            if later.fingerprint == first.fingerprint:
                later.resolve((response, True))
            else:
                later.fail(key_reused())

        first.future.add_done_callback(answer)

    def _requeue(self, intent: CreateIntent) -> None:
        if intent.future.done():
            return
        if self._closed:
            intent.fail(unavailable(RuntimeError("the ingress is shutting down")))
            return
        self._queue.appendleft(intent)
        self._arrived.set()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._slots.release()

    # --- one batch ---------------------------------------------------------------------------

    async def _run(self, batch: list[CreateIntent]) -> None:
        try:
            await self._process(batch)
        except Exception as error:
            # A shared failure (Kafka, Postgres, or a bug): every request not
            # answered yet gets it, as it would have on its own.
            for intent in batch:
                intent.fail(error)
        except BaseException as error:  # cancelled: the process is stopping
            for intent in batch:
                intent.fail(unavailable(error))
            raise
        finally:
            for intent in batch:  # never leave a request waiting forever
                intent.fail(RuntimeError("create batch ended without an answer"))

    async def _process(self, batch: list[CreateIntent]) -> None:
        svc = self._svc
        # One lock order for every batch: no deadlock between two batches.
        batch.sort(key=lambda intent: intent.claim_key)
        async with (
            svc.pool.connection() as connection,
            connection.pipeline(),
            connection.transaction(),
        ):
            owned, held = await self._claim(connection, batch)
            stored_cursor = None
            if held:
                stored_cursor = await connection.execute(
                    _STORED,
                    ([i.merchant_id for i in held], [i.idempotency_key for i in held]),
                )
            # Seal and build while the SELECT is on its way.
            ready, dropped = await self._build(owned)
            if stored_cursor is not None:
                self._answer_held(held, await stored_cursor.fetchall())
            ready, conflicting = await self._insert_payments(connection, ready)
            dropped += conflicting
            published, unsent = await self._publish(ready)
            dropped += unsent
            await self._release(connection, dropped, inserted=unsent)
            if published:
                await connection.execute(
                    _COMPLETE,
                    (
                        [i.merchant_id for i in published],
                        [i.idempotency_key for i in published],
                        [i.accepted.status for i in published],
                        [i.accepted.body for i in published],
                    ),
                )
        # Committed: only now is a 202 true.
        for intent in published:
            intent.resolve((intent.accepted, False))

    async def _claim(
        self, connection: AsyncConnection[Any], batch: list[CreateIntent]
    ) -> tuple[list[CreateIntent], list[CreateIntent]]:
        """The requests whose key this batch now owns, and those whose key is held already."""
        cursor = await connection.execute(
            _CLAIM,
            (
                self._svc.settings.idempotency_ttl_s,
                [i.merchant_id for i in batch],
                [i.idempotency_key for i in batch],
                [i.fingerprint for i in batch],
            ),
        )
        claimed = {(merchant_id, key) for merchant_id, key in await cursor.fetchall()}
        owned = [i for i in batch if i.claim_key in claimed]
        held = [i for i in batch if i.claim_key not in claimed]
        return owned, held

    @staticmethod
    def _answer_held(held: list[CreateIntent], rows: list[tuple[Any, ...]]) -> None:
        """Replay the stored response, or 409 when the key was used for another request."""
        stored = {(row[0], row[1]): row[2:] for row in rows}
        for intent in held:
            found = stored.get(intent.claim_key)
            # The conflicting row is committed (the claim waited for it) and
            # locked by this transaction, so it is there, with its response.
            assert found is not None, "a held key's row is committed, so it is visible"
            try:
                intent.resolve((stored_outcome(intent.fingerprint, *found), True))
            except Problem as problem:
                intent.fail(problem)

    @staticmethod
    async def _build(
        owned: list[CreateIntent],
    ) -> tuple[list[tuple[CreateIntent, Envelope]], list[CreateIntent]]:
        """Each owned request's command; a request whose build fails (410) is dropped."""
        built = await asyncio.gather(*(i.build() for i in owned), return_exceptions=True)
        ready: list[tuple[CreateIntent, Envelope]] = []
        dropped: list[CreateIntent] = []
        for intent, result in zip(owned, built, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation: the whole batch
                intent.fail(result)
                dropped.append(intent)
            else:
                ready.append((intent, result))
        return ready, dropped

    @staticmethod
    async def _insert_payments(
        connection: AsyncConnection[Any], ready: list[tuple[CreateIntent, Envelope]]
    ) -> tuple[list[tuple[CreateIntent, Envelope]], list[CreateIntent]]:
        """Insert the payments; one whose id exists already is a 409 for its request only."""
        if not ready:
            return [], []
        intents = [intent for intent, _ in ready]
        cursor = await connection.execute(
            _INSERT_PAYMENTS,
            (
                [i.payment_id for i in intents],
                [i.merchant_id for i in intents],
                [i.provider for i in intents],
                [i.currency for i in intents],
                [i.amount_minor for i in intents],
            ),
        )
        inserted = {payment_id for (payment_id,) in await cursor.fetchall()}
        kept = [(intent, envelope) for intent, envelope in ready if intent.payment_id in inserted]
        conflicting = [intent for intent in intents if intent.payment_id not in inserted]
        await _insert_customers(connection, kept)
        for intent in conflicting:
            # Only an Idempotency-Key reused after its record expired gets here.
            intent.fail(
                Problem(
                    409,
                    "payment-exists",
                    "A payment was already created with this Idempotency-Key",
                    "use a new Idempotency-Key for a new payment",
                )
            )
        return kept, conflicting

    async def _publish(
        self, ready: list[tuple[CreateIntent, Envelope]]
    ) -> tuple[list[CreateIntent], list[CreateIntent]]:
        """Produce every command and wait for all the acks, within the publish timeout.

        Returns the requests whose command was acknowledged, and those whose
        command could not even be signed or encoded (their own error, not
        the broker's). Raises the 503 problem when the broker did not
        acknowledge everything in time: the caller rolls the batch back.
        """
        if not ready:
            return [], []
        svc = self._svc
        topic = svc.topic(TopicRole.COMMANDS)
        sent: list[CreateIntent] = []
        unsent: list[CreateIntent] = []
        acks: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(svc.settings.publish_timeout_s):
                for intent, envelope in ready:
                    try:
                        acks.append(await svc.publisher.send(topic, envelope))
                    except Exception as error:
                        if is_unavailable(error):
                            raise
                        intent.fail(error)
                        unsent.append(intent)
                        continue
                    sent.append(intent)
                results = await asyncio.gather(*acks, return_exceptions=True)
        except Exception as error:
            for ack in acks:  # still pending: the producer settles them later, unheard
                ack.add_done_callback(_settled)
            if is_unavailable(error):
                raise unavailable(error) from error
            raise
        for result in results:
            if isinstance(result, BaseException):
                if is_unavailable(result):
                    raise unavailable(result) from result
                raise result
        return sent, unsent

    @staticmethod
    async def _release(
        connection: AsyncConnection[Any], dropped: list[CreateIntent], inserted: list[CreateIntent]
    ) -> None:
        """Undo, inside the batch's transaction, what the dropped requests wrote."""
        if dropped:
            await connection.execute(
                _RELEASE_KEYS,
                ([i.merchant_id for i in dropped], [i.idempotency_key for i in dropped]),
            )
        if inserted:
            await connection.execute(_DELETE_PAYMENTS, ([i.payment_id for i in inserted],))


async def _insert_customers(
    connection: AsyncConnection[Any], inserted: list[tuple[CreateIntent, Envelope]]
) -> None:
    """Store the sealed customer data of the inserted payments that carry it, as sealed."""
    rows = [
        (intent.payment_id, envelope.payload.customer)
        for intent, envelope in inserted
        if isinstance(envelope.payload, PaymentCommand) and envelope.payload.customer is not None
    ]
    if not rows:
        return
    await connection.execute(
        _INSERT_CUSTOMERS,
        (
            [payment_id for payment_id, _ in rows],
            [sealed.customer_ref for _, sealed in rows],
            [sealed.data_key_id for _, sealed in rows],
            [sealed.algorithm for _, sealed in rows],
            [sealed.nonce for _, sealed in rows],
            [sealed.ciphertext for _, sealed in rows],
        ),
    )


def _settled(ack: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned ack's outcome, so asyncio does not log it as never retrieved."""
    if not ack.cancelled():
        ack.exception()
