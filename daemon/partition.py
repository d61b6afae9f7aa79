"""One partition's worker, and the bound on what is in flight across them.

:class:`PartitionWorker` settles its partition's records one at a time, in offset order, and
tells the consumer each done offset; :class:`InFlight` counts what was fetched and not yet
settled, for the consumer's backpressure. See :mod:`daemon.consumer` for how they fit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from aiokafka import TopicPartition

from daemon.dead_letters.letter import SourceRecord, describe
from daemon.health import Liveness
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.verdict import AbandonedError, PublishStuckError, Settled

log = get_logger("akisnap.consumer")  # the consume loop's logger, as before the split

Handler = Callable[[SourceRecord, asyncio.Event], Awaitable[Settled]]
"""Settle one record (``Fate``); the event tells it to give up waiting (shutdown, revoke)."""

# How long a cancelled record may take to unwind (see PartitionWorker.drain).
CANCEL_WAIT_SECONDS = 0.5


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
                    self._liveness.fail(f"partition {tp_text(self.tp)}: {why}")
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
                        f"partition {tp_text(self.tp)} stopped: {type(err).__name__} while "
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


def tp_text(tp: TopicPartition) -> str:
    """``topic[partition]`` for logs and health reasons."""
    return f"{tp.topic}[{tp.partition}]"
