-- Provider webhook deliveries the ingress recorded, for dedupe, and the
-- per-aggregate sequence of the provider events it published.
--
-- A row is inserted in the same transaction that publishes the event and is
-- committed only after Kafka acknowledged it: a row here means the event is
-- on the provider-events topic; a failed publish leaves no row, so the
-- provider's retry is processed afresh.

CREATE TABLE webhook_deliveries (
    provider          text NOT NULL,
    provider_event_id text NOT NULL,
    body_sha256       bytea NOT NULL CHECK (length(body_sha256) = 32),
    received_at       timestamptz NOT NULL,
    -- PayPal's PAYPAL-TRANSMISSION-ID: its signature covers only a CRC-32 of
    -- the body, so a signature is accepted once, never for a second body.
    transmission_id   text,
    event_id          text NOT NULL,
    aggregate_id      text NOT NULL,
    sequence          bigint NOT NULL CHECK (sequence >= 1),
    PRIMARY KEY (provider, provider_event_id)
);
CREATE UNIQUE INDEX webhook_deliveries_transmission
    ON webhook_deliveries (provider, transmission_id) WHERE transmission_id IS NOT NULL;

CREATE TABLE provider_event_sequences (
    aggregate_id  text PRIMARY KEY,
    last_sequence bigint NOT NULL CHECK (last_sequence >= 1)
);
