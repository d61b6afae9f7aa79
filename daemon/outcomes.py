"""Reading outcomes back (``akisnap request --wait``, the demo, bench, the tests): the result
events and dead letters of requests, watched from the topics' end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from daemon.dead_letters.letter import DeadLetter
from daemon.events import SnapshotResultV1, parse_result, peek_ids
from daemon.kafka import KafkaClients

if TYPE_CHECKING:
    from daemon.settings import Settings


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

    @classmethod
    def for_settings(cls, settings: Settings) -> OutcomeWatcher:
        """The daemon's result and dead-letter topics, on its broker, with its security."""
        return cls(
            settings.kafka_bootstrap,
            result_topic=settings.result_topic,
            dlq_topic=settings.dlq_topic,
            security=settings.kafka_security_kwargs(),
        )

    async def __aenter__(self) -> OutcomeWatcher:
        partitions = await topic_partitions(self._bootstrap, self._topics, self._security)
        tps = [TopicPartition(t, p) for t, found in partitions.items() for p in sorted(found)]
        consumer = KafkaClients(self._bootstrap, self._security).consumer(
            group_id=None, enable_auto_commit=False
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
    probe = KafkaClients(bootstrap, dict(security or {})).producer()
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
