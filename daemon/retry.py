"""Exponential backoff with full jitter: how long to wait before the next attempt.

The delay before retry ``n`` (1-based) is drawn uniformly from ``[0, min(cap, base * 2**(n-1))]``
("full jitter"), so many workers failing at once do not retry in lockstep. ``attempts`` is the
total number of tries of one request, the first included.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Protocol


class _RetrySettings(Protocol):
    @property
    def retry_attempts(self) -> int: ...

    @property
    def retry_base_seconds(self) -> float: ...

    @property
    def retry_cap_seconds(self) -> float: ...


@dataclass(frozen=True)
class Backoff:
    """Attempts, base and cap of the exponential backoff (all from settings)."""

    attempts: int = 5
    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_seconds < 0 or self.cap_seconds < 0:
            raise ValueError("base and cap must not be negative")

    @classmethod
    def from_settings(cls, settings: _RetrySettings) -> Backoff:
        return cls(
            attempts=settings.retry_attempts,
            base_seconds=settings.retry_base_seconds,
            cap_seconds=settings.retry_cap_seconds,
        )

    def ceiling(self, attempt: int) -> float:
        """The largest delay after failed attempt ``attempt`` (1-based), before jitter."""
        exponent = min(max(attempt - 1, 0), 62)
        return min(self.cap_seconds, self.base_seconds * (2.0**exponent))

    def delay(self, attempt: int) -> float:
        """A delay drawn with full jitter after failed attempt ``attempt`` (1-based)."""
        return self.rng.uniform(0.0, self.ceiling(attempt))

    def exhausted(self, attempt: int) -> bool:
        """True once ``attempt`` tries were made and no more are allowed."""
        return attempt >= self.attempts


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when the full sleep happened."""
    if stop.is_set():
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return not stop.is_set()
