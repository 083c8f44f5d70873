"""Postgres read models of the payment-events topic: SQL migrations, the applier, rebuild.

Merchants and operators read payments from Postgres; the source of truth
stays the log. The applier consumes payment-events (signed ``PaymentEvent``
envelopes), verifies each record from the root key, and writes, per poll
batch and in one transaction, the rows below with the consumer positions.

    payments            one row per payment: status and running totals after its newest event
    payment_fees        a payment's net provider fees, per currency
    payment_events      the timeline: every event as signed, with where it was read
    ledger_entries      every posting leg of every event (balanced per event and currency)
    account_balances    debit and credit totals per account and currency (kept by a trigger)
    processed_events    every applied event id with the SHA-256 of its record
    consumer_positions  the next offset per partition, committed with the rows

Modules, from the pure core to the I/O edge::

    rows        PaymentEvent -> rows                       (pure)
    plan        a batch -> apply / duplicate / conflict     (pure)
    facts       audit facts and dead letters               (pure)
    migrations  NNN_name.sql into a named schema           (Postgres)
    store       reads and writes of one batch              (Postgres)
    reader      the payment-events consumer, verification  (Kafka)
    applier     the loop: one transaction per batch, retries, stop
    rebuild     replay from offset 0 into a scratch schema, diff it with the live one
    commands    ``payledger projections migrate|apply|rebuild``; ``worker``: ``python -m``
"""
