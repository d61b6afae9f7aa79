"""How many bytes the requests being worked on may hold at once, counted as the bytes they
will hold (an export's size, an inline payload's decoded size), not their message size.

A request waits until its bytes fit beside those already held; one request larger than the
whole budget still runs, alone among the large ones. Each request is charged at most
``LARGE_SHARE`` of the budget, so the rest stays open for small requests: a small snapshot
never waits behind a large one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

LARGE_SHARE = 0.75


class ByteBudget:
    def __init__(self, max_bytes: int, on_change: Callable[[int], None] | None = None) -> None:
        self.max_bytes = max(1, max_bytes)
        self.held = 0
        self._on_change = on_change or (lambda held: None)
        self._freed: asyncio.Event | None = None  # set (and dropped) when bytes are freed

    def charge(self, nbytes: int) -> int:
        """What a request of ``nbytes`` is charged: capped, so small requests keep room."""
        return max(0, min(nbytes, int(self.max_bytes * LARGE_SHARE)))

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        charged = self.charge(nbytes)
        while self.held + charged > self.max_bytes:
            self._freed = self._freed or asyncio.Event()
            await self._freed.wait()
        self._change(charged)
        try:
            yield
        finally:
            self._change(-charged)
            freed, self._freed = self._freed, None
            if freed is not None:
                freed.set()

    def _change(self, delta: int) -> None:
        self.held += delta
        self._on_change(self.held)
