-- The Merkle log of the anchoring worker: its leaves, its stored subtree
-- hashes, the Kafka positions it consumed up to, and its checkpoints.
-- Applied with search_path set to the anchoring schema: no name here is
-- qualified, so the same file builds any number of schemas.

-- One row per leaf, in log order. A leaf's bytes are recomputed from its row
-- alone (anchoring.leaf.LeafRecord); event_id is exactly the leaf's event id
-- field, the placeholder included for a record that does not decode. Event
-- ids are not unique: a publisher that retries after a crash publishes the
-- same event again, and the log covers every record.
CREATE TABLE leaves (
    leaf_index bigint PRIMARY KEY CHECK (leaf_index >= 0),
    topic text NOT NULL CHECK (length(topic) BETWEEN 1 AND 249),
    partition integer NOT NULL CHECK (partition >= 0),
    "offset" bigint NOT NULL CHECK ("offset" >= 0),
    event_id text NOT NULL CHECK (octet_length(event_id) BETWEEN 1 AND 128),
    value_sha256 bytea NOT NULL CHECK (octet_length(value_sha256) = 32),
    leaf_hash bytea NOT NULL CHECK (octet_length(leaf_hash) = 32),
    CONSTRAINT leaves_position_once UNIQUE (topic, partition, "offset")
);
CREATE INDEX leaves_event_id ON leaves (event_id);

-- The perfect subtree hashes above the leaves: node (level, node_index) is
-- the root of the 2**level leaves from leaf node_index * 2**level. Level 0
-- is leaves.leaf_hash.
CREATE TABLE tree_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 1 AND 63),
    node_index bigint NOT NULL CHECK (node_index >= 0),
    hash bytea NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, node_index)
);

-- The next offset to read per partition, written in the transaction that
-- appends the leaves read before it: the only truth the worker resumes from.
CREATE TABLE consumed_positions (
    topic text NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Signed checkpoints, with the consistency proof from the previous one
-- (previous_size 0 and an empty proof for the first).
CREATE TABLE checkpoints (
    tree_size bigint PRIMARY KEY CHECK (tree_size > 0),
    root_hash bytea NOT NULL CHECK (octet_length(root_hash) = 32),
    origin text NOT NULL,
    note text NOT NULL,
    previous_size bigint NOT NULL CHECK (previous_size >= 0 AND previous_size < tree_size),
    consistency_proof bytea[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- When the checkpoints topic took it (its Kafka transaction committed).
    published_at timestamptz,
    CONSTRAINT checkpoints_previous_once UNIQUE (previous_size)
);

-- Which hook (IPFS publication, timestamping...) finished with which checkpoint.
CREATE TABLE checkpoint_hooks (
    hook text NOT NULL CHECK (length(hook) BETWEEN 1 AND 64),
    tree_size bigint NOT NULL REFERENCES checkpoints (tree_size),
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hook, tree_size)
);

-- The log is append-only: what was written is never changed or removed.
CREATE FUNCTION refuse_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Merkle log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER leaves_append_only BEFORE UPDATE OR DELETE ON leaves
    FOR EACH ROW EXECUTE FUNCTION refuse_log_change();
CREATE TRIGGER leaves_no_truncate BEFORE TRUNCATE ON leaves
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_change();
CREATE TRIGGER tree_nodes_append_only BEFORE UPDATE OR DELETE ON tree_nodes
    FOR EACH ROW EXECUTE FUNCTION refuse_log_change();
CREATE TRIGGER tree_nodes_no_truncate BEFORE TRUNCATE ON tree_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_log_change();
