"""The one place that decides what becomes of a request: result, retry or dead letter.

Handlers only raise. :class:`Fate` runs the pipeline for one consumed record and returns once
the record reached a terminal state — a result event or a dead letter acknowledged by the
broker — so the consumer may commit its offset. It raises :class:`AbandonedError` when told to
stop before that (shutdown, partition revoked): the offset then stays uncommitted and the
request is redone later, writing the same keys.

The rules, all here:

- a :class:`~handlers.errors.PermanentError` (bad input) goes to the dead letters at once,
  with its own stage;
- a :class:`~handlers.errors.TransientError`, or any other exception (a bug or an unknown
  failure, logged with its traceback), is retried with backoff; its stage is the stage whose
  timer was running. When the attempts run out it goes to the dead letters, ``retryable=true``;
- an :class:`~handlers.errors.EnvironmentFaultError` (store unreachable, credentials refused,
  broker unavailable, ...) is nobody's request's fault: it shuts the environment gate (every
  partition pauses) and the request waits there and is tried again, without using up an
  attempt and without its deadline running, however long that takes;
- a request still unsettled ``deadline`` seconds of working time after it arrived goes to the
  dead letters, ``retryable=true``;
- a snapshot that already exists for the request id is not rewritten: result ``duplicate``;
- publishing a result or a dead letter is retried (a broker that cannot be reached shuts the
  gate instead) up to ``publish_attempts`` times; then :class:`PublishStuckError`: the partition
  stops, its offset uncommitted, and ``/healthz`` fails rather than the loop spinning;
- anything unexpected while deciding (a result that cannot be built, ...) is caught by one
  guard around the whole decision: dead letter with stage ``internal``, counted, and the
  partition moves on.

A request's headers (``traceparent``, ``tracestate``, any other) are copied onto its result,
and kept on its dead letter beside the ``akisnap.*`` ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from structlog.contextvars import bound_contextvars

from daemon.dead_letter import (
    Failure,
    SourceRecord,
    build_dead_letter,
    carried_headers,
    describe,
    safe_message,
    without_value,
)
from daemon.environment import EnvironmentGate
from daemon.events import parse_request, peek_ids, prepare_request
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.results import Publisher, TooLargeError, broker_fault
from daemon.retry import Backoff, sleep_unless
from handlers.create import CreateOutcome, StageTimer
from handlers.errors import AkisnapError, EnvironmentFaultError, PermanentError
from handlers.executor import run_in_process
from handlers.job import SnapshotJob
from handlers.metadata import SnapshotMetadata

log = get_logger("akisnap.fate")

# A failure outside any timed stage: the duplicate check reads the store.
LOOKUP_STAGE = "upload"
# Delays between attempts to publish stop growing after this many attempts.
PUBLISH_BACKOFF_STEPS = 8
# Requests bigger than this are parsed off the loop (JSON parsing holds the loop otherwise).
PARSE_OFF_LOOP_BYTES = 256 * 1024
# The dead-letter stage of an unexpected error while deciding a request's outcome.
INTERNAL_STAGE = "internal"
DEFAULT_DEADLINE_SECONDS = 900.0
DEFAULT_PUBLISH_ATTEMPTS = 10


class Verdict(StrEnum):
    """The terminal states of a request (the ``outcome`` label of ``requests_total``)."""

    CREATED = "created"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class Settled:
    """A request that reached a terminal state: its offset may be committed."""

    verdict: Verdict
    seconds: float
    request_id: str | None = None
    snapshot_id: str | None = None
    stage: str | None = None


class AbandonedError(Exception):
    """Told to stop before the request reached a terminal state; do not commit its offset."""


class PublishStuckError(AbandonedError):
    """A result or dead letter could not be published within the attempts: the partition
    stops here (its offset uncommitted) and the daemon reports itself unhealthy."""


class DeadlineExceededError(Exception):
    """The request was not settled within its deadline (working time, pauses left out)."""


class Creator(Protocol):
    """The part of :class:`handlers.create.SnapshotCreator` the daemon drives."""

    async def existing(self, job: SnapshotJob) -> SnapshotMetadata | None: ...

    async def __call__(self, job: SnapshotJob, timer: StageTimer) -> CreateOutcome: ...


class StageClock:
    """The timer handed to the creator: stage metrics, and which stage was running."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.active: str | None = None

    @contextlib.asynccontextmanager
    async def __call__(self, stage: str) -> AsyncIterator[None]:
        self.active = stage
        async with self._metrics.stage_timer(stage):
            yield
        self.active = None  # left as is when the stage raised: that stage failed

    @contextlib.contextmanager
    def attribute(self, stage: str) -> Iterator[None]:
        """Blame ``stage`` for failures inside, without timing it."""
        self.active = stage
        yield
        self.active = None


