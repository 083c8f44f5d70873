"""The limits of the anchoring core, with their unit last in each name.

They live here rather than in ``ledger.limits`` because they concern only the
Merkle log and its checkpoints; each is explained where it is decided.
"""

from __future__ import annotations

from typing import Final

# Kafka refuses topic names longer than 249 characters (ASCII only).
TOPIC_CHARS_MAX: Final = 249
# An event id is a UUID in its text form (36 characters); the margin admits
# the ids of records that failed validation and went to the rejected topic.
EVENT_ID_BYTES_MAX: Final = 128
# Kafka partitions and offsets are signed 32- and 64-bit integers.
PARTITION_MAX: Final = 2**31 - 1
OFFSET_MAX: Final = 2**63 - 1

# A tree of 2**63 leaves has proofs of at most 63 hashes; the checkpoint's
# size line and the store's indexes are bounded by the same number.
TREE_SIZE_MAX: Final = 2**63 - 1
PROOF_HASHES_MAX: Final = 63
# Leaves appended in one call, written to the store in one step (one
# transaction for a database-backed store).
APPEND_BATCH_LEAVES_MAX: Final = 1_048_576

# Signed notes. signed-note requires verifiers to accept at least 16
# signatures; an ML-DSA-87 line is about 6.2 kB of base64.
NOTE_SIGNATURES_MAX: Final = 16
NOTE_BYTES_MAX: Final = 131_072
KEY_NAME_CHARS_MAX: Final = 255
CHECKPOINT_EXTENSION_LINES_MAX: Final = 16
