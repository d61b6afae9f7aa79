"""Settle the outcome: publish what became of a request, and only then call it settled.

A request is *settled* when its result event or its dead letter was acknowledged by the broker:
its offset may then be committed (:class:`~daemon.verdict.Settled`). :class:`Settler` does
that, and counts and logs the outcome:

- a request's headers (``traceparent``, ``tracestate``, any other) are copied onto its result,
  and kept on its dead letter beside the ``akisnap.*`` ones;
- publishing is retried (a broker that cannot be reached shuts the environment gate instead)
  up to ``publish_attempts`` times; then :class:`~daemon.verdict.PublishStuckError`: the
  partition stops, its offset uncommitted, and ``/healthz`` fails rather than the loop spinning;
- a dead letter too large for the producer is published without its value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from daemon.dead_letters.letter import (
    Failure,
    SourceRecord,
    build_dead_letter,
    carried_headers,
    describe,
    safe_message,
    without_value,
)
from daemon.environment import EnvironmentGate
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.publisher import Publisher, TooLargeError, broker_fault
from daemon.retry import Backoff, sleep_unless
from daemon.verdict import AbandonedError, PublishStuckError, Settled, Verdict
from handlers.create import CreateOutcome
from handlers.job import SnapshotJob

log = get_logger("akisnap.fate")  # the logger of a request's fate, both steps alike

# Delays between attempts to publish stop growing after this many attempts.
PUBLISH_BACKOFF_STEPS = 8
DEFAULT_PUBLISH_ATTEMPTS = 10


class Settler:
    """Publishes a request's result or dead letter until acknowledged: :class:`Settled`."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        backoff: Backoff,
        metrics: Metrics,
        gate: EnvironmentGate,
        secrets: Sequence[str] = (),
        publish_attempts: int = DEFAULT_PUBLISH_ATTEMPTS,
    ) -> None:
        self._publisher = publisher
        self._backoff = backoff
        self._metrics = metrics
        self._gate = gate
        self._secrets = tuple(secret for secret in secrets if secret)
        self._publish_attempts = publish_attempts

    async def made(
        self,
        record: SourceRecord,
        job: SnapshotJob,
        outcome: CreateOutcome,
        *,
        stop: asyncio.Event,
        started: float,
        durations: Mapping[str, float],
    ) -> Settled:
        """Publish the result event of a snapshot made (or found: a duplicate)."""
        durations = {**durations, "total": time.perf_counter() - started}
        value = self._publisher.result_value(job, outcome, durations)
        headers = carried_headers(record.headers)
        await self._until_sent(
            lambda: self._publisher.result(job, value, headers), "result", record, stop
        )
        seconds = time.perf_counter() - started
        meta = outcome.metadata
        verdict = Verdict.DUPLICATE if outcome.duplicate else Verdict.CREATED
        self._metrics.request_finished(verdict.value, seconds)
        if verdict is Verdict.CREATED:
            self._metrics.snapshot_created(meta)
        log.info(
            f"request.{verdict.value}",
            seconds=round(seconds, 3),
            vectors=meta.vector_count,
            total_bytes=meta.total_bytes,
        )
        return Settled(verdict, seconds, job.request_id, job.snapshot_id)

    async def failed(
        self, record: SourceRecord, failure: Failure, stop: asyncio.Event, started: float
    ) -> Settled:
        """Publish the dead letter of a request that failed for good."""
        letter = build_dead_letter(record, failure, secrets=self._secrets)
        try:
            await self._until_sent(
                lambda: self._publisher.dead_letter(letter),
                "dead_letter",
                record,
                stop,
                TooLargeError,
            )
        except TooLargeError as err:
            # A message that fitted the request topic compressed may not fit the producer's
            # limits: publish the letter without the value rather than block the partition.
            size = len(record.value or b"")
            log.warning(
                "dead_letter.value_left_out", source=describe(record), bytes=size, error=str(err)
            )
            letter = without_value(letter, size)
            await self._until_sent(
                lambda: self._publisher.dead_letter(letter), "dead_letter", record, stop
            )
        seconds = time.perf_counter() - started
        self._metrics.dead_lettered(failure.stage)
        self._metrics.request_finished(Verdict.DEAD_LETTERED.value, seconds)
        log.warning(
            "request.dead_lettered",
            source=describe(record),
            stage=failure.stage,
            error_class=failure.error_class,
            retryable=failure.retryable,
            attempts=failure.attempts,
            error=letter.header("akisnap.error.message"),
        )
        return Settled(Verdict.DEAD_LETTERED, seconds, stage=failure.stage)

    async def _until_sent(
        self,
        send: Callable[[], Awaitable[None]],
        what: str,
        record: SourceRecord,
        stop: asyncio.Event,
        final: type[Exception] | None = None,
    ) -> None:
        """Publish, retrying with backoff until acknowledged; a broker that cannot be reached
        shuts the environment gate instead of using up attempts. AbandonedError if told to
        stop, PublishStuckError once the attempts run out. An error of type ``final`` is
        raised at once (retrying cannot help)."""
        attempt = 0
        while True:
            try:
                await send()
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if final is not None and isinstance(err, final):
                    raise
                fault = broker_fault(err)
                if fault is not None:
                    await self._gate.wait_out(fault, stop, describe(record))
                    continue
                attempt += 1
                await self._before_republish(err, what, attempt, record, stop)

    async def _before_republish(
        self, err: Exception, what: str, attempt: int, record: SourceRecord, stop: asyncio.Event
    ) -> None:
        """Count and log a failed send, then wait its backoff; PublishStuckError when it was
        the last attempt, AbandonedError if told to stop."""
        self._metrics.publish_retried(what)
        error = safe_message(str(err), self._secrets)
        if attempt >= self._publish_attempts:
            self._metrics.publish_stuck.inc()
            log.error(
                "publish.stuck",
                what=what,
                source=describe(record),
                attempts=attempt,
                error_class=type(err).__name__,
                error=error,
                note="this partition stops here, uncommitted; /healthz now fails",
            )
            raise PublishStuckError(
                f"the {what} of {describe(record)} could not be published in "
                f"{attempt} attempts: {type(err).__name__}"
            ) from err
        delay = self._backoff.delay(min(attempt, PUBLISH_BACKOFF_STEPS))
        log.warning(
            "publish.retry",
            what=what,
            attempt=attempt,
            error_class=type(err).__name__,
            error=error,
            retry_in_seconds=round(delay, 3),
        )
        if not await sleep_unless(stop, delay):
            raise AbandonedError(f"stopped before the {what} was published") from err
