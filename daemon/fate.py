"""The one place that decides what becomes of a request: result, retry or dead letter.

Handlers only raise. :class:`Fate` takes one consumed record to a terminal state in two steps
with one job each: :class:`~daemon.attempts.Attempts` runs it with retries (decode, duplicate
check, create; environment faults waited out) to a snapshot or a failure, then
:class:`~daemon.settle.Settler` settles that outcome (publishes the result or the dead letter
until the broker acknowledges it). Only then may the consumer commit the record's offset. It
raises :class:`~daemon.verdict.AbandonedError` when told to stop before that (shutdown,
partition revoked): the offset then stays uncommitted and the request is redone later, writing
the same keys.

Anything unexpected while deciding (a result that cannot be built, ...) is caught by one guard
around the whole decision: dead letter with stage ``internal``, counted, and the partition moves
on. The rules of each step are in its module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from structlog.contextvars import bound_contextvars

from daemon.attempts import DEFAULT_DEADLINE_SECONDS, Attempts, Creator, describe_error
from daemon.dead_letters.letter import Failure, SourceRecord, describe
from daemon.environment import EnvironmentGate
from daemon.events import peek_ids
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.publisher import Publisher
from daemon.retry import Backoff
from daemon.settle import DEFAULT_PUBLISH_ATTEMPTS, Settler
from daemon.verdict import AbandonedError, Settled

log = get_logger("akisnap.fate")

# The dead-letter stage of an unexpected error while deciding a request's outcome.
INTERNAL_STAGE = "internal"


class Fate:
    """Run one record with retries, then settle its outcome."""

    def __init__(
        self,
        *,
        creator: Creator,
        publisher: Publisher,
        backoff: Backoff,
        metrics: Metrics,
        max_message_bytes: int,
        secrets: Sequence[str] = (),
        gate: EnvironmentGate | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        publish_attempts: int = DEFAULT_PUBLISH_ATTEMPTS,
    ) -> None:
        gate = gate or EnvironmentGate(metrics, {})
        self._metrics = metrics
        self._attempts = Attempts(
            creator=creator,
            backoff=backoff,
            metrics=metrics,
            gate=gate,
            max_message_bytes=max_message_bytes,
            secrets=secrets,
            deadline_seconds=deadline_seconds,
        )
        self._settler = Settler(
            publisher=publisher,
            backoff=backoff,
            metrics=metrics,
            gate=gate,
            secrets=secrets,
            publish_attempts=publish_attempts,
        )

    async def __call__(self, record: SourceRecord, stop: asyncio.Event) -> Settled:
        """Settle ``record``; raise :class:`AbandonedError` if ``stop`` is set before it is."""
        started = time.perf_counter()
        with bound_contextvars(**_known_ids(record.value)):
            try:
                return await self._decide(record, stop, started)
            except (AbandonedError, asyncio.CancelledError):
                raise
            except Exception as err:  # the one guard: a bug anywhere in deciding
                self._metrics.internal_errors.inc()
                log.error("request.internal_error", source=describe(record), exc_info=err)
                failure = Failure(INTERNAL_STAGE, type(err).__name__, describe_error(err), True, 1)
                return await self._settler.failed(record, failure, stop, started)

    async def _decide(self, record: SourceRecord, stop: asyncio.Event, started: float) -> Settled:
        decoded = await self._attempts.decode(record)
        if isinstance(decoded, Failure):
            return await self._settler.failed(record, decoded, stop, started)
        job = decoded.job
        with bound_contextvars(
            request_id=job.request_id,
            collection_id=job.collection_id,
            snapshot_id=job.snapshot_id,
        ):
            log.debug("request.received", source=describe(record))
            made = await self._attempts.make(record, job, stop)
            if isinstance(made, Failure):
                return await self._settler.failed(record, made, stop, started)
            return await self._settler.made(
                record, job, made, stop=stop, started=started, durations=decoded.durations
            )


def _known_ids(value: bytes | None) -> dict[str, str]:
    try:
        return peek_ids(value, parse=False)  # parse_request parses it: once is enough
    except Exception:  # a log nicety: never let it decide anything
        return {}
