"""Merkle log, checkpoints, IPFS and Bitcoin publication.

Modules, from the pure core outwards::

    leaf        the canonical bytes of one leaf (topic, partition, offset, event id, value digest)
    merkle      RFC 9162 hashing and the proof verifiers                      (pure)
    store       the storage interface of the tree; the in-memory store
    tree        the append-only log: appends, past roots, inclusion and consistency proofs
    note        C2SP signed notes: Ed25519 and ML-DSA-87 signature lines        (pure)
    checkpoint  C2SP checkpoints, hybrid signing and verification, log growth   (pure)
    keys        the anchoring key pair under the state directory
    errors      AnchoringError and its subclasses
    limits      the limits of all of the above
"""
