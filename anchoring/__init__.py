"""Merkle log, checkpoints, IPFS and Bitcoin publication.

The Merkle log's core (tree, proofs, checkpoints, bundles, CIDs) is
``ledger.tlog``, shared with the ingress and the auditor. Here::

    ipfs        publishing to Kubo's RPC, refusing a CID that differs from ours
    bitcoin     btcd JSON-RPC and the OP_RETURN stamping transaction (python-bitcoinlib)
    timestamps  OpenTimestamps proofs: direct from a regtest block, or from calendars
    pgstore     the tree in Postgres: leaves, nodes, positions and checkpoints together
    writer      chunks, the checkpoint cadence, hooks (no Kafka, no Postgres)
    publication checkpoints as records of the checkpoints topic
    worker      ``python -m anchoring.worker``: consume the ledger topics, append, checkpoint
    commands    ``payledger anchoring migrate|run``
"""
