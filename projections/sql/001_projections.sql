-- The read models of the payment-events topic.
--
-- Every object is created unqualified: the migration runner sets search_path
-- to the target schema, so the same file builds the live schema and any
-- scratch schema beside it (a rebuild), and its checksum does not depend on
-- the schema's name. Functions pin their search_path FROM CURRENT for the
-- same reason.
--
-- The invariants the ledger promises are constraints here, so a projection
-- that broke one could never commit:
--   * every amount is non-negative; a ledger entry is positive;
--   * captured <= authorized, and refunded + charged back + disputed <=
--     captured, on every event and on every payment (the state machine checks
--     both after every event, ledger/payments/machine.py `_check`);
--   * one event per (payment, sequence), one per source record;
--   * each event's ledger entries are exactly its postings and balance per
--     currency (a deferred constraint trigger, checked at commit);
--   * account balances are the sums of the entries (kept by a trigger);
--   * events, entries and processed events are append-only.

CREATE TABLE payments (
    payment_id         text PRIMARY KEY CHECK (length(payment_id) BETWEEN 1 AND 64),
    merchant_id        text NOT NULL,
    provider           text NOT NULL CHECK (provider IN ('STRIPE', 'PAYPAL', 'COINBASE')),
    -- The provider object the first provider event named: the PaymentIntent,
    -- order or charge. NULL until a provider event names one.
    provider_object_id text,
    status             text NOT NULL CHECK (status IN (
        'AWAITING_PAYMENT_METHOD', 'REQUIRES_CUSTOMER_ACTION', 'PROCESSING', 'AUTHORIZED',
        'PARTIALLY_CAPTURED', 'SUCCEEDED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DISPUTED',
        'CANCELED', 'FAILED', 'EXPIRED', 'UNRESOLVED')),
    -- The payment's amount and currency; every *_minor total is in it.
    currency           char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    authorized_minor   bigint NOT NULL CHECK (authorized_minor >= 0),
    captured_minor     bigint NOT NULL CHECK (captured_minor >= 0),
    refunded_minor     bigint NOT NULL CHECK (refunded_minor >= 0),
    disputed_minor     bigint NOT NULL CHECK (disputed_minor >= 0),
    charged_back_minor bigint NOT NULL CHECK (charged_back_minor >= 0),
    suspense_minor     bigint NOT NULL CHECK (suspense_minor >= 0),
    -- The newest event projected; the row holds the totals after it.
    last_sequence      bigint NOT NULL CHECK (last_sequence >= 1),
    -- occurred_at of the payment's first event (the merchant's CREATE), and
    -- recorded_at of its newest: both come from the log, so a rebuild
    -- reproduces them exactly.
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    -- Authorization and capture are one step for automatic capture and for
    -- crypto: the machine then raises authorized with captured, so this
    -- holds for every provider.
    CONSTRAINT payments_captured_within_authorized CHECK (captured_minor <= authorized_minor),
    CONSTRAINT payments_returned_within_captured
        CHECK (refunded_minor + charged_back_minor + disputed_minor <= captured_minor),
    -- The target of the events' foreign key: an event can only belong to the
    -- payment of its merchant, provider and currency.
    CONSTRAINT payments_identity UNIQUE (payment_id, merchant_id, provider, currency)
);
CREATE INDEX payments_merchant ON payments (merchant_id, created_at, payment_id);

