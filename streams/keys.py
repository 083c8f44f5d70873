"""The stream worker's ``ledger.keyfeed.KeysFollower``, on an aiokafka consumer."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from ledger.config import Settings
from ledger.keyfeed import KeysConsumer, KeysFollower, keys_consumer_options
from ledger.topics import TopicRole, topic_name
from ledger.verify import Verifier


def keys_follower(settings: Settings, verifier: Verifier) -> KeysFollower:
    topic = topic_name(settings, TopicRole.KEYS)

    def new_consumer() -> KeysConsumer:
        consumer: KeysConsumer = AIOKafkaConsumer(
            topic, **keys_consumer_options(settings, client_id="payledger-streams-keys")
        )
        return consumer

    return KeysFollower(topic, verifier, new_consumer)
