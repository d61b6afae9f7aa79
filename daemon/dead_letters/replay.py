"""``dlq replay``: re-publish dead letters to the request topic, at most once per replay group.

:class:`Replayer` re-publishes each matching dead letter's key and value untouched to the
request topic, with ``akisnap.replay.count`` one higher than the dead letter carried, and
refuses one whose count has reached the maximum (a poison message cannot loop forever). Its
progress lives in its own consumer group (``akisnap-dlq-replay``), committed after every
message (:mod:`daemon.dead_letters.progress`). So a filtered replay (``--stage upload``) leaves
the others for a later run, and running twice never replays one twice. A crash between
publishing and committing can replay that one message again, which the daemon's idempotent
snapshots absorb (same request id, same snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import TopicPartition

from daemon.dead_letters.defaults import (
    DEFAULT_MAX_REPLAYS,
    DEFAULT_RATE_PER_SECOND,
    DEFAULT_REPLAY_GROUP,
)
from daemon.dead_letters.letter import H_REPLAY_COUNT, DeadLetterRecord
from daemon.dead_letters.progress import PartitionProgress, clip, decode_progress
from daemon.dead_letters.reading import (
    DlqFilter,
    dlq_clients,
    dlq_consumer,
    kafka_errors,
    partitions_of,
    scan,
    since_offsets,
)
from daemon.kafka import DURABLE, request_size_for
from daemon.settings import Settings
from handlers.errors import InvalidRequestError

Action = Literal["replayed", "would_replay", "refused", "deferred"]


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
        consumer = dlq_consumer(s, group_id=o.group_id)
        admin = dlq_clients(s).admin()
        producer = None
        if not o.dry_run:
            producer = dlq_clients(s).producer(
                **DURABLE, max_request_size=request_size_for(s.max_message_bytes)
            )
        async with kafka_errors(s, f"replaying {s.dlq_topic} to {s.request_topic}"):
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
        tps = await partitions_of(admin, s.dlq_topic, must_exist=[s.request_topic])
        consumer.assign(tps)
        ends = {tp: int(offset) for tp, offset in (await consumer.end_offsets(tps)).items()}
        progress = await self._load_progress(consumer, admin, tps)
        since = await since_offsets(consumer, tps, o.where.since, ends)
        for tp in tps:
            # everything below the committed offset was replayed by earlier runs
            report.already_replayed += max(0, progress[tp].committed - since[tp])
            progress[tp].begin(since[tp])
        starts = {tp: progress[tp].start for tp in tps}
        self._observer.started(sum(max(0, ends[tp] - starts[tp]) for tp in tps))
        matched = 0
        stopped = False
        async with contextlib.aclosing(scan(consumer, starts, ends)) as records:
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
                    clip(ranges, start)
                    progress[tp].handled = ranges
            else:
                progress[tp] = PartitionProgress(offset, decode_progress(offset, entry.metadata))
        return progress

    async def _commit(self, consumer: Any, progress: Mapping[Any, PartitionProgress]) -> None:
        offsets = {tp: state.commit_point() for tp, state in progress.items()}
        await consumer.commit(offsets)
