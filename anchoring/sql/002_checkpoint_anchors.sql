-- Where each checkpoint is anchored: its IPFS CIDs, its OpenTimestamps
-- proofs, and when the record carrying them went to the checkpoints topic.
-- Append-only like the log: a CID is recorded once and never changed; a
-- timestamp proof that improves (a calendar's pending proof upgraded to a
-- Bitcoin attestation) is a new row, the newest row being the current proof.

-- The CIDv1 of the signed note and of the leaf bundle, as computed locally
-- and confirmed by the Kubo node that pinned them.
CREATE TABLE checkpoint_publications (
    tree_size bigint PRIMARY KEY REFERENCES checkpoints (tree_size),
    checkpoint_cid text NOT NULL CHECK (length(checkpoint_cid) BETWEEN 1 AND 128),
    bundle_cid text NOT NULL CHECK (length(bundle_cid) BETWEEN 1 AND 128),
    published_at timestamptz NOT NULL DEFAULT now()
);

-- The .ots proofs of SHA-256 of the signed note, one row per state of the proof.
CREATE TABLE checkpoint_timestamps (
    tree_size bigint NOT NULL REFERENCES checkpoints (tree_size),
    revision integer NOT NULL CHECK (revision >= 1),
    digest bytea NOT NULL CHECK (octet_length(digest) = 32),
    ots bytea NOT NULL CHECK (octet_length(ots) BETWEEN 1 AND 65536),
    complete boolean NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tree_size, revision)
);

-- The anchored record (CIDs and proof) is on the checkpoints topic.
CREATE TABLE checkpoint_announcements (
    tree_size bigint PRIMARY KEY REFERENCES checkpoints (tree_size),
    checkpoint_cid text,
    bundle_cid text,
    timestamp_revision integer,
    announced_at timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER checkpoint_publications_append_only BEFORE UPDATE OR DELETE
    ON checkpoint_publications FOR EACH ROW EXECUTE FUNCTION refuse_log_change();
CREATE TRIGGER checkpoint_publications_no_truncate BEFORE TRUNCATE
    ON checkpoint_publications FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_change();
CREATE TRIGGER checkpoint_timestamps_append_only BEFORE UPDATE OR DELETE
    ON checkpoint_timestamps FOR EACH ROW EXECUTE FUNCTION refuse_log_change();
CREATE TRIGGER checkpoint_timestamps_no_truncate BEFORE TRUNCATE
    ON checkpoint_timestamps FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_change();
CREATE TRIGGER checkpoint_announcements_append_only BEFORE UPDATE OR DELETE
    ON checkpoint_announcements FOR EACH ROW EXECUTE FUNCTION refuse_log_change();
