"""SHA-256 of files and streams (hashlib releases the GIL on large updates)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from handlers.executor import run_blocking

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def sha256_stream(chunks: AsyncIterator[bytes]) -> tuple[str, int]:
    """(hex digest, byte count) of a stream; hashing runs in the bounded executor (a 4 MiB
    chunk holds the loop for milliseconds otherwise)."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        await run_blocking(digest.update, chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it, so no second read is needed."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = path.open("wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self.size += view.nbytes
        return self._file.write(view)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class HashedOutput:
    """A part writer whose output goes through a :class:`HashingFile`: its SHA-256 and size
    are known the moment it closes."""

    _sink: HashingFile

    @property
    def sha256(self) -> str:
        return self._sink.sha256

    @property
    def size(self) -> int:
        return self._sink.size
