"""Publishing requests (``akisnap request``, the demo): acknowledged, one by one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.kafka import DURABLE, MIB, KafkaClients
from daemon.settings import Settings


@dataclass(frozen=True)
class Placed:
    """Where a published message landed, and when the broker acknowledged it."""

    partition: int
    offset: int
    acked_at: float


async def publish(
    settings: Settings, messages: Sequence[tuple[bytes, bytes]], *, topic: str | None = None
) -> list[Placed]:
    """Publish (key, value) pairs to the request topic, one by one, acknowledged."""
    largest = max((len(value) for _, value in messages), default=0)
    producer = KafkaClients.of(settings).producer(
        **DURABLE, compression_type="gzip", max_request_size=max(MIB, largest + 64 * 1024)
    )
    try:
        await producer.start()
        placed = []
        for key, value in messages:
            meta = await producer.send_and_wait(
                topic or settings.request_topic, value=value, key=key
            )
            placed.append(Placed(int(meta.partition), int(meta.offset), time.monotonic()))
        return placed
    finally:
        await producer.stop()
