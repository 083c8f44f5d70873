"""The contract every payment provider adapter keeps, as one suite run against each peer.

A test module subclasses ``ProviderContract`` once per provider and overrides
the ``backend`` fixture with a ``ContractBackend``: how to build the adapter
against its real local peer (stripe-mock, Prism behind the PayPal gateway, the
Coinbase fake), what that peer can show of the requests it received, and what
the provider cannot do. Every test here then runs against every adapter.

The peers are mostly stateless (stripe-mock and Prism answer from fixtures or
the spec, whatever came before), so the suite checks what holds for any
correct answer: the adapter's requests are accepted by the peer (both mocks
validate requests against the provider's own API description), its answers
are read into references and statuses from the provider's documented
vocabulary, amounts round-trip where the peer reflects them, the idempotency
key reaches the peer, and failures are classified as the caller needs them.
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest

from ledger.envelope import CaptureMethod, Money, Provider
from streams.providers.base import (
    CreatePayment,
    FailureKind,
    Operation,
    PaymentProvider,
    ProviderError,
    ProviderResult,
    derive_idempotency_key,
)

pytestmark = pytest.mark.integration

CURRENCY = "USD"  # the currency of stripe-mock's fixtures, so reflected amounts compare
AMOUNT = Money(1050, CURRENCY)
TIMEOUT_S = 0.5
# Slack for event-loop scheduling and process start-up around TIMEOUT_S.
TIMEOUT_SLACK_S = 2.0

UnsupportedCall = Callable[[PaymentProvider], Awaitable[object]]


def new_key() -> str:
    return derive_idempotency_key(uuid.uuid4())


def payment(capture_method: CaptureMethod = CaptureMethod.MANUAL) -> CreatePayment:
    return CreatePayment(
        payment_id=f"pay_{uuid.uuid4().hex[:20]}",
        amount=AMOUNT,
        capture_method=capture_method,
        description="contract test",
    )


class ContractBackend(abc.ABC):
    """One provider's adapter and its peer, as the suite needs them."""

    provider: Provider
    # Capture, partial capture and refund exist at this provider.
    supports_capture = True
    # The capture method the suite's payments use where either works.
    capture_method = CaptureMethod.MANUAL
    # Operations whose result carries the amount the peer was sent.
    reflects_amount: frozenset[Operation] = frozenset()
    # The provider's documented status words, per operation.
    statuses: Mapping[Operation, frozenset[str]]

    @abc.abstractmethod
    def make(
        self,
        *,
        base_url: str | None = None,
        good_credentials: bool = True,
        timeout_s: float | None = None,
    ) -> PaymentProvider:
        """The adapter, pointed at the peer unless ``base_url`` says otherwise."""

    async def capturable(self, provider: PaymentProvider, created: ProviderResult) -> str:
        """The reference ``capture`` takes once the customer has approved ``created``."""
        return created.ref

    async def cancellable(self, provider: PaymentProvider, created: ProviderResult) -> str:
        """The reference ``cancel`` takes for ``created``."""
        return created.ref

    @abc.abstractmethod
    async def keys_seen(self, result: ProviderResult) -> set[str]:
        """The idempotency keys the peer observably received for the call behind ``result``."""

    async def requests_seen(self) -> int | None:
        """How many requests the peer has received so far, if it can tell."""
        return None

    async def check_sent_amount(self, operation: Operation, amount: Money) -> None:  # noqa: B027
        """Assert the last ``operation`` request carried ``amount`` in the provider's format.

        Peers that validate requests against the provider's API description
        (stripe-mock) have already refused a malformed one.
        """

    def unsupported(self) -> list[UnsupportedCall]:
        """Calls this provider cannot make; each must fail fast, sending nothing."""
        return []


