"""Dead letters for operators: read them (filtered), and replay them to the request topic.

:func:`list_dead_letters` reads the dead-letter topic from its start (or ``since``) to its end
as it was when called, outside any consumer group.

:class:`Replayer` re-publishes each matching dead letter's key and value untouched to the
request topic, with ``akisnap.replay.count`` one higher than the dead letter carried, and
refuses one whose count has reached the maximum (a poison message cannot loop forever). Its
progress lives in its own consumer group (``akisnap-dlq-replay``), committed after every
message: the committed offset of a partition is its first dead letter not yet replayed, and the
offset's metadata lists the dead letters beyond it that were replayed already. So a filtered
replay (``--stage upload``) leaves the others for a later run, and running twice never
replays one twice. A crash between publishing and committing can replay that one message
again, which the daemon's idempotent snapshots absorb (same request id, same snapshot).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from daemon.dead_letter import (
    H_ATTEMPTS,
    H_CLASS,
    H_FAILED_AT,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_REPLAY_COUNT,
    H_RETRYABLE,
    H_STAGE,
    H_TOPIC,
    safe_message,
)
from daemon.events import peek_ids
from daemon.kafka import DURABLE, KafkaClients, fetch_limits, request_size_for
from daemon.replay_defaults import (
    DEFAULT_MAX_REPLAYS,
    DEFAULT_RATE_PER_SECOND,
    DEFAULT_REPLAY_GROUP,
)
from daemon.settings import BOOTSTRAP_HINT, Settings
from handlers.errors import InvalidRequestError, PermanentError, TransientError

PROGRESS_FORMAT = "akisnap-dlq/1"
# Brokers refuse commit metadata above offset.metadata.max.bytes (default 4096).
MAX_PROGRESS_CHARS = 3500
STALL_SECONDS = 30.0

Action = Literal["replayed", "would_replay", "refused", "deferred"]


class KafkaUnavailableError(TransientError):
    """The broker could not be reached or refused a request."""

    stage = "source"


class TopicMissingError(PermanentError):
    """A topic the command needs does not exist (and topics are not auto-created)."""

    stage = "source"


# -- one dead letter --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterRecord:
    """A record of the dead-letter topic, with its headers read."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def from_record(cls, record: Any) -> DeadLetterRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=int(record.timestamp),
            key=record.key,
            value=record.value,
            headers=tuple((str(k), bytes(v)) for k, v in record.headers or ()),
        )

    def header(self, name: str) -> str | None:
        """The header's text (the last one of that name wins), or None."""
        found: str | None = None
        for key, raw in self.headers:
            if key == name:
                found = raw.decode("utf-8", "replace")
        return found

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    @property
    def stage(self) -> str:
        return self.header(H_STAGE) or "?"

    @property
    def error_class(self) -> str:
        return self.header(H_CLASS) or "?"

    @property
    def message(self) -> str:
        return self.header(H_MESSAGE) or ""

    @property
    def replay_count(self) -> int:
        text = self.header(H_REPLAY_COUNT)
        try:
            return max(0, int(text)) if text is not None else 0
        except ValueError:
            return 0

    @property
    def collection_id(self) -> str | None:
        if self.key:
            return self.key.decode("utf-8", "replace")
        return peek_ids(self.value).get("collection_id")

    @property
    def request_id(self) -> str | None:
        return peek_ids(self.value).get("request_id")

    @property
    def original(self) -> str:
        """``topic[partition]@offset`` of the request that failed."""
        topic, partition, offset = (self.header(h) for h in (H_TOPIC, H_PARTITION, H_OFFSET))
        return f"{topic or '?'}[{partition or '?'}]@{offset or '?'}"

    @property
    def position(self) -> str:
        return f"{self.partition}@{self.offset}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dlq_topic": self.topic,
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "time": self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "failed_at": self.header(H_FAILED_AT),
            "stage": self.stage,
            "error_class": self.error_class,
            "message": self.message,
            "retryable": self.header(H_RETRYABLE) == "true",
            "attempts": _int_or_none(self.header(H_ATTEMPTS)),
            "collection_id": self.collection_id,
            "request_id": self.request_id,
            "original_topic": self.header(H_TOPIC),
            "original_partition": _int_or_none(self.header(H_PARTITION)),
            "original_offset": _int_or_none(self.header(H_OFFSET)),
            "replay_count": self.replay_count,
            "value_bytes": len(self.value or b""),
        }


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


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


def _clients(settings: Settings) -> KafkaClients:
    return KafkaClients.of(settings, "akisnap-dlq")


