"""The one place Kafka clients are built: the daemon, the dlq and request tools, the demo, bench.

Every client gets the same connection settings (bootstrap, client id, security from
``Settings.kafka_security_kwargs``); the option sets shared by several callers are named here so
that a producer that must not lose or repeat a message, or a consumer that must fetch the
largest allowed request, is configured the same way wherever it is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from daemon.settings import Settings

MIB = 1024 * 1024

# acks from every in-sync replica and no duplicate on a retried send: a result, a dead letter or
# a replayed request is written once, or the send fails.
DURABLE = {"acks": "all", "enable_idempotence": True}


def fetch_limits(max_message_bytes: int) -> dict[str, int]:
    """Fetch sizes that let a consumer read the largest message the settings allow."""
    per_partition = max(MIB, max_message_bytes + 64 * 1024)
    return {
        "max_partition_fetch_bytes": per_partition,
        "fetch_max_bytes": max(50 * MIB, per_partition),
    }


def request_size_for(max_message_bytes: int) -> int:
    """A producer's max_request_size for messages up to ``max_message_bytes`` plus headers."""
    return max(MIB, max_message_bytes + MIB)


@dataclass(frozen=True)
class KafkaClients:
    """Builds producers, consumers and admin clients sharing one connection configuration."""

    bootstrap: str
    security: Mapping[str, Any] = field(default_factory=dict)
    client_id: str | None = None

    @classmethod
    def of(cls, settings: Settings, client_id: str | None = None) -> KafkaClients:
        return cls(settings.kafka_bootstrap, settings.kafka_security_kwargs(), client_id)

    def _connection(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bootstrap_servers": self.bootstrap, **self.security}
        if self.client_id is not None:
            out["client_id"] = self.client_id
        return out

    def producer(self, **options: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self._connection(), **options)

    def consumer(self, **options: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(**self._connection(), **options)

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self._connection(), **options)
