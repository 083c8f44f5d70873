"""The topic roles of the design brief, as data: names and explicit configs.

Provisioning (in ``streams.provision``) creates exactly these and reports any
existing topic whose settings differ; nothing here talks to Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ledger.config import Settings


class TopicRole(StrEnum):
    COMMANDS = "commands"
    PROVIDER_EVENTS = "provider-events"
    PAYMENT_EVENTS = "payment-events"
    AUDIT_FACTS = "audit-facts"
    KEYS = "keys"
    CHECKPOINTS = "checkpoints"
    REJECTED = "rejected"


# Ledger topics are the system of record: they are never deleted by time or size.
_RETAIN_FOREVER = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
# The keys topic keeps the latest record per key id; old endorsements are never
# deleted by time either, only superseded by a newer record with the same key.
_COMPACTED = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "min.compaction.lag.ms": "0",
}

_CLEANUP: dict[TopicRole, dict[str, str]] = {
    TopicRole.COMMANDS: _RETAIN_FOREVER,
    TopicRole.PROVIDER_EVENTS: _RETAIN_FOREVER,
    TopicRole.PAYMENT_EVENTS: _RETAIN_FOREVER,
    TopicRole.AUDIT_FACTS: _RETAIN_FOREVER,
    TopicRole.KEYS: _COMPACTED,
    TopicRole.CHECKPOINTS: _RETAIN_FOREVER,
    TopicRole.REJECTED: _RETAIN_FOREVER,
}

# Topics whose records are ordered per payment need many partitions; the keys
# and checkpoints topics are small and read whole, one partition keeps their order.
_SINGLE_PARTITION = {TopicRole.KEYS, TopicRole.CHECKPOINTS}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    role: TopicRole
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


def topic_name(settings: Settings, role: TopicRole) -> str:
    return f"{settings.topic_prefix}{role.value}"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The full, explicit configuration of every payledger topic."""
    specs = []
    for role in TopicRole:
        configs = {
            **_CLEANUP[role],
            "min.insync.replicas": str(settings.topic_min_insync_replicas),
            "unclean.leader.election.enable": "false",
            "message.timestamp.type": "CreateTime",
            "max.message.bytes": "1048588",
        }
        specs.append(
            TopicSpec(
                role=role,
                name=topic_name(settings, role),
                partitions=1 if role in _SINGLE_PARTITION else settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                configs=configs,
            )
        )
    return specs