def _consumer(settings: Settings, group_id: str | None) -> Any:
    return _clients(settings).consumer(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **fetch_limits(settings.max_message_bytes),
    )


@contextlib.asynccontextmanager
async def _kafka(settings: Settings, action: str) -> AsyncIterator[None]:
    try:
        yield
    except KafkaError as err:
        reason = safe_message(f"{type(err).__name__}: {err}")
        raise KafkaUnavailableError(
            f"{action}: Kafka at {settings.kafka_bootstrap} failed ({reason}); {BOOTSTRAP_HINT}"
        ) from None


async def _partitions(admin: Any, topic: str, *, must_exist: Sequence[str] = ()) -> list[Any]:
    """The topic's partitions; TopicMissingError for it or any of ``must_exist``."""
    names = [topic, *(name for name in must_exist if name != topic)]
    described = {entry["topic"]: entry for entry in await admin.describe_topics(names)}
    for name in names:
        entry = described.get(name)
        if entry is None or entry.get("error_code") or not entry.get("partitions"):
            raise TopicMissingError(f"topic {name!r} does not exist on the broker")
    partitions = sorted(int(item["partition"]) for item in described[topic]["partitions"])
    return [TopicPartition(topic, p) for p in partitions]


async def _since_offsets(
    consumer: Any, tps: Sequence[Any], since: datetime | None, ends: Mapping[Any, int]
) -> dict[Any, int]:
    if since is None:
        return {tp: int(offset) for tp, offset in (await consumer.beginning_offsets(tps)).items()}
    millis = int(since.timestamp() * 1000)
    found = await consumer.offsets_for_times(dict.fromkeys(tps, millis))
    return {tp: ends[tp] if found.get(tp) is None else int(found[tp].offset) for tp in tps}


