-- Merchants and their credentials, idempotency records, and the ingress's own
-- index of payments it accepted (owner, provider, currency), which is what
-- merchant isolation and later commands are checked against.

CREATE TABLE merchants (
    merchant_id          text PRIMARY KEY CHECK (merchant_id ~ '^[a-z0-9_]{3,64}$'),
    name                 text NOT NULL,
    -- Optional RFC 9421 HTTP Message Signatures with Ed25519: when set, every
    -- request must carry a valid signature by this key.
    signature_key_id     text UNIQUE,
    signature_public_key bytea CHECK (signature_public_key IS NULL OR length(signature_public_key) = 32),
    require_signature    boolean NOT NULL DEFAULT false,
    rate_per_s           double precision CHECK (rate_per_s IS NULL OR rate_per_s > 0),
    burst                integer CHECK (burst IS NULL OR burst > 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT require_signature OR signature_public_key IS NOT NULL)
);

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    merchant_id  text NOT NULL REFERENCES merchants (merchant_id),
    -- SHA-256 of the secret. Keys are 256-bit random values, so a fast hash
    -- is as safe as a slow one and keeps authentication off the hot path.
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_merchant ON api_keys (merchant_id);

CREATE TABLE idempotency_keys (
    merchant_id     text NOT NULL REFERENCES merchants (merchant_id),
    idempotency_key text NOT NULL,
    request_sha256  bytea NOT NULL,
    -- NULL while the first request is still being processed.
    response_status integer,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TABLE ingress_payments (
    payment_id   text PRIMARY KEY,
    merchant_id  text NOT NULL REFERENCES merchants (merchant_id),
    provider     text NOT NULL,
    currency     char(3) NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    -- Next per-payment sequence number for commands this ingress publishes.
    next_sequence bigint NOT NULL DEFAULT 2,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingress_payments_merchant ON ingress_payments (merchant_id, created_at);
