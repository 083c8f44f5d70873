"""Every limit in one place, with its unit last in its name.

Exceeding a limit is an error the caller sees, never a silent truncation.
"""

from __future__ import annotations

from typing import Final

# Envelope and payloads.
ENVELOPE_BYTES_MAX: Final = 1_048_576  # one Kafka record value, wire format included
METADATA_ENTRIES_MAX: Final = 50
METADATA_KEY_CHARS_MAX: Final = 40
METADATA_VALUE_CHARS_MAX: Final = 500
DESCRIPTION_CHARS_MAX: Final = 1_000
AGGREGATE_ID_CHARS_MAX: Final = 64
EVENT_TYPE_CHARS_MAX: Final = 128

# Schema registry.
SCHEMA_BYTES_MAX: Final = 262_144
SCHEMA_REGISTRY_TIMEOUT_S: Final = 5.0
SCHEMA_CACHE_ENTRIES_MAX: Final = 1_024

# Keys.
SIGNING_KEY_LIFETIME_S_MAX: Final = 31 * 24 * 3600
CLOCK_SKEW_S_MAX: Final = 300

# Local infrastructure.
READINESS_TIMEOUT_S: Final = 90.0
SHUTDOWN_TIMEOUT_S: Final = 30.0

# Provider webhooks.
WEBHOOK_BODY_BYTES_MAX: Final = 524_288  # one delivery's raw body; providers send far less
WEBHOOK_HEADER_CHARS_MAX: Final = 2_048  # any one signature-related header
WEBHOOK_FIELD_CHARS_MAX: Final = 255  # an id, type or status taken from a verified body
WEBHOOK_PUBLISH_TIMEOUT_S: Final = 10.0  # wait for the broker's ack before answering 503
WEBHOOK_RETRY_AFTER_S: Final = 30  # Retry-After on a 503, so the provider redelivers
WEBHOOK_TIMESTAMP_TOLERANCE_S_MAX: Final = 3_600  # upper bound of the configurable windows
STRIPE_SIGNATURES_MAX: Final = 16  # v1 entries in one Stripe-Signature header
PAYPAL_CERT_URL_CHARS_MAX: Final = 500  # per PayPal's verify-webhook-signature schema
PAYPAL_CERT_BYTES_MAX: Final = 65_536  # one PEM chain from PAYPAL-CERT-URL
PAYPAL_CERT_CHAIN_CERTS_MAX: Final = 8  # certificates in that chain
PAYPAL_CERT_FETCH_TIMEOUT_S: Final = 5.0  # connect, read and total for one fetch
PAYPAL_CERT_CACHE_ENTRIES_MAX: Final = 32  # distinct certificate URLs kept
PAYPAL_CERT_CACHE_TTL_S: Final = 3_600  # how long a fetched chain is reused

# Merchant API requests.
# Highest value `request_body_bytes_max` may be set to: a body larger than one
# envelope could never be published, so accepting it would only waste memory.
REQUEST_BODY_BYTES_CEILING: Final = ENVELOPE_BYTES_MAX
# Highest value `amount_minor_max` may be set to, and the bound any request
# model enforces on its own. Below 2**53, so JavaScript clients read every
# amount exactly, and small enough that 9,000 of them still sum inside a
# signed 64-bit integer (Avro long, Postgres bigint).
AMOUNT_MINOR_CEILING: Final = 999_999_999_999_999
REASON_CHARS_MAX: Final = 500  # cancel and refund reasons
CUSTOMER_REFERENCE_CHARS_MAX: Final = 64  # the merchant's own customer id
CUSTOMER_NAME_CHARS_MAX: Final = 200
EMAIL_CHARS_MAX: Final = 254  # RFC 5321 path limit less the angle brackets
ADDRESS_LINE_CHARS_MAX: Final = 200  # line1, line2, city, state
POSTAL_CODE_CHARS_MAX: Final = 20
VALIDATION_ERRORS_LISTED_MAX: Final = 50  # entries in a 422 problem; the count is always given
# Per-merchant rate limiting (per process).
RATE_LIMIT_PER_S_CEILING: Final = 10_000.0  # highest configurable refill rate
RATE_LIMIT_BURST_CEILING: Final = 100_000  # highest configurable bucket size
RATE_LIMIT_MERCHANTS_MAX: Final = 65_536  # buckets kept; about 16 MiB at the bound

# Personal data: sealing, customer data keys, erasure.
SEALED_PLAINTEXT_BYTES_MAX: Final = 16_384  # one customer's sealed record (name, email, address)
CUSTOMER_KEY_CACHE_ENTRIES_MAX: Final = 10_000  # unwrapped data keys held by one process
CUSTOMER_KEY_CACHE_TTL_S: Final = 60.0  # how long an erased key may live on in a running process
ERASURE_PUBLISH_TIMEOUT_S: Final = 60.0  # waiting for the broker's ack of an erasure fact

# Payment providers (outbound calls from the stream processors).
PROVIDER_TIMEOUT_S_MAX: Final = 60.0  # upper bound of the configurable whole-call deadline
PROVIDER_CONNECT_TIMEOUT_S_MAX: Final = 30.0  # upper bound of the configurable connect timeout
PROVIDER_RESPONSE_BYTES_MAX: Final = 1_048_576  # one provider response body; larger is refused
# PayPal-Request-Id allows 108 characters, the fewest of the three providers
# (Stripe's Idempotency-Key allows 255), so one key fits every provider.
PROVIDER_IDEMPOTENCY_KEY_CHARS_MAX: Final = 108
PROVIDER_ERROR_DETAIL_CHARS_MAX: Final = 500  # provider error text kept in a ProviderError
# A cached PayPal access token is replaced this long before PayPal says it
# expires, so a request never leaves with a token that expires in flight.
PAYPAL_TOKEN_REFRESH_MARGIN_S: Final = 60.0
PAYPAL_TOKEN_TTL_S_MIN: Final = 1.0  # an expires_in below this is treated as broken
COINBASE_DEDUP_ENTRIES_MAX: Final = 100_000  # idempotency records one Coinbase adapter keeps

# Local provider mocks (stripe-mock, Prism, the Coinbase and PayPal fakes).
MOCK_INSTALL_TIMEOUT_S: Final = 900.0  # one `go install` or `npm install`, cold caches
MOCK_PROBE_TIMEOUT_S: Final = 2.0  # one readiness probe of a mock
MOCK_RECORDED_REQUESTS_MAX: Final = 1_000  # requests a fake remembers for tests to inspect
MOCK_REQUEST_BODY_BYTES_MAX: Final = 1_048_576  # one request body a fake accepts

# Stream processors (streams.app, streams.agents).
PROVIDER_CALL_ATTEMPTS_MAX: Final = 5  # tries of one provider call (timeouts, 5xx), first included
PROVIDER_RETRY_BACKOFF_BASE_S: Final = 0.2  # wait before the second try; doubled each time
PROVIDER_RETRY_BACKOFF_MAX_S: Final = 5.0  # longest single wait between two tries
STREAMS_SHUTDOWN_TIMEOUT_S: Final = 30.0  # a worker's clean stop, before it is killed
# Provider events read before their payment's CREATE, held in the payment's
# table entry and applied right after the CREATE. One more (by count or by
# bytes) is dead-lettered with an audit fact instead, as are held events that
# still do not apply then. The byte bound keeps the table value (one
# changelog record) well under ENVELOPE_BYTES_MAX.
STREAMS_HELD_EVENTS_PER_PAYMENT_MAX: Final = 16
STREAMS_HELD_EVENT_BYTES_PER_PAYMENT_MAX: Final = 262_144  # their wire bytes together
