"""The environment gate: one fault of the environment pauses all work until a probe passes.

An :class:`~handlers.errors.EnvironmentFaultError` (store unreachable, credentials refused,
bucket missing, broker unavailable) is nobody's request's fault, so retrying each request and
then dead-lettering it would only empty the backlog into the dead-letter topic. Instead the
first such error shuts the gate: every worker waits at it, the consumer pauses every
partition, ``/readyz`` answers not-ready with the reason, and one probe task calls the
component's probe (the store's HeadBucket, a connection to the broker) with backoff. When a
probe passes the gate opens and the waiting requests go on, however long it took.

Logged once per state change (``environment.fault``, ``environment.recovered``); every fault
seen is counted in ``environment_errors_total{kind}`` and the shut state is the
``environment_paused`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from daemon.dead_letters.letter import safe_message
from daemon.logging import get_logger
from daemon.metrics import Metrics
from daemon.retry import Backoff
from daemon.verdict import AbandonedError
from handlers.errors import EnvironmentFaultError

log = get_logger("akisnap.environment")

Probe = Callable[[], Awaitable[None]]
"""Returns when the component answers again; raises while it does not."""

PROBE_BACKOFF = Backoff(attempts=1, base_seconds=0.5, cap_seconds=15.0)
# Delays stop growing after this many failed probes (the cap is reached well before).
PROBE_BACKOFF_STEPS = 8


class EnvironmentGate:
    """Open while the environment works; shut from a fault until its component's probe passes."""

    def __init__(
        self,
        metrics: Metrics,
        probes: Mapping[str, Probe],
        *,
        backoff: Backoff = PROBE_BACKOFF,
        secrets: Sequence[str] = (),
    ) -> None:
        self._metrics = metrics
        self._probes = dict(probes)
        self._backoff = backoff
        self._secrets = tuple(secrets)
        self._open = asyncio.Event()
        self._open.set()
        self._fault: EnvironmentFaultError | None = None
        self._since = 0.0
        self._paused_before = 0.0  # seconds shut, summed over the faults already over
        self._prober: asyncio.Task[None] | None = None
        # Faults since the last request that went through: a probe that passes while the
        # work still fails (HeadBucket allowed, PutObject denied) must not make a tight loop.
        self._relapses = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def working_clock(self) -> float:
        """A monotonic clock that stands still while the gate is shut: a request's working
        time (for its deadline, and for /healthz's oldest request) leaves out the pauses."""
        now = time.monotonic()
        paused = self._paused_before + (0.0 if self._fault is None else now - self._since)
        return now - paused

    @property
    def reason(self) -> str:
        """Why the gate is shut, one line without secrets ('' when open)."""
        fault = self._fault
        if fault is None:
            return ""
        waited = time.monotonic() - self._since
        text = f"environment fault ({fault.kind}) for {waited:.0f}s: {fault.message}"
        return safe_message(text, self._secrets)

    def trip(self, fault: EnvironmentFaultError) -> None:
        """Count ``fault``; shut the gate and start probing unless it is shut already."""
        self._metrics.environment_error(fault.kind)
        if self._fault is not None:
            return
        self._fault = fault
        self._since = time.monotonic()
        self._open.clear()
        self._metrics.environment_paused.set(1)
        log.error(
            "environment.fault",
            kind=fault.kind,
            component=fault.component,
            error_class=type(fault).__name__,
            error=safe_message(fault.message, self._secrets),
            note="consumption paused; nothing is dead-lettered while this lasts",
        )
        self._relapses += 1
        self._prober = asyncio.create_task(self._probe_until_fixed(fault), name="akisnap-probe")

    def worked(self) -> None:
        """A request went through: the environment works (probes start small again)."""
        self._relapses = 0

    async def wait_out(self, fault: EnvironmentFaultError, stop: asyncio.Event, what: str) -> None:
        """Trip on ``fault`` and wait until the gate opens; AbandonedError if ``stop`` is set
        first (``what`` was waiting: a request, a record's result)."""
        self.trip(fault)
        if not await self.wait_open(stop):
            raise AbandonedError(
                f"stopped while waiting out an environment fault ({fault.kind}) for {what}"
            ) from fault

    async def wait_open(self, stop: asyncio.Event) -> bool:
        """Wait until the gate is open (True) or ``stop`` is set (False)."""
        if self.is_open:
            return not stop.is_set()
        opened = asyncio.ensure_future(self._open.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({opened, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (opened, stopped):
                task.cancel()
        return self.is_open and not stop.is_set()

    async def close(self) -> None:
        """Stop probing (shutdown)."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober

    async def _probe_until_fixed(self, fault: EnvironmentFaultError) -> None:
        probe = self._probes.get(fault.component)
        attempt = 0
        while True:
            attempt += 1
            step = min(attempt + self._relapses - 1, PROBE_BACKOFF_STEPS)
            await asyncio.sleep(self._backoff.delay(step))
            if probe is None:
                break  # nothing to probe with: let the work itself try again
            try:
                await probe()
                break
            except EnvironmentFaultError as still:
                self._metrics.environment_error(still.kind)
                log.debug("environment.probe_failed", kind=still.kind, attempt=attempt)
            except Exception as err:  # probing must go on whatever the probe raises
                log.debug("environment.probe_failed", error_class=type(err).__name__)
        self._recovered(fault, attempt)

    def _recovered(self, fault: EnvironmentFaultError, probes: int) -> None:
        log.info(
            "environment.recovered",
            kind=fault.kind,
            paused_seconds=round(time.monotonic() - self._since, 3),
            probes=probes,
        )
        self._paused_before += time.monotonic() - self._since
        self._fault = None
        self._prober = None
        self._metrics.environment_paused.set(0)
        self._open.set()
