"""Merkle log, checkpoints, IPFS and Bitcoin publication.

Modules, from the pure core outwards::

    leaf        the canonical bytes of one leaf (topic, partition, offset, event id, value digest)
    merkle      RFC 9162 hashing and the proof verifiers                      (pure)
    store       the storage interface of the tree; the in-memory store
    tree        the append-only log: appends, past roots, inclusion and consistency proofs
    note        C2SP signed notes: Ed25519 and ML-DSA-87 signature lines        (pure)
    checkpoint  C2SP checkpoints, hybrid signing and verification, log growth   (pure)
    keys        the anchoring key pair under the state directory
    bundle      the leaves of one checkpoint as bytes an auditor recomputes the tree from
    cid         CIDv1 of bytes published as an IPFS file (raw 256 KiB leaves, dag-pb index)
    ipfs        publishing to Kubo's RPC, refusing a CID that differs from ours
    bitcoin     btcd JSON-RPC and the OP_RETURN stamping transaction (python-bitcoinlib)
    timestamps  OpenTimestamps proofs: direct from a regtest block, or from calendars
    pgstore     the tree in Postgres: leaves, nodes, positions and checkpoints together
    writer      chunks, the checkpoint cadence, hooks (no Kafka, no Postgres)
    publication checkpoints as records of the checkpoints topic
    worker      ``python -m anchoring.worker``: consume the ledger topics, append, checkpoint
    commands    ``payledger anchoring migrate|run``
    errors      AnchoringError and its subclasses
    limits      the limits of all of the above
"""
