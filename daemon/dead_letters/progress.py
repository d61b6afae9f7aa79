"""Replay progress: which dead letters a replay group has re-sent, kept in its commit metadata.

The committed offset of a partition is its first dead letter not yet replayed; the offset's
metadata lists the dead letters beyond it that were replayed already (``akisnap-dlq/1 3-7,9``).

Why it is kept although snapshot ids are deterministic: they make a second
replay of a request that then succeeded harmless (a "duplicate" result). They do not cover a
request that fails again: its new dead letter joins the old one on the topic, so a replay that
forgot its progress would re-send the old one on every run, each run adding one more dead letter
(the replay count only bounds each copy). The committed offset alone would do for an unfiltered
replay; the handled ranges exist for a filtered one (``--stage upload``), which must skip what
it replayed above a dead letter it left behind for a later run.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

PROGRESS_FORMAT = "akisnap-dlq/1"
# Brokers refuse commit metadata above offset.metadata.max.bytes (default 4096).
MAX_PROGRESS_CHARS = 3500


@dataclass
class PartitionProgress:
    """One partition's replay progress: everything below ``committed`` is done, and so are the
    offsets in ``handled`` (inclusive ranges) above it."""

    committed: int
    handled: list[list[int]] = field(default_factory=list)
    start: int = 0
    scanned_to: int = 0
    first_unhandled: int | None = None

    def begin(self, start: int) -> None:
        self.start = self.scanned_to = max(start, self.committed)

    def is_handled(self, offset: int) -> bool:
        index = bisect.bisect_right(self.handled, offset, key=lambda r: r[0]) - 1
        return index >= 0 and self.handled[index][0] <= offset <= self.handled[index][1]

    def saw(self, offset: int, *, handled: bool) -> None:
        if handled and not self.is_handled(offset):
            _add(self.handled, offset)
        elif not handled and self.first_unhandled is None:
            self.first_unhandled = offset
        self.scanned_to = max(self.scanned_to, offset + 1)

    def finished(self, end: int) -> None:
        self.scanned_to = max(self.scanned_to, end)

    def commit_point(self) -> tuple[int, str]:
        if self.start > self.committed:
            low = self.committed
        elif self.first_unhandled is not None:
            low = self.first_unhandled
        else:
            low = self.scanned_to
        clip(self.handled, low)
        return low, encode_progress(low, self.handled)

    def room_for(self, offset: int) -> bool:
        """Whether the commit metadata still fits once ``offset`` is handled too."""
        trial = PartitionProgress(
            self.committed,
            [list(r) for r in self.handled],
            self.start,
            self.scanned_to,
            self.first_unhandled,
        )
        trial.saw(offset, handled=True)
        return len(trial.commit_point()[1]) <= MAX_PROGRESS_CHARS


def _add(ranges: list[list[int]], offset: int) -> None:
    if ranges and ranges[-1][1] + 1 == offset:
        ranges[-1][1] = offset
        return
    bisect.insort(ranges, [offset, offset])
    merged: list[list[int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    ranges[:] = merged


def clip(ranges: list[list[int]], low: int) -> None:
    kept = [[max(lo, low), hi] for lo, hi in ranges if hi >= low]
    ranges[:] = kept


def encode_progress(low: int, ranges: Sequence[Sequence[int]]) -> str:
    """``akisnap-dlq/1 3-7,9``: handled offsets above the committed one, relative to it."""
    parts = [
        f"{lo - low}" if lo == hi else f"{lo - low}-{hi - low}" for lo, hi in ranges if hi >= low
    ]
    return f"{PROGRESS_FORMAT} {','.join(parts)}".rstrip()


def decode_progress(committed: int, metadata: str | None) -> list[list[int]]:
    """The inverse of :func:`encode_progress`; anything unreadable means 'nothing beyond'."""
    if not metadata or not metadata.startswith(PROGRESS_FORMAT):
        return []
    ranges: list[list[int]] = []
    try:
        for item in metadata[len(PROGRESS_FORMAT) :].strip().split(","):
            if not item:
                continue
            lo, _, hi = item.partition("-")
            ranges.append([committed + int(lo), committed + int(hi or lo)])
    except ValueError:
        return []
    return sorted(ranges)
