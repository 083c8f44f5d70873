"""The transparency log: RFC 9162 Merkle tree, its proofs, and signed checkpoints.

Shared by the anchoring worker that writes the log, the ingress that serves
its proofs, and the auditor that checks them; pure apart from the key files.
Modules, from the pure core outwards::

    leaf        the canonical bytes of one leaf (topic, partition, offset, event id, value digest)
    merkle      RFC 9162 hashing and the proof verifiers                      (pure)
    store       the storage interface of the tree; the in-memory store
    tree        the append-only log: appends, past roots, inclusion and consistency proofs
    note        C2SP signed notes: Ed25519 and ML-DSA-87 signature lines        (pure)
    checkpoint  C2SP checkpoints, hybrid signing and verification, log growth   (pure)
    bundle      the leaves of one checkpoint as bytes an auditor recomputes the tree from
    cid         CIDv1 of bytes published as an IPFS file (raw 256 KiB leaves, dag-pb index)
    keys        the anchoring key pair under the state directory
    errors      AnchoringError and its subclasses
    limits      the limits of all of the above
"""
