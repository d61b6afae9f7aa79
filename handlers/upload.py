"""Stage 'upload': move encoded parts into the store under the snapshot's keys."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from handlers.akidb.sidecar import data_key, is_akidb_format
from handlers.codecs import part_extension
from handlers.encode import EncodedPart
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
    """Puts parts (a bounded number at once); the store does multipart for big parts."""

    def __init__(self, store: ObjectStore, max_parallel_parts: int = 2) -> None:
        self._store = store
        self._slots = asyncio.Semaphore(max_parallel_parts)

    async def put(self, info: PartInfo, path: Path) -> bool:
        """One part (at most ``max_parallel_parts`` at once); True when the store vouched."""
        async with self._slots:
            return await self._store.put_file(info.key, path, sha256_hex=info.sha256)


def part_info(job: SnapshotJob, part: EncodedPart) -> PartInfo:
    return PartInfo(
        key=_key(job, part, part_extension(job.format)),
        size=part.size,
        rows=part.rows,
        sha256=part.sha256,
    )


def _key(job: SnapshotJob, part: EncodedPart, extension: str) -> str:
    """AkiDB formats are one file at AkiDB's own key; native parts are named by content."""
    if is_akidb_format(job.format):
        return data_key(job.format, job.collection_id, job.snapshot_id)
    return part_key(job.collection_id, job.snapshot_id, part.index, extension, part.sha256)


def uploaded(infos: tuple[PartInfo, ...], vouched: list[bool]) -> UploadedParts:
    return UploadedParts(
        infos, frozenset(info.key for info, ok in zip(infos, vouched, strict=True) if ok)
    )
