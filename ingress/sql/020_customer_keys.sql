-- Per-customer data keys for sealing personal data (ledger/sealing.py), each
-- stored only wrapped by the master key. Erasing a customer ("crypto-
-- shredding") sets wrapped_key to NULL: every ciphertext sealed under the key
-- becomes unreadable, in every topic and backup, while signatures over it
-- still verify. The row stays as a tombstone, so the customer ref can never
-- get a new key (see ingress/customer_keys.py).
--
-- Deliberately no foreign key to merchants: erasure must work even for a
-- merchant that was removed, and this table has no other dependency.

CREATE TABLE customer_data_keys (
    customer_ref  text PRIMARY KEY CHECK (customer_ref ~ '^cus_[0-9a-f]{32}$'),
    merchant_id   text NOT NULL,
    data_key_id   text NOT NULL UNIQUE CHECK (data_key_id ~ '^dk_[0-9a-f]{32}$'),
    wrapped_key   bytea,
    -- Which master key wrapped it; kept after erasure, for the audit trail.
    master_key_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE INDEX customer_data_keys_merchant ON customer_data_keys (merchant_id);