-- Net provider fees of a payment so far, one row per currency they were
-- charged in (not always the payment's). A payment without fees has no row.
CREATE TABLE payment_fees (
    payment_id   text NOT NULL REFERENCES payments (payment_id),
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    PRIMARY KEY (payment_id, currency)
);

-- The timeline: every payment event, as signed on the log.
CREATE TABLE payment_events (
    event_id             uuid PRIMARY KEY,
    payment_id           text NOT NULL,
    merchant_id          text NOT NULL,
    provider             text NOT NULL,
    currency             char(3) NOT NULL,
    payment_amount_minor bigint NOT NULL CHECK (payment_amount_minor > 0),
    sequence             bigint NOT NULL CHECK (sequence >= 1),
    kind                 text NOT NULL CHECK (kind IN (
        'CREATED', 'CAPTURE_REQUESTED', 'CANCEL_REQUESTED', 'REFUND_REQUESTED',
        'STATUS_CHANGED', 'AUTHORIZED', 'CAPTURED', 'CANCELED', 'REFUNDED',
        'DISPUTE_OPENED', 'DISPUTE_WON', 'DISPUTE_LOST', 'FEE_CHARGED',
        'FUNDS_UNRESOLVED', 'FUNDS_RESOLVED', 'NOTED')),
    event_type           text NOT NULL,
    schema_version       integer NOT NULL CHECK (schema_version >= 1),
    status_before        text CHECK (status_before IN (
        'AWAITING_PAYMENT_METHOD', 'REQUIRES_CUSTOMER_ACTION', 'PROCESSING', 'AUTHORIZED',
        'PARTIALLY_CAPTURED', 'SUCCEEDED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DISPUTED',
        'CANCELED', 'FAILED', 'EXPIRED', 'UNRESOLVED')),
    status_after         text NOT NULL CHECK (status_after IN (
        'AWAITING_PAYMENT_METHOD', 'REQUIRES_CUSTOMER_ACTION', 'PROCESSING', 'AUTHORIZED',
        'PARTIALLY_CAPTURED', 'SUCCEEDED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'DISPUTED',
        'CANCELED', 'FAILED', 'EXPIRED', 'UNRESOLVED')),
    stale                boolean NOT NULL,
    -- What this event moved (or, for a command, requested), in amount_currency:
    -- a fee may be in another currency than the payment.
    amount_minor         bigint CHECK (amount_minor >= 0),
    amount_currency      char(3) CHECK (amount_currency ~ '^[A-Z]{3}$'),
    -- The payment's totals after this event, in its currency.
    authorized_minor     bigint NOT NULL CHECK (authorized_minor >= 0),
    captured_minor       bigint NOT NULL CHECK (captured_minor >= 0),
    refunded_minor       bigint NOT NULL CHECK (refunded_minor >= 0),
    disputed_minor       bigint NOT NULL CHECK (disputed_minor >= 0),
    charged_back_minor   bigint NOT NULL CHECK (charged_back_minor >= 0),
    suspense_minor       bigint NOT NULL CHECK (suspense_minor >= 0),
    -- How many ledger entries (postings) the event carries: the deferred
    -- trigger below checks that exactly these many were written.
    postings_count       smallint NOT NULL CHECK (postings_count BETWEEN 0 AND 64),
    command_event_id     text,
    provider_event_id    text,
    provider_event_type  text,
    provider_object_id   text,
    provider_status      text,
    note                 text,
    occurred_at          timestamptz NOT NULL,
    recorded_at          timestamptz NOT NULL,
    producer             text NOT NULL,
    correlation_id       text NOT NULL,
    causation_id         text,
    signing_key_id       text NOT NULL,
    -- Only records whose signature chain verified are projected; the column
    -- says so for whoever reads a row without this file at hand.
    signature_status     text NOT NULL CHECK (signature_status = 'VERIFIED'),
    source_topic         text NOT NULL,
    source_partition     integer NOT NULL CHECK (source_partition >= 0),
    source_offset        bigint NOT NULL CHECK (source_offset >= 0),
    CONSTRAINT payment_events_sequence UNIQUE (payment_id, sequence),
    CONSTRAINT payment_events_source UNIQUE (source_topic, source_partition, source_offset),
    CONSTRAINT payment_events_amount_has_currency
        CHECK ((amount_minor IS NULL) = (amount_currency IS NULL)),
    -- A payment is created by its first event, and only by it.
    CONSTRAINT payment_events_created_first CHECK ((sequence = 1) = (kind = 'CREATED')),
    CONSTRAINT payment_events_status_before CHECK ((status_before IS NULL) = (kind = 'CREATED')),
    CONSTRAINT payment_events_stale_changes_nothing
        CHECK (NOT stale OR (status_before = status_after AND postings_count = 0)),
    CONSTRAINT payment_events_captured_within_authorized CHECK (captured_minor <= authorized_minor),
    CONSTRAINT payment_events_returned_within_captured
        CHECK (refunded_minor + charged_back_minor + disputed_minor <= captured_minor),
    CONSTRAINT payment_events_payment FOREIGN KEY (payment_id, merchant_id, provider, currency)
        REFERENCES payments (payment_id, merchant_id, provider, currency)
        DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX payment_events_merchant ON payment_events (merchant_id, recorded_at);

-- The payment row's newest sequence is an event of that payment.
ALTER TABLE payments ADD CONSTRAINT payments_last_event
    FOREIGN KEY (payment_id, last_sequence) REFERENCES payment_events (payment_id, sequence)
    DEFERRABLE INITIALLY DEFERRED;

-- The double-entry postings of every event, one row per leg, in the order
-- the event lists them.
CREATE TABLE ledger_entries (
    event_id     uuid NOT NULL REFERENCES payment_events (event_id),
    leg          smallint NOT NULL CHECK (leg BETWEEN 0 AND 63),
    account      text NOT NULL
        CHECK (length(account) <= 160 AND account ~ '^[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)+$'),
    side         text NOT NULL CHECK (side IN ('DEBIT', 'CREDIT')),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    PRIMARY KEY (event_id, leg)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account, currency);

-- Per account and currency, the totals of its entries on each side.
-- Sign convention of balance_minor: debits minus credits, so an account whose
-- normal balance is a debit (the provider clearing asset; the merchant fees,
-- refunds, dispute_hold and chargebacks contra-liabilities) is positive, and
-- one whose normal balance is a credit (the merchant payable and suspense
-- liabilities) is negative (ledger/payments/ACCOUNTS.md). Because every
-- event balances, balance_minor sums to zero per currency.
CREATE TABLE account_balances (
    account       text NOT NULL,
    currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    debit_minor   bigint NOT NULL CHECK (debit_minor >= 0),
    credit_minor  bigint NOT NULL CHECK (credit_minor >= 0),
    balance_minor bigint GENERATED ALWAYS AS (debit_minor - credit_minor) STORED,
    entries_count bigint NOT NULL CHECK (entries_count > 0),
    PRIMARY KEY (account, currency)
);

-- Every event applied, with the digest of the exact record it came from: a
-- redelivery is recognised as the same bytes, a reused event id as a conflict.
CREATE TABLE processed_events (
    event_id         uuid PRIMARY KEY REFERENCES payment_events (event_id),
    record_sha256    bytea NOT NULL CHECK (length(record_sha256) = 32),
    source_topic     text NOT NULL,
    source_partition integer NOT NULL CHECK (source_partition >= 0),
    source_offset    bigint NOT NULL CHECK (source_offset >= 0),
    applied_at       timestamptz NOT NULL DEFAULT now()
);

-- Where the applier resumes: written in the transaction of the rows it read.
CREATE TABLE consumer_positions (
    topic       text NOT NULL,
    partition   integer NOT NULL CHECK (partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Each event's entries: exactly postings_count of them, balanced per currency.
-- Checked at commit (deferred), so the rows can be written in any order and
-- in any number of statements; the error names the event.
CREATE FUNCTION check_event_entries() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    expected   smallint;
    found      bigint;
    unbalanced text;
BEGIN
    SELECT postings_count INTO expected FROM payment_events WHERE event_id = NEW.event_id;
    SELECT count(*) INTO found FROM ledger_entries WHERE event_id = NEW.event_id;
    IF found <> coalesce(expected, 0) THEN
        RAISE EXCEPTION 'event % has % ledger entries and % postings',
            NEW.event_id, found, coalesce(expected, 0)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_match_postings';
    END IF;
    SELECT string_agg(currency, ', ' ORDER BY currency) INTO unbalanced FROM (
        SELECT currency FROM ledger_entries WHERE event_id = NEW.event_id
        GROUP BY currency
        HAVING sum(CASE side WHEN 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0
    ) AS per_currency;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'the ledger entries of event % do not balance in %',
            NEW.event_id, unbalanced
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_balanced';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_event_entries();
-- An event whose entries are missing altogether fires no trigger on
-- ledger_entries: its own insert checks it.
CREATE CONSTRAINT TRIGGER event_entries_complete
    AFTER INSERT ON payment_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_event_entries();

-- Balances follow the entries, in the statement that inserts them: one
-- upsert per (account, currency) however many legs the statement carried.
CREATE FUNCTION add_entries_to_balances() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO account_balances AS balance
        (account, currency, debit_minor, credit_minor, entries_count)
    SELECT account, currency,
           coalesce(sum(amount_minor) FILTER (WHERE side = 'DEBIT'), 0),
           coalesce(sum(amount_minor) FILTER (WHERE side = 'CREDIT'), 0),
           count(*)
    FROM inserted_entries
    GROUP BY account, currency
    ORDER BY account, currency
    ON CONFLICT (account, currency) DO UPDATE SET
        debit_minor = balance.debit_minor + EXCLUDED.debit_minor,
        credit_minor = balance.credit_minor + EXCLUDED.credit_minor,
        entries_count = balance.entries_count + EXCLUDED.entries_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER balances_follow_entries
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS inserted_entries
    FOR EACH STATEMENT EXECUTE FUNCTION add_entries_to_balances();

-- The log is history: a projected event, entry or processed record is never
-- changed or removed in place. A projection is rebuilt beside, not edited.
CREATE FUNCTION refuse_history_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER payment_events_append_only
    BEFORE UPDATE OR DELETE ON payment_events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER processed_events_append_only
    BEFORE UPDATE OR DELETE ON processed_events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
