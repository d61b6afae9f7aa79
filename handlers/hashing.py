"""SHA-256 of files and streams (hashlib releases the GIL on large updates)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def sha256_stream(chunks: AsyncIterator[bytes]) -> tuple[str, int]:
    """(hex digest, byte count) of a stream."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
