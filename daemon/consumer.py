"""The consume loop: fetch requests, hand them to per-partition workers, commit what is done.

How offsets, order and backpressure work:

- **Order.** Each assigned partition has one :class:`PartitionWorker` that settles its
  records one at a time, in offset order (requests are keyed by collection, so one
  collection's requests are in order); partitions are worked on concurrently.
- **Offsets.** A worker advances its partition's *done* offset (last settled offset + 1)
  only when :class:`~daemon.fate.Fate` returns, i.e. a result or a dead letter was
  acknowledged by the broker. A committer task commits done offsets shortly after they move,
  and again on revoke and on shutdown. A record that was abandoned (shutdown, revoke, a dead
  letter that could not be published) never moves the done offset: it is redone later and
  writes the same keys.
- **Backpressure.** Fetched-but-unsettled records are *in flight*, bounded in count and
  bytes. Over a bound, partitions are paused; a partition is also paused while its own
  backlog exceeds its share of the bound, so one busy partition cannot starve the others.
  The fetch loop never blocks on work: it keeps calling ``getmany`` (returning nothing for
  paused partitions), so aiokafka never sees the member idle past ``max_poll_interval_ms``
  (aiokafka #848, #929) however long a snapshot takes.
- **Environment faults.** While the environment gate is shut (store or broker unusable, see
  :mod:`daemon.environment`) every partition is paused; the workers wait at the gate with
  their record in hand and go on when it opens.
- **Failures surface.** A worker that hits an unexpected error or cannot publish within the
  retry cap stops its partition (uncommitted) and marks the daemon unhealthy; so does a
  background loop (committer, lag) that dies. A fetch error that persists is counted, logged
  once when it starts and once when it ends, and turns ``/healthz`` unhealthy after
  ``fetch_error_unhealthy_seconds``. After a failed fetch the partitions are fetched one by
  one: one that fails alone is held paused for a while, so the others are served.
- **Rebalance.** On revoke, the revoked partitions' workers stop taking records, finish the
  one in hand within a bound, the done offsets are committed, and the rest is dropped (the
  new owner fetches it again from the committed offset). ``CommitFailedError`` is logged and
  counted; the redo it causes is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
)

from daemon.dead_letters.letter import SourceRecord, describe
from daemon.environment import EnvironmentGate
from daemon.health import Liveness
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.retry import sleep_unless
from daemon.verdict import AbandonedError, PublishStuckError, Settled

log = get_logger("akisnap.consumer")

Handler = Callable[[SourceRecord, asyncio.Event], Awaitable[Settled]]
"""Settle one record (``Fate``); the event tells it to give up waiting (shutdown, revoke)."""

KAFKA_ERROR_PAUSE_SECONDS = 1.0
# A partition whose fetch fails on its own (a batch it cannot read) stays paused this long
# before it is tried again, so the other partitions are served meanwhile.
QUARANTINE_SECONDS = 5.0
# How long a cancelled record may take to unwind (see PartitionWorker.drain).
CANCEL_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class ConsumerOptions:
    max_in_flight_requests: int = 32
    max_in_flight_bytes: int = 256 * 1024 * 1024
    drain_seconds: float = 20.0
    """How long a revoked partition (or, on shutdown, every partition) may take to finish the
    record in hand before it is cancelled and left to be redone."""
    final_commit_seconds: float = 2.5
    """How long the commit at the end of :meth:`RequestConsumer.run` may take (shutdown)."""
    poll_timeout_ms: int = 1000
    commit_interval_seconds: float = 0.2
    lag_interval_seconds: float = 10.0
    fetch_error_unhealthy_seconds: float = 300.0
    """How long fetches may keep failing before /healthz turns unhealthy."""


def _record_bytes(record: SourceRecord) -> int:
    return len(record.value or b"") + len(record.key or b"")


class InFlight:
    """Records fetched and not yet settled: the bounds (count, and message bytes queued), and
    the in-flight request gauge. The in-flight bytes gauge counts what requests being worked
    on hold (export or decoded payload): the creator's byte budget keeps it."""

    def __init__(self, metrics: Metrics, max_requests: int, max_bytes: int) -> None:
        self._metrics = metrics
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.count = 0
        self.nbytes = 0

    def add(self, record: SourceRecord) -> None:
        size = _record_bytes(record)
        self.count += 1
        self.nbytes += size
        self._metrics.in_flight_requests.inc()

    def remove(self, record: SourceRecord) -> None:
        size = _record_bytes(record)
        self.count -= 1
        self.nbytes -= size
        self._metrics.in_flight_requests.dec()

    @property
    def full(self) -> bool:
        return self.count >= self.max_requests or self.nbytes >= self.max_bytes

    @property
    def room(self) -> int:
        """How many more records may be fetched now (at least 1 for getmany)."""
        return max(1, self.max_requests - self.count)


