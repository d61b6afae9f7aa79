"""The consumer's failures surface: persistent fetch errors are counted, logged once per state
change and fail /healthz after the setting while other partitions are served; a background loop
that dies fails /healthz; the age of the oldest request in hand is known; the environment gate
pauses every partition.

A fake aiokafka consumer stands in for the broker here (the real-broker versions are in
tests/test_reliability.py); every moment is held with events, not sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import UnsupportedCodecError

from daemon import fetch_health
from daemon.app import Daemon
from daemon.consumer import ConsumerOptions, RequestConsumer
from daemon.dead_letters.letter import SourceRecord
from daemon.environment import EnvironmentGate
from daemon.health import Liveness
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.verdict import PublishStuckError, Settled, Verdict
from handlers.errors import StoreUnreachableError
from tests.daemon_support import sample
from tests.daemon_support import until as until_within
from tests.support import FakeRecord

TP0 = TopicPartition("requests", 0)
TP1 = TopicPartition("requests", 1)


class FakeConsumer:
    """Serves queued records; ``failing`` fetches raise instead (a broker-wide error), and so
    does any fetch that would include a partition of ``bad`` (a batch it cannot read)."""

    def __init__(self, tps: Iterable[TopicPartition]) -> None:
        self._assigned = set(tps)
        self._paused: set[TopicPartition] = set()
        self.pending: dict[TopicPartition, list[FakeRecord]] = {tp: [] for tp in self._assigned}
        self.failing = 0
        self.fetches = 0
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail_commit: BaseException | None = None
        self.bad: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Any:
        self.fetches += 1
        await asyncio.sleep(0)
        if self.failing:
            self.failing -= 1
            raise UnsupportedCodecError("Libraries for zstd compression codec not found")
        scope = [
            tp for tp in (partitions or self.pending) if tp not in self._paused and self.pending[tp]
        ]
        if set(scope) & self.bad:
            raise UnsupportedCodecError("Libraries for lz4 compression codec not found")
        out = {}
        for tp in scope:
            out[tp], self.pending[tp] = self.pending[tp], []
        if not out:
            await asyncio.sleep(timeout_ms / 1000 / 50)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        self.commits.append(dict(offsets))

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def committed(self, tp: TopicPartition) -> int:
        return 0

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)


class Handler:
    """Settles records at once, holds the ones whose partition is in ``hold``, raises for the
    ones whose partition is in ``fail``."""

    def __init__(self) -> None:
        self.settled: list[tuple[int, int]] = []
        self.hold: set[int] = set()
        self.fail: dict[int, Exception] = {}
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, record: SourceRecord, stop: asyncio.Event) -> Settled:
        if record.partition in self.fail:
            raise self.fail[record.partition]
        if record.partition in self.hold:
            self.holding.set()
            await self.release.wait()
        self.settled.append((record.partition, record.offset))
        return Settled(Verdict.CREATED, 0.0)


def record(tp: TopicPartition, offset: int) -> FakeRecord:
    return FakeRecord(value=b"{}", topic=tp.topic, partition=tp.partition, offset=offset)


def consumer_for(
    fake: FakeConsumer,
    handler: Handler,
    metrics: Metrics,
    liveness: Liveness,
    gate: EnvironmentGate | None = None,
    **options: Any,
) -> RequestConsumer:
    requests = RequestConsumer(
        fake, handler, metrics, ConsumerOptions(poll_timeout_ms=50, **options),
        liveness=liveness, gate=gate,
    )  # fmt: skip
    requests.partitions_assigned(fake.assignment())
    return requests


async def until(condition: Any) -> None:
    await until_within(condition, 20, "the consumer under test")


async def test_persistent_fetch_errors_are_counted_then_fail_health() -> None:
    metrics, liveness = Metrics(), Liveness()
    fake, handler = FakeConsumer([TP0]), Handler()
    requests = consumer_for(fake, handler, metrics, liveness, fetch_error_unhealthy_seconds=0.5)
    fake.failing = 10**6
    stop = asyncio.Event()
    task = asyncio.create_task(requests.run(stop))
    codec = {"kind": "UnsupportedCodecError"}
    await until(lambda: sample(metrics, "akisnap_fetch_errors_total", **codec) >= 1)
    assert requests.fetch_trouble() is None  # not for long enough yet
    await until(lambda: sample(metrics, "akisnap_fetch_errors_total", **codec) >= 2)
    assert requests.fetch_trouble() is not None  # the second came a second after the first
    assert "UnsupportedCodecError" in str(requests.fetch_trouble())
    fake.failing = 0
    fake.pending[TP0] = [record(TP0, 0)]
    await until(lambda: handler.settled == [(0, 0)])
    assert requests.fetch_trouble() is None
    stop.set()
    await task


async def test_a_background_loop_that_dies_fails_health() -> None:
    metrics, liveness = Metrics(), Liveness()
    fake, handler = FakeConsumer([TP0]), Handler()
    requests = consumer_for(fake, handler, metrics, liveness)
    fake.fail_commit = RuntimeError("a bug in committing")
    fake.pending[TP0] = [record(TP0, 0)]
    stop = asyncio.Event()
    task = asyncio.create_task(requests.run(stop))
    await until(lambda: not liveness.check(1000)[0])
    _, reason = liveness.check(1000)
    assert "akisnap-committer died: RuntimeError" in reason
    stop.set()
    fake.fail_commit = None
    await task


async def test_oldest_request_in_hand_and_the_gate_pauses_everything() -> None:
    """The worker holding a record reports its age; while the gate is shut every partition
    is paused; a held partition does not stop the other one being served."""
    metrics, liveness = Metrics(), Liveness()
    gate = EnvironmentGate(metrics, {"store": _never_fixed})
    fake, handler = FakeConsumer([TP0, TP1]), Handler()
    handler.hold = {0}
    requests = consumer_for(fake, handler, metrics, liveness, gate)
    fake.pending[TP0] = [record(TP0, 0)]
    fake.pending[TP1] = [record(TP1, 0)]
    stop = asyncio.Event()
    task = asyncio.create_task(requests.run(stop))
    await handler.holding.wait()
    await until(lambda: (1, 0) in handler.settled)  # the other partition goes on
    assert requests.oldest_busy_seconds() > 0

    gate.trip(StoreUnreachableError("connection refused"))
    await until(lambda: fake.paused() == {TP0, TP1})
    fake.pending[TP1] = [record(TP1, 1)]
    fetches = fake.fetches
    await until(lambda: fake.fetches >= fetches + 3)  # still polling, but paused: no records
    assert (1, 1) not in handler.settled
    handler.release.set()
    stop.set()
    await task
    await gate.close()


async def _never_fixed() -> None:
    raise StoreUnreachableError("still refused")


class _InHand:
    """The consumer's view /healthz reads: a request in hand for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def oldest_busy_seconds(self) -> float:
        return self.seconds

    def fetch_trouble(self) -> str | None:
        return None


