"""Stage 'upload': move encoded parts into the store under the snapshot's keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

from handlers.akidb.sidecar import data_key, is_akidb_format
from handlers.codecs import part_extension
from handlers.encode import EncodedSnapshot
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
                key=_key(job, part.index, extension),
                size=part.size,
                rows=part.rows,
                sha256=part.sha256,
            )
            for part in encoded.parts
        )
        async with asyncio.TaskGroup() as group:
            for info, part in zip(infos, encoded.parts, strict=True):
                group.create_task(self._put(info, part.path))
        return infos

    async def _put(self, info: PartInfo, path: Path) -> None:
        async with self._slots:
            await self._store.put_file(info.key, path, sha256_hex=info.sha256)


def _key(job: SnapshotJob, index: int, extension: str) -> str:
    """AkiDB formats are one file at AkiDB's own key; native snapshots are parts."""
    if is_akidb_format(job.format):
        return data_key(job.format, job.collection_id, job.snapshot_id)
    return part_key(job.collection_id, job.snapshot_id, index, extension)
