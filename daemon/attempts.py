"""Run with retries: take one consumed record as far as a snapshot, or a reason to give up.

:class:`Attempts` decodes the request, checks for an existing snapshot and runs the creator,
retrying with backoff; it publishes nothing (:mod:`daemon.settle` does). Its rules:

- a :class:`~handlers.errors.PermanentError` (bad input) gives up at once, with its own stage;
- a :class:`~handlers.errors.TransientError`, or any other exception (a bug or an unknown
  failure, logged with its traceback), is retried with backoff; when the attempts run out it
  gives up, ``retryable=true``;
- an :class:`~handlers.errors.EnvironmentFaultError` (store unreachable, credentials refused,
  ...) is nobody's request's fault: it shuts the environment gate (every partition pauses) and
  the request waits there and is tried again, without using up an attempt and without its
  deadline running, however long that takes;
- a request not done ``deadline`` seconds of working time after it arrived gives up,
  ``retryable=true``;
- a snapshot that already exists for the request id is not rewritten: a duplicate.

Every stage is timed by a :class:`~handlers.stages.StageClock`, which also names the stage a
failure is blamed on. :class:`~daemon.verdict.AbandonedError` when told to stop first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from daemon.dead_letters.letter import Failure, SourceRecord, describe, safe_message
from daemon.environment import EnvironmentGate
from daemon.events import parse_request, prepare_request
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.retry import Backoff, sleep_unless
from daemon.verdict import AbandonedError
from handlers.create import CreateOutcome, existing_or_create
from handlers.errors import AkisnapError, EnvironmentFaultError, PermanentError
from handlers.executor import run_in_process
from handlers.job import SnapshotJob
from handlers.metadata import SnapshotMetadata
from handlers.stages import StageClock

log = get_logger("akisnap.fate")  # the logger of a request's fate, both steps alike

# Requests bigger than this are parsed off the loop (JSON parsing holds the loop otherwise).
PARSE_OFF_LOOP_BYTES = 256 * 1024
DEFAULT_DEADLINE_SECONDS = 900.0


class Creator(Protocol):
    """The part of :class:`handlers.create.SnapshotCreator` the daemon drives."""

    async def existing(self, job: SnapshotJob) -> SnapshotMetadata | None: ...

    async def __call__(self, job: SnapshotJob, clock: StageClock) -> CreateOutcome: ...


@dataclass(frozen=True)
class Decoded:
    """The job a record asks for, and the seconds its decoding took (for the result event)."""

    job: SnapshotJob
    durations: dict[str, float]


class DeadlineExceededError(Exception):
    """The request was not done within its deadline (working time, pauses left out)."""


class Attempts:
    """Decode one record, then make its snapshot with retries; either step may come to a
    :class:`~daemon.dead_letters.letter.Failure` instead."""

    def __init__(
        self,
        *,
        creator: Creator,
        backoff: Backoff,
        metrics: Metrics,
        gate: EnvironmentGate,
        max_message_bytes: int,
        secrets: Sequence[str] = (),
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    ) -> None:
        self._creator = creator
        self._backoff = backoff
        self._metrics = metrics
        self._gate = gate
        self._max_message_bytes = max_message_bytes
        self._secrets = tuple(secret for secret in secrets if secret)
        self._deadline = deadline_seconds

    async def decode(self, record: SourceRecord) -> Decoded | Failure:
        """The job the record asks for; a failure is never retried (parsing again cannot
        help)."""
        clock = self._clock()
        try:
            async with clock("decode"):
                job = await self._parse(record.value)
        except PermanentError as err:
            return Failure(clock.stage_of(err), type(err).__name__, err.message, False, 1)
        except Exception as err:  # a bug in parsing
            stage = clock.stage_of(err)
            log.error("request.unexpected_error", stage=stage, exc_info=err)
            return Failure(stage, type(err).__name__, describe_error(err), True, 1)
        return Decoded(job, clock.seconds)

    def _clock(self) -> StageClock:
        return StageClock(self._metrics.stage_observed)

    async def _parse(self, value: bytes | None) -> SnapshotJob:
        """Small messages on the loop; big ones (parsed and their inline documents built into
        a batch) in the worker process: a thread would hold the GIL, and so the loop. An
        oversized one is refused on the loop at once: sending it to the worker would copy it."""
        if value is not None and PARSE_OFF_LOOP_BYTES < len(value) <= self._max_message_bytes:
            return await run_in_process(prepare_request, value, max_bytes=self._max_message_bytes)
        return parse_request(value, max_bytes=self._max_message_bytes)

    async def make(
        self, record: SourceRecord, job: SnapshotJob, stop: asyncio.Event
    ) -> CreateOutcome | Failure:
        """The job's snapshot (created, or found: a duplicate), with retries."""
        attempt = 0
        began = self._gate.working_clock()
        while True:
            attempt += 1
            clock = self._clock()
            try:
                outcome = await self._attempt_within(job, clock, began)
                self._gate.worked()
                return outcome
            except asyncio.CancelledError:
                raise
            except DeadlineExceededError as err:
                return Failure(clock.stage_of(err), "DeadlineExceeded", str(err), True, attempt)
            except PermanentError as err:
                return Failure(clock.stage_of(err), type(err).__name__, err.message, False, attempt)
            except EnvironmentFaultError as err:
                attempt -= 1  # not the request's fault: its attempts are kept for its own
                await self._gate.wait_out(err, stop, describe(record))
            except Exception as err:
                stage = clock.stage_of(err)
                if self._backoff.exhausted(attempt):
                    self._log_unexpected(err, stage, attempt)
                    return Failure(stage, type(err).__name__, describe_error(err), True, attempt)
                await self._before_retry(err, stage, attempt, record, stop)

    async def _before_retry(
        self, err: Exception, stage: str, attempt: int, record: SourceRecord, stop: asyncio.Event
    ) -> None:
        """Count and log the retry, then wait its backoff (AbandonedError if told to stop)."""
        self._log_unexpected(err, stage, attempt)
        delay = self._backoff.delay(attempt)
        self._metrics.retried(stage)
        log.warning(
            "request.retry",
            stage=stage,
            attempt=attempt,
            error_class=type(err).__name__,
            error=safe_message(describe_error(err), self._secrets),
            retry_in_seconds=round(delay, 3),
        )
        if not await sleep_unless(stop, delay):
            raise AbandonedError(f"stopped while waiting to retry {describe(record)}") from err

    def _log_unexpected(self, err: Exception, stage: str, attempt: int) -> None:
        if not isinstance(err, AkisnapError):
            log.error("request.unexpected_error", stage=stage, attempt=attempt, exc_info=err)

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

    async def _attempt(self, job: SnapshotJob, clock: StageClock) -> CreateOutcome:
        return await existing_or_create(
            self._creator, job, lambda: self._creator(job, clock), clock
        )


def describe_error(err: BaseException) -> str:
    """An error's message for a dead letter or a log line (its class when it says nothing)."""
    if isinstance(err, AkisnapError):
        return err.message
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
