"""A stored object read as a seekable file, by ranges, from code that runs in a worker thread.

pyarrow and the page reader (handlers.codecs.parquet_pages) read files synchronously, in a
worker thread; an object in S3 is read by ranged GETs on the event loop. Each read is one
GET, handed to the loop and waited for; ranges the reader knows it will need next are
fetched ahead with :meth:`RangedFile.prefetch`, concurrently, and then served from memory.
A lookup is bound by round trips, not bytes: ranges a few KiB apart are fetched as one.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine, Sequence
from typing import Any, BinaryIO, TypeVar

from handlers.stores.base import ObjectStore

PREFETCH_CONCURRENCY = 8
MERGE_GAP_BYTES = 64 * 1024  # ranges this close are one GET: a round trip costs more
Span = tuple[int, int]  # (start, length)
T = TypeVar("T")


class RangedFile(io.RawIOBase, BinaryIO):
    """Object ``key`` of ``size`` bytes, read by ranged GETs run on ``loop``.

    Read it from a worker thread only (``asyncio.to_thread``): each read waits for the loop.
    ``bytes_read`` counts the bytes fetched from the store. Prefetched ranges are kept until
    the next ``prefetch`` (one row group's pages at a time), so memory stays bounded."""

    def __init__(
        self, store: ObjectStore, key: str, size: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self._store, self._key, self._size, self._loop = store, key, size, loop
        self._position = 0
        self._ahead: list[tuple[int, bytes]] = []
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"seek to {base + offset}, before the start of {self._key}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        length = max(0, min(len(view), self._size - self._position))
        if not length:
            return 0
        data = self._held(self._position, length)
        if data is None:
            data = self._wait(self._store.get_range(self._key, self._position, length))
            self.bytes_read += len(data)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def prefetch(self, spans: Sequence[Span]) -> None:
        """Fetch ``spans`` now (close ones merged), at most PREFETCH_CONCURRENCY at once, for
        the reads to come; what an earlier prefetch held is dropped."""
        merged = merge_spans(spans)
        fetched = self._wait(self._fetch_all(merged))
        self._ahead = [(start, data) for (start, _), data in zip(merged, fetched, strict=True)]
        self.bytes_read += sum(len(data) for data in fetched)

    async def _fetch_all(self, spans: Sequence[Span]) -> list[bytes]:
        slots = asyncio.Semaphore(PREFETCH_CONCURRENCY)

        async def fetch(start: int, length: int) -> bytes:
            async with slots:
                return await self._store.get_range(self._key, start, length)

        return list(await asyncio.gather(*(fetch(start, length) for start, length in spans)))

    def _held(self, start: int, length: int) -> bytes | None:
        for first, data in self._ahead:
            if first <= start and start + length <= first + len(data):
                return data[start - first : start - first + length]
        return None

    def _wait(self, work: Coroutine[Any, Any, T]) -> T:
        if _running_loop() is self._loop:
            work.close()
            raise RuntimeError("a RangedFile read on its event loop's thread would never end")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def merge_spans(spans: Sequence[Span], gap: int = MERGE_GAP_BYTES) -> list[Span]:
    """``spans`` in order, those that overlap or lie at most ``gap`` bytes apart joined."""
    merged: list[Span] = []
    for start, length in sorted(spans):
        if merged and start <= sum(merged[-1]) + gap:
            first, known = merged[-1]
            merged[-1] = (first, max(known, start + length - first))
        else:
            merged.append((start, length))
    return merged
