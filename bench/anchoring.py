"""Merkle log throughput, each figure beside its limit measured in the same run.

1. leaves appended per second (leaf hash + interior nodes + store) vs raw hashlib
   SHA-256 of the same leaf bytes, once each: the limit (target: >= 200,000 leaves/s
   and >= 0.3x of the limit)
2. inclusion and consistency proofs generated and verified per second, at the full
   size, vs raw hashlib SHA-256 of as many 65-byte node inputs as a proof verification
   hashes (the limit of verification)

Usage: python bench/anchoring.py [--count N] [--proofs N]
Figures only: this script asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))

from ledger.tlog.leaf import LeafRecord
from ledger.tlog.merkle import verify_consistency, verify_inclusion
from ledger.tlog.tree import MerkleTree

REPEATS = 3


def best_rate(count: int, run: Callable[[], None]) -> float:
    """Operations per second: the best of a few runs, so noise from a shared machine hurts least."""
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - started))
    return max(rates)


def line(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"  {name:<48} {value:>12,.0f} {unit:<10} {note}")


def sample_records(count: int) -> list[LeafRecord]:
    topics = ["payledger.commands", "payledger.payment-events", "payledger.provider-events"]
    generator = random.Random(6)
    return [
        LeafRecord(
            topics[index % 3],
            index % 6,
            index // 6,
            str(
                uuid.UUID(int=generator.getrandbits(128), version=4)
            ),  # the same 36-character text as a UUIDv7
            hashlib.sha256(b"record %d" % index).digest(),
        )
        for index in range(count)
    ]


def bench_append(count: int) -> MerkleTree:
    records = sample_records(count)
    leaves = [record.to_bytes() for record in records]
    sha256 = hashlib.sha256

    def raw_hashlib() -> None:
        for leaf in leaves:
            sha256(leaf).digest()

    def encode_leaves() -> None:
        for record in records:
            record.to_bytes()

    def append_batch() -> None:
        MerkleTree().append_many(leaves)

    def append_one_by_one() -> None:
        tree = MerkleTree()
        for leaf in leaves:
            tree.append(leaf)

    limit = best_rate(count, raw_hashlib)
    batch = best_rate(count, append_batch)
    single = best_rate(count, append_one_by_one)
    encode = best_rate(count, encode_leaves)
    size = sum(map(len, leaves)) / count
    print(
        f"\nAppend, one core, {count:,} leaves of {size:.0f} bytes on average (best of {REPEATS})"
    )
    line("limit: raw hashlib SHA-256 of the leaf bytes", limit, "leaves/s")
    line(
        "payledger append_many (one batch)",
        batch,
        "leaves/s",
        f"ratio {batch / limit:.2f}x (target >= 0.3x and >= 200,000/s)",
    )
    line("payledger append (one call per leaf)", single, "leaves/s", f"ratio {single / limit:.2f}x")
    line("leaf bytes encoding (LeafRecord.to_bytes)", encode, "leaves/s")
    tree = MerkleTree()
    tree.append_many(leaves)
    return tree


def bench_proofs(tree: MerkleTree, count: int) -> None:
    size = tree.size
    generator = random.Random(9)
    indexes = [generator.randrange(size) for _ in range(count)]
    firsts = [generator.randrange(1, size) for _ in range(count)]
    root = tree.root()
    old_roots = [tree.root(first) for first in firsts]
    leaf_hashes = [tree.leaf_hash(index) for index in indexes]

    inclusion: list[list[bytes]] = []
    consistency: list[list[bytes]] = []

    def generate_inclusion() -> None:
        inclusion[:] = [tree.inclusion_proof(index) for index in indexes]

    def generate_consistency() -> None:
        consistency[:] = [tree.consistency_proof(first) for first in firsts]

    def verify_inclusions() -> None:
        for index, leaf, proof in zip(indexes, leaf_hashes, inclusion, strict=True):
            verify_inclusion(index, size, leaf, proof, root)

    def verify_consistencies() -> None:
        for first, old_root, proof in zip(firsts, old_roots, consistency, strict=True):
            verify_consistency(first, size, old_root, root, proof)

    inclusion_generated = best_rate(count, generate_inclusion)
    consistency_generated = best_rate(count, generate_consistency)
    inclusion_verified = best_rate(count, verify_inclusions)
    consistency_verified = best_rate(count, verify_consistencies)

    # Verification hashes one 65-byte node input per proof hash (a consistency
    # proof: up to two). The limit does exactly that many raw hashes.
    inclusion_hashes = sum(map(len, inclusion)) / count
    consistency_hashes = sum(2 * len(proof) for proof in consistency) / count
    node_inputs = [b"\x01" + bytes(64)] * 100_000
    sha256 = hashlib.sha256

    def raw_node_hashes() -> None:
        for data in node_inputs:
            sha256(data).digest()

    node_rate = best_rate(len(node_inputs), raw_node_hashes)
    print(
        f"\nProofs at size {size:,}, {count:,} random leaves and earlier sizes (best of {REPEATS}); "
        f"{inclusion_hashes:.1f} hashes per inclusion proof, {consistency_hashes / 2:.1f} per consistency proof"
    )
    line("raw hashlib SHA-256 of 65-byte node inputs", node_rate, "hashes/s")
    line("inclusion proofs generated", inclusion_generated, "proofs/s")
    inclusion_limit = node_rate / inclusion_hashes
    line(
        "inclusion proofs verified",
        inclusion_verified,
        "proofs/s",
        f"ratio {inclusion_verified / inclusion_limit:.2f}x of raw hashing of its nodes",
    )
    line("consistency proofs generated", consistency_generated, "proofs/s")
    consistency_limit = node_rate / consistency_hashes
    line(
        "consistency proofs verified",
        consistency_verified,
        "proofs/s",
        f"ratio {consistency_verified / consistency_limit:.2f}x of raw hashing of its nodes",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--proofs", type=int, default=20_000)
    arguments = parser.parse_args()
    tree = bench_append(arguments.count)
    bench_proofs(tree, arguments.proofs)
    print(f"\n(bench run {uuid.uuid4().hex[:8]}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
