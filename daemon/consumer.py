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

from daemon.dead_letter import SourceRecord, describe
from daemon.fate import AbandonedError, Settled
from daemon.health import Liveness
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.retry import sleep_unless

log = get_logger("akisnap.consumer")

Handler = Callable[[SourceRecord, asyncio.Event], Awaitable[Settled]]
"""Settle one record (``Fate``); the event tells it to give up waiting (shutdown, revoke)."""

# After an unexpected error escaped the handler, wait this long before trying the record again.
HANDLER_BUG_PAUSE_SECONDS = 1.0
KAFKA_ERROR_PAUSE_SECONDS = 1.0


@dataclass(frozen=True)
class ConsumerOptions:
    max_in_flight_requests: int = 8
    max_in_flight_bytes: int = 256 * 1024 * 1024
    settle_seconds: float = 20.0
    """How long a revoked partition (or, on shutdown, every partition) may take to finish the
    record in hand before it is cancelled and left to be redone."""
    poll_timeout_ms: int = 1000
    commit_interval_seconds: float = 0.2
    lag_interval_seconds: float = 10.0


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
    ) -> None:
        self.tp = tp
        self._handle = handle
        self._in_flight = in_flight
        self._on_settled = on_settled
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
                try:
                    await self._handle(record, self.stop)
                except AbandonedError as why:
                    log.info("partition.abandoned", source=describe(record), reason=str(why))
                    return
                except Exception:
                    # Fate settles every failure itself; reaching here is a bug. Keep the
                    # record (never skip it) and try again rather than stop consuming.
                    log.exception("partition.handler_failed", source=describe(record))
                    if not await sleep_unless(self.stop, HANDLER_BUG_PAUSE_SECONDS):
                        return
                    continue
                self._queue.popleft()
                self._in_flight.remove(record)
                self._on_settled(self.tp, record.offset + 1)
        finally:
            self._release_queue()

    def _release_queue(self) -> None:
        while self._queue:
            self._in_flight.remove(self._queue.popleft())

    async def settle(self, within: float) -> None:
        """Take no more records, finish the one in hand within ``within`` s (else cancel it),
        drop the rest. Waits (retry backoff, publish retries) are given up at once."""
        self._closing = True
        self.stop.set()
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=max(within, 0.0))
        if not done:
            log.warning(
                "partition.settle_timeout",
                topic=self.tp.topic,
                partition=self.tp.partition,
                within_seconds=within,
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


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
    ) -> None:
        self._consumer = consumer
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
        """Fetch and dispatch until ``stop`` is set; then settle the workers and commit."""
        helpers = [
            asyncio.create_task(self._commit_loop(), name="akisnap-committer"),
            asyncio.create_task(self._lag_loop(), name="akisnap-lag"),
        ]
        try:
            await self._fetch_loop(stop)
        finally:
            self._pause(set(self._workers))
            await self._settle(set(self._workers), self._options.settle_seconds)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.commit()

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(stop.wait(), name="akisnap-stop-wait")
        try:
            while not stop.is_set():
                self._apply_backpressure()
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
                except KafkaError as err:
                    log.warning(
                        "consumer.fetch_failed", error_class=type(err).__name__, error=str(err)
                    )
                    await sleep_unless(stop, KAFKA_ERROR_PAUSE_SECONDS)
                    continue
                self._liveness.beat()
                for tp, records in batches.items():
                    worker = self._workers.get(tp)
                    if worker is not None:
                        worker.enqueue(records)
                self._liveness.waiting(self._in_flight.count > 0)
        finally:
            stopped.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopped

    # -- backpressure -----------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        """Pause what is over its bound, resume what is below; never blocks."""
        owned = set(self._workers)
        if not owned:
            return
        if self._in_flight.full:
            self._pause(owned)
            return
        share = max(1, math.ceil(self._in_flight.max_requests / len(owned)))
        busy = {tp for tp, worker in self._workers.items() if worker.backlog >= share}
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

    # -- settling and committing ------------------------------------------------------------

    def _settled(self, tp: TopicPartition, next_offset: int) -> None:
        self._done[tp] = next_offset
        self._dirty.set()
        self._liveness.beat()
        self._liveness.waiting(self._in_flight.count > 0)
        self._apply_backpressure()

    async def _settle(self, tps: set[TopicPartition], within: float) -> None:
        workers = [self._workers[tp] for tp in tps if tp in self._workers]
        if workers:
            await asyncio.gather(*(worker.settle(within) for worker in workers))

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
        """Settle the revoked partitions' workers, commit what they finished, forget them."""
        log.info("consumer.partitions_revoked", partitions=_tps_text(revoked))
        self.joined = False
        await self._settle(revoked, self._options.settle_seconds)
        await self.commit(only=revoked)
        for tp in revoked:
            self._workers.pop(tp, None)
            self._done.pop(tp, None)
            self._committed.pop(tp, None)
            self._metrics.clear_lag(tp.topic, tp.partition)

    def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("consumer.partitions_assigned", partitions=_tps_text(assigned))
        for tp in assigned:
            if tp not in self._workers:
                self._workers[tp] = PartitionWorker(
                    tp, self._handle, self._in_flight, self._settled
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


def _tps_text(tps: Iterable[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


def _offsets_text(offsets: dict[TopicPartition, int]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]={off}" for tp, off in sorted(offsets.items()))
