"""The errors of webhook handling: one for a delivery we refuse, one for an event we cannot read.

``reason`` is a short, stable, machine-readable code (``"stale-timestamp"``,
``"no-matching-signature"``), optionally followed by ``": "`` and a detail for
people. It goes into the ``webhook.rejected`` audit fact, never into the HTTP
response: the sender learns only that verification failed.
"""

from __future__ import annotations

from ledger.errors import LedgerError


class WebhookVerificationError(LedgerError):
    """A delivery that is not provably from the provider, or not fresh.

    ``retryable`` marks failures that say nothing about the delivery (the
    provider's certificate endpoint was unreachable): they are answered 503 so
    the provider retries, and they are not audited as rejections.
    """

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class MalformedEvent(LedgerError):
    """A verified body that is not the event the provider documents (no id, bad JSON)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
