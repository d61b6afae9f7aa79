"""Stage 'upload': move encoded parts into the store under the snapshot's keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from handlers.codecs import part_extension
from handlers.encode import EncodedSnapshot
from handlers.job import SnapshotJob
from handlers.layout import part_key
from handlers.metadata import PartInfo
from handlers.stores import ObjectStore


@dataclass(frozen=True)
class UploadedParts:
    parts: tuple[PartInfo, ...]
    vouched: frozenset[str]
    """Keys whose bytes the store checked against their SHA-256 on the way in."""

    @property
    def unvouched(self) -> tuple[PartInfo, ...]:
        return tuple(part for part in self.parts if part.key not in self.vouched)


class Uploader:
    """Puts parts concurrently (bounded); the store itself does multipart for big parts."""

    def __init__(self, store: ObjectStore, max_parallel_parts: int = 2) -> None:
        self._store = store
        self._slots = asyncio.Semaphore(max_parallel_parts)

    async def __call__(self, job: SnapshotJob, encoded: EncodedSnapshot) -> UploadedParts:
        extension = part_extension(job.format)
        infos = tuple(
            PartInfo(
                key=part_key(
                    job.collection_id, job.snapshot_id, part.index, extension, part.sha256
                ),
                size=part.size,
                rows=part.rows,
                sha256=part.sha256,
            )
            for part in encoded.parts
        )
        if len(infos) == 1:  # the common small case: no task group to set up
            vouched = [await self._put(infos[0], encoded.parts[0].path)]
        else:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._put(info, part.path))
                    for info, part in zip(infos, encoded.parts, strict=True)
                ]
            vouched = [task.result() for task in tasks]
        return UploadedParts(
            infos, frozenset(info.key for info, ok in zip(infos, vouched, strict=True) if ok)
        )

    async def _put(self, info: PartInfo, path: Path) -> bool:
        async with self._slots:
            return await self._store.put_file(info.key, path, sha256_hex=info.sha256)