async def _scan(
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
    consumer = _consumer(settings, group_id=None)
    admin = _clients(settings).admin()
    async with _kafka(settings, f"reading {settings.dlq_topic}"):
        try:
            await admin.start()
            tps = await _partitions(admin, settings.dlq_topic)
            await consumer.start()
            consumer.assign(tps)
            ends = {tp: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
            starts = await _since_offsets(consumer, tps, where.since, ends)
            async with contextlib.aclosing(_scan(consumer, starts, ends)) as records:
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


# -- replay progress --------------------------------------------------------------------------
# Deterministic snapshot ids make a second replay of a request that then succeeded harmless (a
# "duplicate" result). They do not cover a request that fails again: its new dead letter joins
# the old one on the topic, so a replay that forgot its progress would re-send the old one on
# every run, each run adding one more dead letter (the replay count only bounds each copy).
# The committed offset alone would do for an unfiltered replay; the handled ranges exist for a
# filtered one (``--stage upload``), which must skip what it replayed above a dead letter it
# left behind for a later run.


@dataclass
class PartitionProgress:
    """One partition's replay progress: everything below ``committed`` is done, and so are the
    offsets in ``handled`` (inclusive ranges) above it."""

    committed: int
    handled: list[list[int]] = field(default_factory=list)
    start: int = 0
    scanned_to: int = 0
    first_unhandled: int | None = None

    def begin(self, start: int) -> None:
        self.start = self.scanned_to = max(start, self.committed)

    def is_handled(self, offset: int) -> bool:
        index = bisect.bisect_right(self.handled, offset, key=lambda r: r[0]) - 1
        return index >= 0 and self.handled[index][0] <= offset <= self.handled[index][1]

    def saw(self, offset: int, *, handled: bool) -> None:
        if handled and not self.is_handled(offset):
            _add(self.handled, offset)
        elif not handled and self.first_unhandled is None:
            self.first_unhandled = offset
        self.scanned_to = max(self.scanned_to, offset + 1)

    def finished(self, end: int) -> None:
        self.scanned_to = max(self.scanned_to, end)

    def commit_point(self) -> tuple[int, str]:
        if self.start > self.committed:
            low = self.committed
        elif self.first_unhandled is not None:
            low = self.first_unhandled
        else:
            low = self.scanned_to
        _clip(self.handled, low)
        return low, encode_progress(low, self.handled)

    def room_for(self, offset: int) -> bool:
        """Whether the commit metadata still fits once ``offset`` is handled too."""
        trial = PartitionProgress(
            self.committed,
            [list(r) for r in self.handled],
            self.start,
            self.scanned_to,
            self.first_unhandled,
        )
        trial.saw(offset, handled=True)
        return len(trial.commit_point()[1]) <= MAX_PROGRESS_CHARS


def _add(ranges: list[list[int]], offset: int) -> None:
    if ranges and ranges[-1][1] + 1 == offset:
        ranges[-1][1] = offset
        return
    bisect.insort(ranges, [offset, offset])
    merged: list[list[int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    ranges[:] = merged


def _clip(ranges: list[list[int]], low: int) -> None:
    kept = [[max(lo, low), hi] for lo, hi in ranges if hi >= low]
    ranges[:] = kept


def encode_progress(low: int, ranges: Sequence[Sequence[int]]) -> str:
    """``akisnap-dlq/1 3-7,9``: handled offsets above the committed one, relative to it."""
    parts = [
        f"{lo - low}" if lo == hi else f"{lo - low}-{hi - low}" for lo, hi in ranges if hi >= low
    ]
    return f"{PROGRESS_FORMAT} {','.join(parts)}".rstrip()


def decode_progress(committed: int, metadata: str | None) -> list[list[int]]:
    """The inverse of :func:`encode_progress`; anything unreadable means 'nothing beyond'."""
    if not metadata or not metadata.startswith(PROGRESS_FORMAT):
        return []
    ranges: list[list[int]] = []
    try:
        for item in metadata[len(PROGRESS_FORMAT) :].strip().split(","):
            if not item:
                continue
            lo, _, hi = item.partition("-")
            ranges.append([committed + int(lo), committed + int(hi or lo)])
    except ValueError:
        return []
    return sorted(ranges)


# -- replay -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    where: DlqFilter = field(default_factory=DlqFilter)
    limit: int | None = None
    max_replays: int = DEFAULT_MAX_REPLAYS
    rate_per_second: float = DEFAULT_RATE_PER_SECOND
    dry_run: bool = False
    group_id: str = DEFAULT_REPLAY_GROUP

    def __post_init__(self) -> None:
        if self.max_replays < 0:
            raise InvalidRequestError("--max-replays must be >= 0")
        if self.rate_per_second < 0:
            raise InvalidRequestError("--rate must be >= 0 (0: no limit)")
        if self.limit is not None and self.limit < 1:
            raise InvalidRequestError("--limit must be >= 1")


@dataclass(frozen=True)
class ReplayAction:
    letter: DeadLetterRecord
    action: Action
    replay_count: int
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.letter.to_dict(),
            "action": self.action,
            "new_replay_count": self.replay_count,
            "reason": self.reason,
        }


@dataclass
class ReplayReport:
    group_id: str
    dry_run: bool
    actions: list[ReplayAction] = field(default_factory=list)
    already_replayed: int = 0
    """Replayed by earlier runs of the group (below its committed offsets, or recorded above)."""
    not_matching: int = 0
    scanned: int = 0

    def count(self, action: Action) -> int:
        return sum(1 for item in self.actions if item.action == action)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "already_replayed": self.already_replayed,
            "not_matching": self.not_matching,
            **{name: self.count(name) for name in ("replayed", "would_replay", "refused")},
            "deferred": self.count("deferred"),
            "actions": [item.to_dict() for item in self.actions],
        }


class ReplayObserver:
    """Hooks for the CLI (progress bar, one line per message); the defaults do nothing."""

    def started(self, total: int) -> None:
        """``total`` dead letters lie between the group's progress and the topic's end."""

    def scanned(self) -> None:
        """One more dead letter was looked at."""

    def acted(self, action: ReplayAction) -> None:
        """A matching dead letter was replayed, refused or deferred."""


class _Pace:
    """At most ``rate`` sends per second (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        if now < self._next:
            await asyncio.sleep(self._next - now)
            now = self._next
        self._next = now + self._interval


class Replayer:
    """Replays dead letters of ``settings.dlq_topic`` to ``settings.request_topic``."""

    def __init__(
        self,
        settings: Settings,
        options: ReplayOptions | None = None,
        observer: ReplayObserver | None = None,
    ) -> None:
        self._settings = settings
        self._options = options or ReplayOptions()
        self._observer = observer or ReplayObserver()
        self._pace = _Pace(self._options.rate_per_second)

    async def __call__(self) -> ReplayReport:
        s, o = self._settings, self._options
        report = ReplayReport(group_id=o.group_id, dry_run=o.dry_run)
        consumer = _consumer(s, group_id=o.group_id)
        admin = _clients(s).admin()
        producer = None
        if not o.dry_run:
            producer = _clients(s).producer(
                **DURABLE, max_request_size=request_size_for(s.max_message_bytes)
            )
        async with _kafka(s, f"replaying {s.dlq_topic} to {s.request_topic}"):
            try:
                await consumer.start()
                await admin.start()
                if producer is not None:
                    await producer.start()
                await self._replay(consumer, admin, producer, report)
            finally:
                for client in (producer, consumer):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.stop()
                with contextlib.suppress(Exception):
                    await admin.close()
        return report

    async def _replay(self, consumer: Any, admin: Any, producer: Any, report: ReplayReport) -> None:
        s, o = self._settings, self._options
        tps = await _partitions(admin, s.dlq_topic, must_exist=[s.request_topic])
        consumer.assign(tps)
        ends = {tp: int(offset) for tp, offset in (await consumer.end_offsets(tps)).items()}
        progress = await self._load_progress(consumer, admin, tps)
        since = await _since_offsets(consumer, tps, o.where.since, ends)
        for tp in tps:
            # everything below the committed offset was replayed by earlier runs
            report.already_replayed += max(0, progress[tp].committed - since[tp])
            progress[tp].begin(since[tp])
        starts = {tp: progress[tp].start for tp in tps}
        self._observer.started(sum(max(0, ends[tp] - starts[tp]) for tp in tps))
        matched = 0
        stopped = False
        async with contextlib.aclosing(_scan(consumer, starts, ends)) as records:
            async for record in records:
                tp = TopicPartition(record.topic, record.partition)
                state = progress[tp]
                if state.is_handled(record.offset):
                    report.already_replayed += 1
                    state.saw(record.offset, handled=True)
                    self._tick(report)
                    continue
                letter = DeadLetterRecord.from_record(record)
                if not o.where.matches(letter):
                    report.not_matching += 1
                    state.saw(record.offset, handled=False)
                    self._tick(report)
                    continue
                if o.limit is not None and matched >= o.limit:
                    stopped = True
                    break
                matched += 1
                action = await self._act(letter, state, producer)
                report.actions.append(action)
                self._tick(report)
                self._observer.acted(action)
                if action.action == "replayed":
                    await self._commit(consumer, {tp: state})
        if not stopped:
            for tp in tps:
                progress[tp].finished(ends[tp])
        if not o.dry_run:
            await self._commit(consumer, progress)

    def _tick(self, report: ReplayReport) -> None:
        report.scanned += 1
        self._observer.scanned()

    async def _act(
        self, letter: DeadLetterRecord, state: PartitionProgress, producer: Any
    ) -> ReplayAction:
        o = self._options
        count = letter.replay_count
        if count >= o.max_replays:
            state.saw(letter.offset, handled=False)
            return ReplayAction(
                letter,
                "refused",
                count,
                f"replayed {count} time(s) already; the maximum is {o.max_replays}",
            )
        if o.dry_run:
            state.saw(letter.offset, handled=False)
            return ReplayAction(letter, "would_replay", count + 1)
        if not state.room_for(letter.offset):
            state.saw(letter.offset, handled=False)
            return ReplayAction(
                letter,
                "deferred",
                count,
                "too many dead letters left behind before it in this partition for the "
                "progress record; replay the ones before it (or use another --group)",
            )
        await self._pace.wait()
        await producer.send_and_wait(
            self._settings.request_topic,
            value=letter.value,
            key=letter.key,
            headers=[(H_REPLAY_COUNT, str(count + 1).encode())],
        )
        state.saw(letter.offset, handled=True)
        return ReplayAction(letter, "replayed", count + 1)

    async def _load_progress(
        self, consumer: Any, admin: Any, tps: Sequence[Any]
    ) -> dict[Any, PartitionProgress]:
        beginnings = await consumer.beginning_offsets(tps)
        committed = await admin.list_consumer_group_offsets(self._options.group_id, partitions=tps)
        progress: dict[Any, PartitionProgress] = {}
        for tp in tps:
            start = int(beginnings[tp])
            entry = committed.get(tp)
            offset = int(entry.offset) if entry is not None else -1
            if offset < start:
                progress[tp] = PartitionProgress(committed=start)
                if offset >= 0:  # the log start moved past our progress: begin there
                    ranges = decode_progress(offset, entry.metadata)
                    _clip(ranges, start)
                    progress[tp].handled = ranges
            else:
                progress[tp] = PartitionProgress(offset, decode_progress(offset, entry.metadata))
        return progress

    async def _commit(self, consumer: Any, progress: Mapping[Any, PartitionProgress]) -> None:
        offsets = {tp: state.commit_point() for tp, state in progress.items()}
        await consumer.commit(offsets)
