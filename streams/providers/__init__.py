"""Payment provider adapters behind one interface (``base.PaymentProvider``).

    base       the interface, its result and its one error type (ProviderError)
    stripe     Stripe PaymentIntents and Refunds, through the official SDK
    paypal     PayPal Orders v2 and Payments v2, over httpx with OAuth
    coinbase   Coinbase Commerce charges, over httpx, with a local idempotency record

``provider_for(settings, Provider.STRIPE)`` builds the adapter the settings
describe; by default each points at its local mock (``payledger infra up
--with-mocks``). Close an adapter with ``aclose()`` or ``async with``.
"""

from __future__ import annotations

from ledger.config import Settings
from ledger.envelope import Provider
from streams.providers.base import (
    CreatePayment,
    FailureKind,
    Operation,
    PaymentProvider,
    ProviderError,
    ProviderResult,
    derive_idempotency_key,
)

__all__ = [
    "CreatePayment",
    "FailureKind",
    "Operation",
    "PaymentProvider",
    "ProviderError",
    "ProviderResult",
    "derive_idempotency_key",
    "provider_for",
]


def provider_for(settings: Settings, provider: Provider) -> PaymentProvider:
    """The adapter for ``provider``, configured from ``settings``."""
    # Imported here: each adapter pulls in its own client library.
    if provider is Provider.STRIPE:
        from streams.providers.stripe import StripeProvider  # noqa: PLC0415

        return StripeProvider.from_settings(settings)
    if provider is Provider.PAYPAL:
        from streams.providers.paypal import PayPalProvider  # noqa: PLC0415

        return PayPalProvider.from_settings(settings)
    from streams.providers.coinbase import CoinbaseProvider  # noqa: PLC0415

    return CoinbaseProvider.from_settings(settings)
