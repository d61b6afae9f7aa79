"""Publishing what became of a request: a result event, or a dead letter.

Both go through the one idempotent producer (``acks=all``) and are awaited: a send counts
only once the broker has acknowledged it, and only then may the request's offset be committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
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

from daemon.dead_letter import DeadLetter, Headers
from daemon.events import SnapshotResultV1, build_result, parse_result, peek_ids
from daemon.settings import Settings
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


# -- reading outcomes back (akisnap request --wait, the demo, the tests) -----------------------


@dataclass(frozen=True)
class Outcome:
    """What became of one request: a result event, or a dead letter."""

    request_id: str
    status: str  # "created", "duplicate" or "dead_lettered"
    result: SnapshotResultV1 | None = None
    dead_letter: DeadLetter | None = None
    seen_at: float = field(default_factory=time.monotonic)


class OutcomeWatcher:
    """Reads the result and dead-letter topics from their current end (no consumer group).

    Enter it *before* publishing requests: the end offsets are fixed on entry, so nothing
    published after that is missed."""

    def __init__(
        self,
        bootstrap: str,
        *,
        result_topic: str,
        dlq_topic: str,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = (result_topic, dlq_topic)
        self._result_topic = result_topic
        self._security = dict(security or {})
        self._consumer: Any = None
        self.outcomes: dict[str, Outcome] = {}

    async def __aenter__(self) -> OutcomeWatcher:
        partitions = await topic_partitions(self._bootstrap, self._topics, self._security)
        tps = [TopicPartition(t, p) for t, found in partitions.items() for p in sorted(found)]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **self._security,
        )
        try:
            await consumer.start()
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the end offsets now, before anything is published
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def wait_for(
        self, request_ids: Iterable[str], within: float, *, at_least: int | None = None
    ) -> dict[str, Outcome]:
        """The outcomes of ``request_ids`` seen within ``within`` seconds (maybe not all);
        with ``at_least``, return as soon as that many of them are known."""
        wanted = set(request_ids)
        enough = len(wanted) if at_least is None else min(at_least, len(wanted))
        deadline = time.monotonic() + within
        while len(wanted & self.outcomes.keys()) < enough:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batches = await self._consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
            for tp, records in batches.items():
                for record in records:
                    outcome = self._outcome(tp.topic, record)
                    if outcome is not None:
                        self.outcomes.setdefault(outcome.request_id, outcome)
        return {rid: self.outcomes[rid] for rid in wanted if rid in self.outcomes}

    def _outcome(self, topic: str, record: Any) -> Outcome | None:
        if topic == self._result_topic:
            try:
                result = parse_result(record.value)
            except Exception:
                return None
            return Outcome(result.request_id, result.status, result=result)
        request_id = peek_ids(record.value).get("request_id")
        if request_id is None:
            return None
        letter = DeadLetter(record.key, record.value, list(record.headers or ()))
        return Outcome(request_id, "dead_lettered", dead_letter=letter)


async def topic_partitions(
    bootstrap: str, topics: Iterable[str], security: Mapping[str, Any] | None = None
) -> dict[str, set[int]]:
    """The partitions of each topic (LookupError when a topic does not exist)."""
    probe = AIOKafkaProducer(bootstrap_servers=bootstrap, **dict(security or {}))
    try:
        await probe.start()
        found: dict[str, set[int]] = {}
        for topic in topics:
            try:
                found[topic] = set(await probe.partitions_for(topic))
            except KafkaTimeoutError:
                raise LookupError(f"topic {topic!r} does not exist on the broker") from None
        return found
    finally:
        await probe.stop()


# -- publishing requests (akisnap request, the demo) ------------------------------------------

MIB = 1024 * 1024


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
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="gzip",
        max_request_size=max(MIB, largest + 64 * 1024),
        **settings.kafka_security_kwargs(),
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