class ProviderContract:
    """Subclass once per provider and override the ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> ContractBackend:
        raise NotImplementedError("a ProviderContract subclass provides its backend")

    @pytest.fixture
    async def adapter(self, backend: ContractBackend) -> AsyncIterator[PaymentProvider]:
        async with backend.make() as adapter:
            yield adapter

    @staticmethod
    def check_result(
        backend: ContractBackend, result: ProviderResult, operation: Operation, key: str
    ) -> None:
        assert result.provider is backend.provider
        assert result.operation is operation
        assert result.ref and result.object_id
        assert result.idempotency_key == key
        assert result.status in backend.statuses[operation], result.status

    async def test_create_answers_a_reference_in_the_providers_vocabulary(
        self, backend: ContractBackend, adapter: PaymentProvider
    ) -> None:
        key = new_key()
        created = await adapter.create(payment(backend.capture_method), idempotency_key=key)
        self.check_result(backend, created, Operation.CREATE, key)
        if Operation.CREATE in backend.reflects_amount:
            assert created.amount == AMOUNT
        await backend.check_sent_amount(Operation.CREATE, AMOUNT)

    async def test_create_capture_refund(
        self, backend: ContractBackend, adapter: PaymentProvider
    ) -> None:
        if not backend.supports_capture:
            pytest.skip(f"{backend.provider.value} has no capture or refund")
        created = await adapter.create(payment(), idempotency_key=new_key())
        ref = await backend.capturable(adapter, created)
        capture_key = new_key()
        captured = await adapter.capture(ref, None, idempotency_key=capture_key)
        self.check_result(backend, captured, Operation.CAPTURE, capture_key)
        refund_key = new_key()
        partial_refund = Money(300, CURRENCY)
        refunded = await adapter.refund(captured.ref, partial_refund, idempotency_key=refund_key)
        self.check_result(backend, refunded, Operation.REFUND, refund_key)
        # A refund is its own object; the reference stays the captured payment's,
        # so a second partial refund goes against the same thing.
        assert refunded.ref == captured.ref
        if Operation.REFUND in backend.reflects_amount:
            assert refunded.amount is not None
            assert refunded.amount.amount_minor == partial_refund.amount_minor
        await backend.check_sent_amount(Operation.REFUND, partial_refund)

    async def test_partial_capture(
        self, backend: ContractBackend, adapter: PaymentProvider
    ) -> None:
        if not backend.supports_capture:
            pytest.skip(f"{backend.provider.value} has no capture")
        created = await adapter.create(payment(), idempotency_key=new_key())
        ref = await backend.capturable(adapter, created)
        part = Money(600, CURRENCY)
        key = new_key()
        captured = await adapter.capture(ref, part, idempotency_key=key)
        self.check_result(backend, captured, Operation.CAPTURE, key)
        await backend.check_sent_amount(Operation.CAPTURE, part)

    async def test_create_cancel(self, backend: ContractBackend, adapter: PaymentProvider) -> None:
        created = await adapter.create(payment(backend.capture_method), idempotency_key=new_key())
        ref = await backend.cancellable(adapter, created)
        key = new_key()
        canceled = await adapter.cancel(ref, idempotency_key=key)
        self.check_result(backend, canceled, Operation.CANCEL, key)

    async def test_idempotency_key_reaches_the_peer(
        self, backend: ContractBackend, adapter: PaymentProvider
    ) -> None:
        key = new_key()
        created = await adapter.create(payment(backend.capture_method), idempotency_key=key)
        assert key in await backend.keys_seen(created)

    async def test_timeout_is_retryable(self, backend: ContractBackend, silent_port: int) -> None:
        started = time.monotonic()
        async with backend.make(
            base_url=f"http://127.0.0.1:{silent_port}", timeout_s=TIMEOUT_S
        ) as adapter:
            with pytest.raises(ProviderError) as caught:
                await adapter.create(payment(backend.capture_method), idempotency_key=new_key())
        assert caught.value.kind is FailureKind.TIMEOUT
        assert caught.value.retryable
        assert time.monotonic() - started < TIMEOUT_S + TIMEOUT_SLACK_S

    async def test_refused_connection_is_retryable(
        self, backend: ContractBackend, closed_port: int
    ) -> None:
        async with backend.make(base_url=f"http://127.0.0.1:{closed_port}") as adapter:
            with pytest.raises(ProviderError) as caught:
                await adapter.create(payment(backend.capture_method), idempotency_key=new_key())
        assert caught.value.kind is FailureKind.CONNECTION
        assert caught.value.retryable

    async def test_client_error_is_not_retryable(self, backend: ContractBackend) -> None:
        async with backend.make(good_credentials=False) as adapter:
            with pytest.raises(ProviderError) as caught:
                await adapter.create(payment(backend.capture_method), idempotency_key=new_key())
        assert caught.value.status_code == 401
        assert caught.value.kind is FailureKind.UNAUTHORIZED
        assert not caught.value.retryable

    async def test_malformed_key_is_refused_before_any_call(
        self, backend: ContractBackend, adapter: PaymentProvider
    ) -> None:
        before = await backend.requests_seen()
        for key in ("", "has space", "x" * 109):
            with pytest.raises(ProviderError) as caught:
                await adapter.create(payment(backend.capture_method), idempotency_key=key)
            assert caught.value.kind is FailureKind.INVALID_INPUT
            assert not caught.value.retryable
        assert await backend.requests_seen() == before

    async def test_unsupported_operations_fail_fast(
        self, backend: ContractBackend, adapter: PaymentProvider
    ) -> None:
        calls = backend.unsupported()
        if not calls:
            pytest.skip(f"{backend.provider.value} supports every operation of the interface")
        before = await backend.requests_seen()
        for call in calls:
            with pytest.raises(ProviderError) as caught:
                await call(adapter)
            assert caught.value.kind is FailureKind.UNSUPPORTED
            assert not caught.value.retryable
        assert await backend.requests_seen() == before
