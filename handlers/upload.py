"""Stage 'upload': move encoded parts into the store under the snapshot's keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

from handlers.codecs import part_extension
from handlers.encode import EncodedSnapshot
from handlers.errors import first_cause
from handlers.job import SnapshotJob
from handlers.layout import part_key
from handlers.metadata import PartInfo
from handlers.stores import ObjectStore


class Uploader:
    """Puts parts concurrently (bounded); the store itself does multipart for big parts."""

    def __init__(self, store: ObjectStore, max_parallel_parts: int = 2) -> None:
        self._store = store
        self._slots = asyncio.Semaphore(max_parallel_parts)

    async def __call__(self, job: SnapshotJob, encoded: EncodedSnapshot) -> tuple[PartInfo, ...]:
        extension = part_extension(job.format)
        infos = tuple(
            PartInfo(
                key=part_key(job.collection_id, job.snapshot_id, part.index, extension),
                size=part.size,
                rows=part.rows,
                sha256=part.sha256,
            )
            for part in encoded.parts
        )
        try:
            async with asyncio.TaskGroup() as group:
                for info, part in zip(infos, encoded.parts, strict=True):
                    group.create_task(self._put(info, part.path))
        except BaseExceptionGroup as errors:
            raise first_cause(errors) from None
        return infos

    async def _put(self, info: PartInfo, path: Path) -> None:
        async with self._slots:
            await self._store.put_file(info.key, path, sha256_hex=info.sha256)
