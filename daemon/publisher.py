"""The daemon's publisher: what became of a request, as a result event or a dead letter.

Both go through the one idempotent producer (``acks=all``) and are awaited: a send counts
only once the broker has acknowledged it, and only then may the request's offset be committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
    RequestTimedOutError,
)

from daemon.dead_letters.letter import DeadLetter, Headers
from daemon.events import build_result
from handlers.create import CreateOutcome
from handlers.errors import BrokerUnavailableError
from handlers.job import SnapshotJob

# What a producer raises while no broker can take the record: the environment's fault.
_BROKER_DOWN = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    NotEnoughReplicasError,
)


class Producer(Protocol):
    """The part of aiokafka's AIOKafkaProducer used here."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any: ...


class TooLargeError(Exception):
    """The producer or the broker refuses a record as too large: sending it again cannot help."""


class Publisher:
    """Sends result events and dead letters; raises whatever the producer raises (a record
    refused for its size as :class:`TooLargeError`)."""

    def __init__(
        self, producer: Producer, *, result_topic: str, dlq_topic: str, store_root: str
    ) -> None:
        self._producer = producer
        self._result_topic = result_topic
        self._dlq_topic = dlq_topic
        self._store_root = store_root

    def result_value(
        self, job: SnapshotJob, outcome: CreateOutcome, durations: Mapping[str, float]
    ) -> bytes:
        return build_result(job, outcome, store_root=self._store_root, durations=dict(durations))

    async def result(self, job: SnapshotJob, value: bytes, headers: Headers | None = None) -> None:
        """Publish a result event (key = collection id, like the request), with the request's
        own headers (``traceparent`` ...)."""
        await self._producer.send_and_wait(
            self._result_topic, value=value, key=job.collection_id.encode(), headers=headers or None
        )

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Publish a dead letter: the original key and value untouched, plus its headers."""
        try:
            await self._producer.send_and_wait(
                self._dlq_topic, value=letter.value, key=letter.key, headers=letter.headers
            )
        except (MessageSizeTooLargeError, RecordTooLargeError) as err:
            raise TooLargeError(str(err)) from err


def broker_fault(err: BaseException) -> BrokerUnavailableError | None:
    """The environment fault a publishing error means, if it means the broker is unavailable."""
    if isinstance(err, _BROKER_DOWN):
        return BrokerUnavailableError(f"publishing failed: {type(err).__name__}: {err}")
    return None
