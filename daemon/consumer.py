"""The consume loop: fetch requests, hand them to per-partition workers, commit what is done.

How offsets, order and backpressure work:

- **Order.** Each assigned partition has one :class:`~daemon.partition.PartitionWorker` that
  settles its records one at a time, in offset order (requests are keyed by collection, so
  one collection's requests are in order); partitions are worked on concurrently.
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
  one: one that fails alone is held paused for a while, so the others are served
  (:mod:`daemon.fetch_health` keeps that account).
- **Rebalance.** On revoke, the revoked partitions' workers stop taking records, finish the
  one in hand within a bound, the done offsets are committed, and the rest is dropped (the
  new owner fetches it again from the committed offset). ``CommitFailedError`` is logged and
  counted; the redo it causes is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
)

from daemon.environment import EnvironmentGate
from daemon.fetch_health import FetchHealth
from daemon.health import Liveness
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.partition import Handler, InFlight, PartitionWorker
from daemon.retry import sleep_unless

log = get_logger("akisnap.consumer")

KAFKA_ERROR_PAUSE_SECONDS = 1.0


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
        self._fetch_health = FetchHealth(metrics, options.fetch_error_unhealthy_seconds)
        # Per partition: the next offset after the last record enqueued (to rewind to after a
        # failed fetch).
        self._next_offsets: dict[TopicPartition, int] = {}
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
        """Why /healthz should fail for fetching (see :class:`FetchHealth`)."""
        return self._fetch_health.trouble()

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
                    self._fetch_health.failed(err)
                    batches = await self._isolate()
                    if not batches:
                        await sleep_unless(stop, KAFKA_ERROR_PAUSE_SECONDS)
                        continue
                else:
                    self._fetch_health.worked(included)
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
                self._fetch_health.quarantine(tp, error)
            self._pause(set(failed))
        return served

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
        busy |= self._fetch_health.held()
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
            self._fetch_health.forget(tp)
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


def _tps_text(tps: Iterable[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


def _offsets_text(offsets: dict[TopicPartition, int]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]={off}" for tp, off in sorted(offsets.items()))
