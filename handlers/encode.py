"""Stage 'encode': documents → part files of bounded size in the spool directory.

Runs in a worker thread (pyarrow, zstd and hashlib release the GIL), so the event loop stays
free. Memory holds one read batch and one row group at most; parts go to disk as they fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from handlers.codecs import PartWriter, open_part_writer, part_extension
from handlers.codecs.json_legacy import documents_json_bytes
from handlers.errors import InvalidDocumentsError
from handlers.hashing import sha256_file
from handlers.job import SnapshotJob
from handlers.model import DocumentBatch, bytes_per_row_estimate
from handlers.sources import OpenedSource

JSON_SAMPLE_ROWS = 256


@dataclass(frozen=True)
class EncodedPart:
    index: int
    path: Path
    rows: int
    size: int
    sha256: str


@dataclass(frozen=True)
class EncodedSnapshot:
    parts: tuple[EncodedPart, ...]
    dimension: int
    vector_count: int
    json_equivalent_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(part.size for part in self.parts)

    def discard(self) -> None:
        for part in self.parts:
            with contextlib.suppress(FileNotFoundError):
                part.path.unlink()


class Encoder:
    """Encodes a job's source into parts of about ``part_size_bytes`` (uncompressed) each."""

    def __init__(self, spool_dir: Path, part_size_bytes: int) -> None:
        self._spool = spool_dir
        self._part_size = part_size_bytes

    async def __call__(self, job: SnapshotJob, source: OpenedSource) -> EncodedSnapshot:
        return await asyncio.to_thread(self.encode_blocking, job, source.batches)

    def encode_blocking(
        self, job: SnapshotJob, batches: Iterator[DocumentBatch]
    ) -> EncodedSnapshot:
        run = _EncodeRun(job, self._spool, self._part_size)
        try:
            for batch in batches:
                run.add(batch)
            return run.finish()
        except BaseException:
            run.abandon()
            raise


class _EncodeRun:
    """The state of one encoding: the open part, finished parts, ids seen."""

    def __init__(self, job: SnapshotJob, spool: Path, part_size: int) -> None:
        self._job = job
        self._spool = spool
        self._part_size = part_size
        self._token = uuid.uuid4().hex[:8]
        self._writer: PartWriter | None = None
        self._writer_path: Path | None = None
        self._parts: list[EncodedPart] = []
        self._ids: list[npt.NDArray[np.void]] = []
        self._dimension = 0
        self._rows = 0
        self._json_per_row = 0.0

    def add(self, batch: DocumentBatch) -> None:
        if self._dimension == 0:
            self._dimension = batch.dimension
            self._json_per_row = _json_bytes_per_row(batch)
        elif batch.dimension != self._dimension:
            raise InvalidDocumentsError(
                f"mixed dimensions: {self._dimension} then {batch.dimension} at row {self._rows}"
            )
        self._ids.append(_id_keys(batch))
        self._rows += batch.num_rows
        part_rows = max(1, self._part_size // bytes_per_row_estimate(self._dimension))
        start = 0
        while start < batch.num_rows:
            writer = self._writer or self._open_part()
            take = min(batch.num_rows - start, part_rows - writer.rows)
            writer.write(batch if take == batch.num_rows else batch.slice(start, take))
            start += take
            if writer.rows >= part_rows:
                self._close_part()

    def finish(self) -> EncodedSnapshot:
        if self._rows == 0:
            raise InvalidDocumentsError("the source holds no documents")
        self._close_part()
        _check_unique_across_batches(self._ids)
        return EncodedSnapshot(
            tuple(self._parts),
            self._dimension,
            self._rows,
            round(self._json_per_row * self._rows),
        )

    def abandon(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        paths = [part.path for part in self._parts]
        if self._writer_path is not None:
            paths.append(self._writer_path)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _open_part(self) -> PartWriter:
        extension = part_extension(self._job.format)
        name = f"{self._job.snapshot_id}-{self._token}-{len(self._parts):05d}.{extension}"
        self._writer_path = self._spool / name
        self._writer = open_part_writer(
            self._writer_path, self._job.format, self._dimension, self._job.compression
        )
        return self._writer

    def _close_part(self) -> None:
        if self._writer is None or self._writer_path is None:
            return
        self._writer.close()
        path, rows = self._writer_path, self._writer.rows
        self._writer, self._writer_path = None, None
        self._parts.append(
            EncodedPart(len(self._parts), path, rows, path.stat().st_size, sha256_file(path))
        )


def _json_bytes_per_row(batch: DocumentBatch) -> float:
    sample = DocumentBatch(batch.record_batch.slice(0, min(JSON_SAMPLE_ROWS, batch.num_rows)))
    return documents_json_bytes(sample) / sample.num_rows


def _id_keys(batch: DocumentBatch) -> npt.NDArray[np.void]:
    ids = batch.record_batch.column("document_id")
    raw = np.frombuffer(ids.buffers()[1], dtype=np.uint8, count=16 * (len(ids) + ids.offset))
    return raw[16 * ids.offset :].view("V16").copy()


def _check_unique_across_batches(keys: list[npt.NDArray[np.void]]) -> None:
    if len(keys) < 2:
        return
    merged = np.concatenate(keys)
    if len(np.unique(merged)) != len(merged):
        raise InvalidDocumentsError("duplicate document ids across the export's batches")


__all__ = ["EncodedPart", "EncodedSnapshot", "Encoder"]
