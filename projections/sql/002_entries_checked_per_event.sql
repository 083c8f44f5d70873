-- Each event's ledger entries are checked once per event, not once per entry.
--
-- 001 ran check_event_entries() at commit for every ledger_entries row and
-- for every payment_events row, so an event of n postings was counted and
-- summed n + 1 times. The invariant stays the same, in two parts:
--
--   * at commit (deferred, once per event with postings inserted in the
--     transaction): the event has exactly postings_count entries and they
--     balance per currency;
--   * at the end of every statement that inserts entries (once per
--     statement, over its transition table): no event has more entries than
--     postings_count.
--
-- The second part is what keeps entries from being added to an event in a
-- later transaction: an event committed earlier already holds exactly
-- postings_count entries (the first part, or 001's triggers before this
-- file), so one more entry is one too many and the statement is refused.
-- Within the event's own transaction the count only grows towards
-- postings_count (entries are append-only), so the rows can still be written
-- in any order and in any number of statements. Errors name the event and
-- the constraint, as before.

DROP TRIGGER entries_balanced ON ledger_entries;
DROP TRIGGER event_entries_complete ON payment_events;

-- The event's own row is NEW (payment_events is append-only, so it is the
-- row as committed): its postings_count needs no lookup, and one query
-- counts and sums its entries.
CREATE OR REPLACE FUNCTION check_event_entries() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    found      bigint;
    unbalanced text;
BEGIN
    SELECT coalesce(sum(legs), 0),
           string_agg(currency, ', ' ORDER BY currency) FILTER (WHERE net <> 0)
    INTO found, unbalanced
    FROM (
        SELECT currency, count(*) AS legs,
               sum(CASE side WHEN 'DEBIT' THEN amount_minor ELSE -amount_minor END) AS net
        FROM ledger_entries WHERE event_id = NEW.event_id
        GROUP BY currency
    ) AS per_currency;
    IF found <> NEW.postings_count THEN
        RAISE EXCEPTION 'event % has % ledger entries and % postings',
            NEW.event_id, found, NEW.postings_count
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_match_postings';
    END IF;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'the ledger entries of event % do not balance in %',
            NEW.event_id, unbalanced
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_balanced';
    END IF;
    RETURN NULL;
END
$$;

-- An event without postings is not queued: it must have no entries, and
-- every statement that inserts one for it is refused at once (below).
CREATE CONSTRAINT TRIGGER event_entries_complete
    AFTER INSERT ON payment_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.postings_count > 0) EXECUTE FUNCTION check_event_entries();

-- The events of a statement's entries never hold more entries than postings.
-- The ledger_entries foreign key (not deferred) has already refused an entry
-- of an unknown event.
CREATE FUNCTION refuse_entries_beyond_postings() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    over_event uuid;
    expected   smallint;
    found      bigint;
BEGIN
    -- The entries of the statement's events, counted per event, then each
    -- event looked up by its key: the cost follows the statement, not the
    -- size of the tables.
    SELECT event.event_id, event.postings_count, counted.found
    INTO over_event, expected, found
    FROM (
        SELECT event_id, count(*) AS found FROM ledger_entries
        WHERE event_id IN (SELECT event_id FROM inserted_entries)
        GROUP BY event_id
    ) AS counted
    JOIN payment_events AS event ON event.event_id = counted.event_id
    WHERE counted.found > event.postings_count
    LIMIT 1;  -- one is named; an ORDER BY here would make Postgres walk payment_events
    IF over_event IS NOT NULL THEN
        RAISE EXCEPTION 'event % has % ledger entries and % postings',
            over_event, found, expected
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_match_postings';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER entries_within_postings
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS inserted_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_entries_beyond_postings();