class Fate:
    """Run one record through parse → duplicate check → create → publish, and settle it."""

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
        self._creator = creator
        self._publisher = publisher
        self._backoff = backoff
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._secrets = tuple(secret for secret in secrets if secret)
        self._gate = gate or EnvironmentGate(metrics, {})
        self._deadline = deadline_seconds
        self._publish_attempts = publish_attempts

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
                failure = Failure(INTERNAL_STAGE, type(err).__name__, _describe_error(err), True, 1)
                return await self._dead_letter(record, failure, stop, started)

    async def _decide(self, record: SourceRecord, stop: asyncio.Event, started: float) -> Settled:
        decode_seconds: dict[str, float] = {}
        try:
            async with self._metrics.stage_timer("decode", decode_seconds):
                job = await self._parse(record.value)
        except PermanentError as err:
            failure = Failure(err.stage, type(err).__name__, err.message, False, 1)
            return await self._dead_letter(record, failure, stop, started)
        except Exception as err:  # a bug in parsing: parsing again cannot help
            log.error("request.unexpected_error", stage="decode", exc_info=err)
            failure = Failure("decode", type(err).__name__, _describe_error(err), True, 1)
            return await self._dead_letter(record, failure, stop, started)
        with bound_contextvars(
            request_id=job.request_id,
            collection_id=job.collection_id,
            snapshot_id=job.snapshot_id,
        ):
            log.debug("request.received", source=describe(record))
            return await self._create(record, job, stop, started, decode_seconds)

    async def _parse(self, value: bytes | None) -> SnapshotJob:
        """Small messages on the loop; big ones (parsed and their inline documents built into
        a batch) in the worker process: a thread would hold the GIL, and so the loop. An
        oversized one is refused on the loop at once: sending it to the worker would copy it."""
        if value is not None and PARSE_OFF_LOOP_BYTES < len(value) <= self._max_message_bytes:
            return await run_in_process(prepare_request, value, max_bytes=self._max_message_bytes)
        return parse_request(value, max_bytes=self._max_message_bytes)

    async def _create(
        self,
        record: SourceRecord,
        job: SnapshotJob,
        stop: asyncio.Event,
        started: float,
        durations: dict[str, float],
    ) -> Settled:
        attempt = 0
        began = self._gate.working_clock()
        while True:
            attempt += 1
            clock = StageClock(self._metrics)
            try:
                outcome = await self._attempt_within(job, clock, began)
                break
            except asyncio.CancelledError:
                raise
            except DeadlineExceededError as err:
                stage = clock.active or LOOKUP_STAGE
                failure = Failure(stage, "DeadlineExceeded", str(err), True, attempt)
                return await self._dead_letter(record, failure, stop, started)
            except PermanentError as err:
                failure = Failure(err.stage, type(err).__name__, err.message, False, attempt)
                return await self._dead_letter(record, failure, stop, started)
            except EnvironmentFaultError as err:
                attempt -= 1  # not the request's fault: its attempts are kept for its own
                await self._wait_environment(err, record, stop)
                continue
            except Exception as err:
                stage = clock.active or _own_stage(err) or LOOKUP_STAGE
                message = _describe_error(err)
                if not isinstance(err, AkisnapError):
                    log.error(
                        "request.unexpected_error", stage=stage, attempt=attempt, exc_info=err
                    )
                if self._backoff.exhausted(attempt):
                    failure = Failure(stage, type(err).__name__, message, True, attempt)
                    return await self._dead_letter(record, failure, stop, started)
                delay = self._backoff.delay(attempt)
                self._metrics.retried(stage)
                log.warning(
                    "request.retry",
                    stage=stage,
                    attempt=attempt,
                    error_class=type(err).__name__,
                    error=safe_message(message, self._secrets),
                    retry_in_seconds=round(delay, 3),
                )
                if not await sleep_unless(stop, delay):
                    raise AbandonedError(
                        f"stopped while waiting to retry {describe(record)}"
                    ) from err
        self._gate.worked()
        return await self._publish_result(
            record, job, outcome, stop=stop, started=started, durations=durations
        )

    async def _attempt_within(
        self, job: SnapshotJob, clock: StageClock, began: float
    ) -> CreateOutcome:
        """One attempt, cut off at the request's deadline (counted in working time)."""
        left = self._deadline - (self._gate.working_clock() - began)
        if left <= 0:
            raise DeadlineExceededError(f"not done within its deadline of {self._deadline:g}s")
        try:
            async with asyncio.timeout(left) as limit:
                return await self._attempt(job, clock)
        except TimeoutError:
            if limit.expired():
                raise DeadlineExceededError(
                    f"not done within its deadline of {self._deadline:g}s"
                ) from None
            raise

    async def _wait_environment(
        self, fault: EnvironmentFaultError, record: SourceRecord, stop: asyncio.Event
    ) -> None:
        """Shut the gate (counted, logged once) and wait until it opens again."""
        self._gate.trip(fault)
        if not await self._gate.wait_open(stop):
            raise AbandonedError(
                f"stopped while waiting out an environment fault ({fault.kind}) for "
                f"{describe(record)}"
            ) from fault

    async def _attempt(self, job: SnapshotJob, clock: StageClock) -> CreateOutcome:
        with clock.attribute(LOOKUP_STAGE):
            found = await self._creator.existing(job)
        if found is not None:
            return CreateOutcome(found, duplicate=True, stage_seconds={})
        return await self._creator(job, clock)

    async def _publish_result(
        self,
        record: SourceRecord,
        job: SnapshotJob,
        outcome: CreateOutcome,
        *,
        stop: asyncio.Event,
        started: float,
        durations: dict[str, float],
    ) -> Settled:
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

    async def _dead_letter(
        self, record: SourceRecord, failure: Failure, stop: asyncio.Event, started: float
    ) -> Settled:
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
                    await self._wait_environment(fault, record, stop)
                    continue
                attempt += 1
                self._metrics.publish_retried(what)
                if attempt >= self._publish_attempts:
                    self._metrics.publish_stuck.inc()
                    log.error(
                        "publish.stuck",
                        what=what,
                        source=describe(record),
                        attempts=attempt,
                        error_class=type(err).__name__,
                        error=safe_message(str(err), self._secrets),
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
                    error=safe_message(str(err), self._secrets),
                    retry_in_seconds=round(delay, 3),
                )
                if not await sleep_unless(stop, delay):
                    raise AbandonedError(f"stopped before the {what} was published") from err


def _known_ids(value: bytes | None) -> dict[str, str]:
    try:
        return peek_ids(value)
    except Exception:  # a log nicety: never let it decide anything
        return {}


def _own_stage(err: BaseException) -> str | None:
    return err.stage if isinstance(err, AkisnapError) else None


def _describe_error(err: BaseException) -> str:
    if isinstance(err, AkisnapError):
        return err.message
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
