"""The one timing wrapper: every pipeline stage runs inside a :class:`StageClock`.

The clock is the single source of a stage's name, for its time (the result event's
``durations``, the daemon's ``akisnap_stage_duration_seconds{stage}``) and for the stage a
failure is blamed on (a dead letter's ``akisnap.error.stage``, ``retries_total{stage}``). A
failed stage is named once, by :func:`failing_stage`, and its time is recorded under that same
name, so a dead letter's stage always has the time of its failure behind it: bad input (a
:class:`~handlers.errors.PermanentError`) is blamed on the stage its error names (a request or
documents found invalid while decoding or reading is ``validate``), anything else on the stage
that was running.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

from handlers.errors import AkisnapError, PermanentError

# The ``stage`` label values of the stage metrics and of dead letters (DESIGN "Events",
# "Metrics"); the daemon adds ``internal`` for a failure while deciding an outcome.
STAGES = ("decode", "validate", "source", "encode", "upload", "verify")
# A failure outside any stage, other than ours, is blamed on the store: between stages the
# daemon only reads it (the duplicate check).
UNTIMED_STAGE = "upload"

Observer = Callable[[str, float], None]
"""Told each stage's name and seconds as it ends (the daemon's stage histogram)."""


def failing_stage(err: BaseException, running: str) -> str:
    """The stage a failure inside stage ``running`` is blamed on."""
    return err.stage if isinstance(err, PermanentError) else running


class StageClock:
    """Times the stages of one attempt: ``async with clock("encode"): ...``."""

    def __init__(self, observe: Observer | None = None) -> None:
        self._observe = observe
        self.seconds: dict[str, float] = {}
        self.failed: str | None = None

    @contextlib.asynccontextmanager
    async def __call__(self, stage: str) -> AsyncIterator[None]:
        self.failed = None
        name = stage
        started = time.perf_counter()
        try:
            yield
        except BaseException as err:  # cancellation too: a deadline blames the running stage
            name = self.failed = failing_stage(err, stage)
            raise
        finally:
            self._record(name, time.perf_counter() - started)

    @contextlib.contextmanager
    def blame(self, stage: str) -> Iterator[None]:
        """Blame ``stage`` for a failure inside, without timing it (work between stages)."""
        self.failed = None
        try:
            yield
        except BaseException as err:
            self.failed = failing_stage(err, stage)
            raise

    def stage_of(self, err: BaseException) -> str:
        """The stage ``err``, which ended this attempt, is blamed on."""
        if self.failed is not None:
            return self.failed
        return err.stage if isinstance(err, AkisnapError) else UNTIMED_STAGE

    def _record(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        if self._observe is not None:
            self._observe(stage, seconds)