class PartitionWorker:
    """Settles one partition's records, one at a time, in offset order."""

    def __init__(
        self,
        tp: TopicPartition,
        handle: Handler,
        in_flight: InFlight,
        on_settled: Callable[[TopicPartition, int], None],
        *,
        liveness: Liveness,
        working_clock: Callable[[], float],
    ) -> None:
        self.tp = tp
        self._handle = handle
        self._in_flight = in_flight
        self._on_settled = on_settled
        self._liveness = liveness
        self._clock = working_clock
        self.busy_since: float | None = None
        self._queue: deque[SourceRecord] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self.stop = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(), name=f"akisnap-partition-{tp.topic}-{tp.partition}"
        )

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def enqueue(self, records: Iterable[SourceRecord]) -> None:
        if self._closing:
            return
        for record in records:
            self._queue.append(record)
            self._in_flight.add(record)
        self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                while not self._queue and not self._closing:
                    self._wake.clear()
                    await self._wake.wait()
                if self._closing:
                    return
                record = self._queue[0]
                self.busy_since = self._clock()
                try:
                    await self._handle(record, self.stop)
                except PublishStuckError as why:
                    self._liveness.fail(f"partition {_tp_text(self.tp)}: {why}")
                    return
                except AbandonedError as why:
                    log.info("partition.abandoned", source=describe(record), reason=str(why))
                    return
                except Exception as err:
                    # Fate settles every failure itself, even its own bugs; reaching here
                    # means dead-lettering failed too. Never skip the record, never spin on
                    # it: stop this partition, uncommitted, and let /healthz say so.
                    log.exception("partition.handler_failed", source=describe(record))
                    self._liveness.fail(
                        f"partition {_tp_text(self.tp)} stopped: {type(err).__name__} while "
                        f"settling {describe(record)}"
                    )
                    return
                finally:
                    self.busy_since = None
                self._queue.popleft()
                self._in_flight.remove(record)
                self._on_settled(self.tp, record.offset + 1)
        finally:
            self._release_queue()

    def _release_queue(self) -> None:
        while self._queue:
            self._in_flight.remove(self._queue.popleft())

    async def drain(self, within: float) -> None:
        """Take no more records, finish the one in hand within ``within`` s (else cancel it),
        drop the rest. Waits (retry backoff, publish retries) are given up at once."""
        self._closing = True
        self.stop.set()
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=max(within, 0.0))
        if not done:
            log.warning(
                "partition.drain_timeout",
                topic=self.tp.topic,
                partition=self.tp.partition,
                within_seconds=within,
            )
            self._task.cancel()
            # A cancelled encoding stops at its next slice of rows; wait that long at most
            # (the shutdown's budget is fixed), the thread finishes cleaning up by itself.
            await asyncio.wait({self._task}, timeout=CANCEL_WAIT_SECONDS)


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: RequestConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._owner.partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._owner.partitions_assigned(set(assigned))