def test_healthz_fails_when_a_request_is_wedged_past_its_deadline(tmp_path: Path) -> None:
    """Deadline 10 s: a request in hand for 69 s is still fine (the margin is 60 s), 71 s is a
    wedged worker."""
    settings = Settings.load(None, store=tmp_path.as_uri(), request_deadline_seconds=10)
    daemon = Daemon(settings)
    daemon._consumer = _InHand(69.0)  # type: ignore[assignment]
    assert daemon._alive()[0]
    daemon._consumer = _InHand(71.0)  # type: ignore[assignment]
    ok, reason = daemon._alive()
    assert not ok
    assert "wedged" in reason


@pytest.mark.parametrize(
    "error",
    [PublishStuckError("the result could not be published"), RuntimeError("a bug")],
    ids=["publish-stuck", "handler-bug"],
)
async def test_a_partition_that_cannot_settle_stops_and_fails_health(error: Exception) -> None:
    """No spinning on a record: its partition stops (nothing committed past it), /healthz
    fails with the reason, and the other partition is still served."""
    metrics, liveness = Metrics(), Liveness()
    fake, handler = FakeConsumer([TP0, TP1]), Handler()
    handler.fail = {0: error}
    requests = consumer_for(fake, handler, metrics, liveness)
    fake.pending[TP0] = [record(TP0, 0), record(TP0, 1)]
    fake.pending[TP1] = [record(TP1, 0)]
    stop = asyncio.Event()
    task = asyncio.create_task(requests.run(stop))
    await until(lambda: not liveness.check(1000)[0])
    await until(lambda: (1, 0) in handler.settled)
    assert "requests[0]" in liveness.check(1000)[1]
    assert not [settled for settled in handler.settled if settled[0] == 0]
    stop.set()
    await task
    assert all(TP0 not in offsets for offsets in fake.commits)


async def test_a_partition_whose_fetch_fails_is_held_while_the_others_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch one partition cannot read: that partition is paused for a while (counted,
    logged once), the other partition's requests are settled, /healthz fails after the
    setting naming the partition; once it reads again it is served."""
    monkeypatch.setattr(fetch_health, "QUARANTINE_SECONDS", 0.2)
    metrics, liveness = Metrics(), Liveness()
    fake, handler = FakeConsumer([TP0, TP1]), Handler()
    requests = consumer_for(fake, handler, metrics, liveness, fetch_error_unhealthy_seconds=0.5)
    fake.bad = {TP0}
    fake.pending[TP0] = [record(TP0, 0)]
    fake.pending[TP1] = [record(TP1, 0)]
    stop = asyncio.Event()
    task = asyncio.create_task(requests.run(stop))
    await until(lambda: (1, 0) in handler.settled)
    fake.pending[TP1] = [record(TP1, 1)]
    await until(lambda: (1, 1) in handler.settled)
    await until(lambda: requests.fetch_trouble() is not None)
    assert "requests[0]" in str(requests.fetch_trouble())
    assert sample(metrics, "akisnap_fetch_errors_total", kind="UnsupportedCodecError") >= 1
    assert (1, 0) in handler.settled and not [p for p, _ in handler.settled if p == 0]
    fake.bad = set()
    await until(lambda: (0, 0) in handler.settled)
    await until(lambda: requests.fetch_trouble() is None)
    stop.set()
    await task
