"""Provider webhooks: signature verification, normalization and the HTTP routes.

One module per provider (``stripe``, ``paypal``, ``coinbase``), each with a
pure ``verify`` that returns nothing or raises ``WebhookVerificationError``
and a ``normalize`` from the verified body to a ``NormalizedEvent``.
``routes.webhook_router`` wires them to Postgres (dedupe) and Kafka.
"""

from __future__ import annotations

from ingress.webhooks.errors import MalformedEvent, WebhookVerificationError

__all__ = ["MalformedEvent", "WebhookVerificationError"]