class RequestConsumer:
    """Drives an (already subscribed) aiokafka consumer until told to stop."""

    def __init__(
        self,
        consumer: Any,
        handle: Handler,
        metrics: Metrics,
        options: ConsumerOptions,
        *,
        liveness: Liveness | None = None,
        on_joined: Callable[[], None] | None = None,
        gate: EnvironmentGate | None = None,
    ) -> None:
        self._consumer = consumer
        self._gate = gate or EnvironmentGate(metrics, {})
        self._fetch_failing: tuple[float, str] | None = None
        # Per partition: the next offset after the last record enqueued (to rewind to after a
        # failed fetch), since when and why its own fetch fails, until when it is held paused.
        self._next_offsets: dict[TopicPartition, int] = {}
        self._bad: dict[TopicPartition, tuple[float, str]] = {}
        self._quarantined: dict[TopicPartition, float] = {}
        self._on_joined = on_joined
        self._handle = handle
        self._metrics = metrics
        self._options = options
        self._liveness = liveness or Liveness()
        self._in_flight = InFlight(
            metrics, options.max_in_flight_requests, options.max_in_flight_bytes
        )
        self._workers: dict[TopicPartition, PartitionWorker] = {}
        self._done: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self.joined = False
        self.listener = _RebalanceListener(self)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until ``stop`` is set; then drain the workers and commit."""
        helpers = [
            asyncio.create_task(self._commit_loop(), name="akisnap-committer"),
            asyncio.create_task(self._lag_loop(), name="akisnap-lag"),
        ]
        for task in helpers:
            task.add_done_callback(self._helper_ended)
        try:
            await self._fetch_loop(stop)
        finally:
            self._pause(set(self._workers))
            await self._drain(set(self._workers), self._options.drain_seconds)
            for task in helpers:
                task.remove_done_callback(self._helper_ended)
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            try:
                await asyncio.wait_for(self.commit(), self._options.final_commit_seconds)
            except TimeoutError:
                self._metrics.commit_failed("timeout")
                log.warning(
                    "consumer.final_commit_timeout",
                    within_seconds=self._options.final_commit_seconds,
                    note="the requests since the last commit will be redone (idempotently)",
                )

    def _helper_ended(self, task: asyncio.Task[None]) -> None:
        """A background loop never ends on its own: if it did, say so loudly, and fail
        /healthz (a dead committer means no offset moves again)."""
        error = None if task.cancelled() else task.exception()
        log.error("consumer.loop_died", loop=task.get_name(), exc_info=error)
        reason = type(error).__name__ if error is not None else "ended"
        self._liveness.fail(f"background loop {task.get_name()} died: {reason}")

    def oldest_busy_seconds(self) -> float:
        """Working time (environment pauses left out) of the oldest record in hand."""
        started = [w.busy_since for w in self._workers.values() if w.busy_since is not None]
        return self._gate.working_clock() - min(started) if started else 0.0

    def fetch_trouble(self) -> str | None:
        """Why /healthz should fail for fetching: errors (of every fetch, or of one partition's)
        for longer than the setting."""
        now = asyncio.get_running_loop().time()
        limit = self._options.fetch_error_unhealthy_seconds
        if self._fetch_failing is not None and now - self._fetch_failing[0] > limit:
            since, kind = self._fetch_failing
            return f"fetching has failed for {now - since:.0f}s ({kind})"
        for tp, (since, kind) in sorted(self._bad.items()):
            if now - since > limit:
                return f"fetching {_tp_text(tp)} has failed for {now - since:.0f}s ({kind})"
        return None

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(stop.wait(), name="akisnap-stop-wait")
        try:
            while not stop.is_set():
                self._apply_backpressure()
                included = self._assigned() - self._consumer.paused()
                fetch = asyncio.ensure_future(
                    self._consumer.getmany(
                        timeout_ms=self._options.poll_timeout_ms,
                        max_records=self._in_flight.room,
                    )
                )
                await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():  # stopping: what it would have returned is redone later
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, KafkaError):
                        await fetch
                    return
                try:
                    batches = fetch.result()
                except ConsumerStoppedError:
                    return
                except Exception as err:  # counted and logged; other partitions go on
                    self._fetch_failed(err)
                    batches = await self._isolate()
                    if not batches:
                        await sleep_unless(stop, KAFKA_ERROR_PAUSE_SECONDS)
                        continue
                else:
                    self._fetch_worked(included)
                self._liveness.beat()
                for tp, records in batches.items():
                    worker = self._workers.get(tp)
                    if worker is not None and records:
                        worker.enqueue(records)
                        self._next_offsets[tp] = records[-1].offset + 1
                self._liveness.waiting(self._in_flight.count > 0)
        finally:
            stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopped

    def _fetch_failed(self, err: Exception) -> None:
        """Count every failed fetch; log when failing starts (and its kind changes)."""
        kind = type(err).__name__
        self._metrics.fetch_failed(kind)
        if self._fetch_failing is None or self._fetch_failing[1] != kind:
            log.error("consumer.fetch_failing", error_class=kind, error=str(err))
            since = asyncio.get_running_loop().time()
            self._fetch_failing = (
                since if self._fetch_failing is None else self._fetch_failing[0],
                kind,
            )

    def _fetch_worked(self, included: set[TopicPartition]) -> None:
        now = asyncio.get_running_loop().time()
        if self._fetch_failing is not None:
            since, kind = self._fetch_failing
            log.info("consumer.fetch_recovered", error_class=kind, seconds=round(now - since, 3))
            self._fetch_failing = None
        for tp in included & set(self._bad):
            since, kind = self._bad.pop(tp)
            self._quarantined.pop(tp, None)
            log.info(
                "consumer.partition_fetch_recovered",
                partition=_tp_text(tp),
                error_class=kind,
                seconds=round(now - since, 3),
            )

    async def _isolate(self) -> dict[TopicPartition, list[Any]]:
        """After a failed fetch: rewind (aiokafka may have dropped records it had drained for
        other partitions when it raised), then fetch each partition alone. Partitions that
        fail alone are held paused for a while, so the others are served; if all fail, it is
        not one partition's doing and nothing is held."""
        for tp, offset in self._next_offsets.items():
            if tp in self._workers:
                self._consumer.seek(tp, offset)
        candidates = sorted((self._assigned() - self._consumer.paused()) & set(self._workers))
        served: dict[TopicPartition, list[Any]] = {}
        failed: dict[TopicPartition, Exception] = {}
        for tp in candidates:
            try:
                served.update(
                    await self._consumer.getmany(tp, timeout_ms=0, max_records=self._in_flight.room)
                )
            except ConsumerStoppedError:
                raise
            except Exception as err:  # this partition's own failure
                failed[tp] = err
        if failed and len(failed) < len(candidates):
            for tp, error in failed.items():
                self._quarantine(tp, error)
        return served

    def _quarantine(self, tp: TopicPartition, err: Exception) -> None:
        now = asyncio.get_running_loop().time()
        kind = type(err).__name__
        if tp not in self._bad:
            log.error(
                "consumer.partition_fetch_failing",
                partition=_tp_text(tp),
                error_class=kind,
                error=str(err),
                note="paused for a while; the other partitions are served",
            )
            self._bad[tp] = (now, kind)
        self._quarantined[tp] = now + QUARANTINE_SECONDS
        self._pause({tp})

    # -- backpressure -----------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        """Pause what is over its bound, resume what is below; never blocks. Everything is
        paused while the environment gate is shut."""
        owned = set(self._workers)
        if not owned:
            return
        if self._in_flight.full or not self._gate.is_open:
            self._pause(owned)
            return
        share = max(1, math.ceil(self._in_flight.max_requests / len(owned)))
        busy = {tp for tp, worker in self._workers.items() if worker.backlog >= share}
        now = asyncio.get_running_loop().time()
        busy |= {tp for tp, until in self._quarantined.items() if until > now}
        self._pause(busy)
        self._resume(owned - busy)

    def _pause(self, tps: set[TopicPartition]) -> None:
        assigned = self._assigned()
        todo = (tps & assigned) - self._consumer.paused()
        if todo:
            self._consumer.pause(*todo)

    def _resume(self, tps: set[TopicPartition]) -> None:
        todo = tps & self._consumer.paused() & self._assigned()
        if todo:
            self._consumer.resume(*todo)

    def _assigned(self) -> set[TopicPartition]:
        try:
            return set(self._consumer.assignment())
        except IllegalStateError:
            return set()

    # -- settled requests, committing ------------------------------------------------------

    def _settled(self, tp: TopicPartition, next_offset: int) -> None:
        self._done[tp] = next_offset
        self._dirty.set()
        self._liveness.beat()
        self._liveness.waiting(self._in_flight.count > 0)
        self._apply_backpressure()

    async def _drain(self, tps: set[TopicPartition], within: float) -> None:
        workers = [self._workers[tp] for tp in tps if tp in self._workers]
        if workers:
            await asyncio.gather(*(worker.drain(within) for worker in workers))

    async def commit(self, only: Collection[TopicPartition] | None = None) -> None:
        """Commit the done offsets that moved (of ``only``, if given). Never raises KafkaError."""
        async with self._commit_lock:
            offsets = {
                tp: offset
                for tp, offset in self._done.items()
                if self._committed.get(tp) != offset and (only is None or tp in only)
            }
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except CommitFailedError as err:
                self._metrics.commit_failed("commit_failed")
                log.warning(
                    "consumer.commit_failed",
                    error=str(err),
                    offsets=_offsets_text(offsets),
                    note="the group rebalanced; these requests will be redone (idempotently)",
                )
                return
            except IllegalStateError as err:
                self._metrics.commit_failed("not_assigned")
                log.warning(
                    "consumer.commit_not_assigned", error=str(err), offsets=_offsets_text(offsets)
                )
                return
            except KafkaError as err:
                self._metrics.commit_failed("kafka_error")
                log.warning(
                    "consumer.commit_error",
                    error_class=type(err).__name__,
                    error=str(err),
                    offsets=_offsets_text(offsets),
                )
                self._dirty.set()  # the committer tries again
                return
            self._committed.update(offsets)
            log.debug("consumer.committed", offsets=_offsets_text(offsets))

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.commit()
            # Coalesce the commits of requests settling close together.
            await asyncio.sleep(self._options.commit_interval_seconds)

    # -- rebalance --------------------------------------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Drain the revoked partitions' workers, commit what they finished, forget them."""
        log.info("consumer.partitions_revoked", partitions=_tps_text(revoked))
        self.joined = False
        await self._drain(revoked, self._options.drain_seconds)
        await self.commit(only=revoked)
        for tp in revoked:
            self._workers.pop(tp, None)
            self._done.pop(tp, None)
            self._committed.pop(tp, None)
            self._next_offsets.pop(tp, None)
            self._bad.pop(tp, None)
            self._quarantined.pop(tp, None)
            self._metrics.clear_lag(tp.topic, tp.partition)

    def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("consumer.partitions_assigned", partitions=_tps_text(assigned))
        for tp in assigned:
            if tp not in self._workers:
                self._workers[tp] = PartitionWorker(
                    tp,
                    self._handle,
                    self._in_flight,
                    self._settled,
                    liveness=self._liveness,
                    working_clock=self._gate.working_clock,
                )
        self.joined = True
        if self._on_joined is not None:
            self._on_joined()
        self._apply_backpressure()

    # -- lag --------------------------------------------------------------------------------

    async def _lag_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.lag_interval_seconds)
            try:
                await self.refresh_lag()
            except KafkaError as err:
                log.debug("consumer.lag_failed", error=str(err))

    async def refresh_lag(self) -> None:
        """consumer_lag{topic,partition} = end offset - committed offset, per owned partition."""
        tps = sorted(self._assigned() & set(self._workers))
        if not tps:
            return
        ends = await self._consumer.end_offsets(tps)
        for tp in tps:
            base = self._committed.get(tp)
            if base is None:
                base = await self._consumer.committed(tp)
                if base is None:
                    base = (await self._consumer.beginning_offsets([tp])).get(tp, 0)
                self._committed.setdefault(tp, int(base))
            end = ends.get(tp)
            if end is not None and tp in self._workers:
                self._metrics.set_lag(tp.topic, tp.partition, int(end) - int(base))


def _tp_text(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _tps_text(tps: Iterable[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


def _offsets_text(offsets: dict[TopicPartition, int]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]={off}" for tp, off in sorted(offsets.items()))
