"""Reading the dead-letter topic for the tools: ``dlq list``, and the plumbing ``dlq replay``
shares (its partitions, where a ``--since`` starts, a bounded scan, Kafka errors as ours).

:func:`list_dead_letters` reads the dead-letter topic from its start (or ``since``) to its end
as it was when called, outside any consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from daemon.dead_letters.letter import DeadLetterRecord, safe_message
from daemon.kafka import KafkaClients, fetch_limits
from daemon.settings import BOOTSTRAP_HINT, Settings
from handlers.errors import InvalidRequestError, PermanentError, TransientError

STALL_SECONDS = 30.0


class KafkaUnavailableError(TransientError):
    """The broker could not be reached or refused a request."""

    stage = "source"


class TopicMissingError(PermanentError):
    """A topic the command needs does not exist (and topics are not auto-created)."""

    stage = "source"


@dataclass(frozen=True)
class DlqFilter:
    """Which dead letters a command acts on; None matches everything."""

    stage: str | None = None
    error_class: str | None = None
    collection: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: DeadLetterRecord) -> bool:
        if self.stage is not None and letter.stage != self.stage:
            return False
        if self.error_class is not None and letter.error_class != self.error_class:
            return False
        if self.collection is not None and letter.collection_id != self.collection:
            return False
        if self.since is not None and letter.time < self.since:
            return False
        return self.until is None or letter.time <= self.until


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-24T10:00:00Z``, ``2026-11-24`` (UTC), or an age like ``90m``, ``2h``, ``3d``."""
    value = text.strip()
    relative = _RELATIVE.match(value.lower())
    if relative:
        seconds = float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"cannot read the time {text!r}: use ISO 8601 (2026-11-24T10:00Z) or an age (2h, 3d)"
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


# -- Kafka plumbing ---------------------------------------------------------------------------


def dlq_clients(settings: Settings) -> KafkaClients:
    return KafkaClients.of(settings, "akisnap-dlq")


def dlq_consumer(settings: Settings, group_id: str | None) -> Any:
    return dlq_clients(settings).consumer(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **fetch_limits(settings.max_message_bytes),
    )


@contextlib.asynccontextmanager
async def kafka_errors(settings: Settings, action: str) -> AsyncIterator[None]:
    try:
        yield
    except KafkaError as err:
        reason = safe_message(f"{type(err).__name__}: {err}")
        raise KafkaUnavailableError(
            f"{action}: Kafka at {settings.kafka_bootstrap} failed ({reason}); {BOOTSTRAP_HINT}"
        ) from None


async def partitions_of(admin: Any, topic: str, *, must_exist: Sequence[str] = ()) -> list[Any]:
    """The topic's partitions; TopicMissingError for it or any of ``must_exist``."""
    names = [topic, *(name for name in must_exist if name != topic)]
    described = {entry["topic"]: entry for entry in await admin.describe_topics(names)}
    for name in names:
        entry = described.get(name)
        if entry is None or entry.get("error_code") or not entry.get("partitions"):
            raise TopicMissingError(f"topic {name!r} does not exist on the broker")
    partitions = sorted(int(item["partition"]) for item in described[topic]["partitions"])
    return [TopicPartition(topic, p) for p in partitions]


async def since_offsets(
    consumer: Any, tps: Sequence[Any], since: datetime | None, ends: Mapping[Any, int]
) -> dict[Any, int]:
    if since is None:
        return {tp: int(offset) for tp, offset in (await consumer.beginning_offsets(tps)).items()}
    millis = int(since.timestamp() * 1000)
    found = await consumer.offsets_for_times(dict.fromkeys(tps, millis))
    return {tp: ends[tp] if found.get(tp) is None else int(found[tp].offset) for tp in tps}


async def scan(
    consumer: Any, starts: Mapping[Any, int], ends: Mapping[Any, int]
) -> AsyncGenerator[Any, None]:
    """Every record from ``starts`` up to (not including) ``ends``, in order per partition."""
    pending = set()
    for tp, start in starts.items():
        if start < ends[tp]:
            consumer.seek(tp, start)
            pending.add(tp)
    last_progress = asyncio.get_running_loop().time()
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                last_progress = asyncio.get_running_loop().time()
                yield record
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        if pending and asyncio.get_running_loop().time() - last_progress > STALL_SECONDS:
            left = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
            raise KafkaUnavailableError(f"reading {left} made no progress for {STALL_SECONDS}s")


# -- list -------------------------------------------------------------------------------------


async def list_dead_letters(
    settings: Settings, where: DlqFilter | None = None, *, limit: int | None = None
) -> list[DeadLetterRecord]:
    """The matching dead letters (the first ``limit`` found), oldest first."""
    where = where or DlqFilter()
    found: list[DeadLetterRecord] = []
    consumer = dlq_consumer(settings, group_id=None)
    admin = dlq_clients(settings).admin()
    async with kafka_errors(settings, f"reading {settings.dlq_topic}"):
        try:
            await admin.start()
            tps = await partitions_of(admin, settings.dlq_topic)
            await consumer.start()
            consumer.assign(tps)
            ends = {tp: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
            starts = await since_offsets(consumer, tps, where.since, ends)
            async with contextlib.aclosing(scan(consumer, starts, ends)) as records:
                async for record in records:
                    letter = DeadLetterRecord.from_record(record)
                    if where.matches(letter):
                        found.append(letter)
                        if limit is not None and len(found) >= limit:
                            break
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
    return sorted(found, key=lambda d: (d.timestamp_ms, d.partition, d.offset))
