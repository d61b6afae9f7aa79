"""The daemon's HTTP port: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (ready).

It starts before anything else, so an operator sees the metrics and the liveness of a daemon
whose broker does not answer yet. Liveness means the consume loop is making progress: it turns
unhealthy only when work is waiting and the loop has not moved for a while (a member stuck in
a rebalance or a fetch, aiokafka #727/#625); readiness is whatever the daemon's ``ready()``
says (consumer joined, store reachable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from daemon.metrics import Metrics

READY_TIMEOUT_SECONDS = 5.0
MAX_REASON_CHARS = 300

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]
AliveCheck = Callable[[], tuple[bool, str]]


class Liveness:
    """Progress of the consume loop, for /healthz.

    The loop calls :meth:`beat` each time it makes progress (a fetch returned, a message
    reached a terminal state) and :meth:`waiting` when work is or is not pending (fetched
    messages not yet done, or lag on owned partitions)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_beat = clock()
        self._waiting = False
        self._waiting_since = self._last_beat
        self._failed: str | None = None

    def beat(self) -> None:
        self._last_beat = self._clock()

    def waiting(self, is_waiting: bool) -> None:
        if is_waiting and not self._waiting:
            self._waiting_since = self._clock()
        self._waiting = is_waiting

    def fail(self, reason: str) -> None:
        """Something that does not come back by itself broke (a background loop died, a
        partition stopped): unhealthy from now on, so the pod is restarted. The first reason
        is kept."""
        if self._failed is None:
            self._failed = reason

    def check(self, stall_seconds: float) -> tuple[bool, str]:
        """Unhealthy once :meth:`fail` was called, or when work has been waiting and no beat
        came for ``stall_seconds``."""
        if self._failed is not None:
            return False, f"failed: {self._failed}"
        if not self._waiting:
            return True, "ok: idle"
        now = self._clock()
        quiet = now - max(self._last_beat, self._waiting_since)
        if quiet > stall_seconds:
            return False, (
                f"stalled: work is waiting and the consume loop made no progress for "
                f"{quiet:.1f}s (limit {stall_seconds:g}s)"
            )
        return True, "ok"


class HealthServer:
    """aiohttp server for /metrics, /healthz and /readyz on one port (0: any free port)."""

    def __init__(
        self,
        metrics: Metrics,
        port: int,
        *,
        host: str = "0.0.0.0",
        ready: ReadyCheck,
        alive: AliveCheck,
        ready_timeout_seconds: float = READY_TIMEOUT_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._port = port
        self._host = host
        self._ready = ready
        self._alive = alive
        self._ready_timeout = ready_timeout_seconds
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def bound_port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("HealthServer is not started")
        return self._bound_port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_healthz)
        app.router.add_get("/readyz", self._serve_readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._bound_port = int(address[1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._bound_port = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": self._metrics.content_type}
        )

    async def _serve_healthz(self, _request: web.Request) -> web.Response:
        try:
            ok, reason = self._alive()
        except Exception as exc:
            ok, reason = False, f"liveness check failed: {type(exc).__name__}"
        return _answer(ok, reason)

    async def _serve_readyz(self, _request: web.Request) -> web.Response:
        try:
            ok, reason = await asyncio.wait_for(self._ready(), self._ready_timeout)
        except TimeoutError:
            ok, reason = False, f"readiness check timed out after {self._ready_timeout:g}s"
        except Exception as exc:
            ok, reason = False, f"readiness check failed: {type(exc).__name__}: {exc}"
        return _answer(ok, reason)


def _answer(ok: bool, reason: str) -> web.Response:
    """200 ``ok``, or 503 with the reason (plain text, one line)."""
    if ok:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"{reason[:MAX_REASON_CHARS]}\n")
