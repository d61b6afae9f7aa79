"""Stage 'encode': documents → part files of bounded size in the spool directory.

Runs in worker threads (pyarrow, zstd and hashlib release the GIL), so the event loop stays
free: one thread reads and validates the next batch while the process's bounded encode pool
compresses parts. Memory holds a couple of read batches and one row group per part being
written; parts go to disk as they fill, hashed as they are written. The part layout (count
and boundaries) depends only on the data and the part size, never on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from handlers.akidb.sidecar import is_akidb_format
from handlers.codecs import PartWriter, open_part_writer, part_extension
from handlers.codecs.documents_json import documents_json_bytes
from handlers.codecs.parquet import VECTOR_PAGE_BYTES
from handlers.errors import InvalidDocumentsError
from handlers.executor import encode_pool, usable_cpus
from handlers.job import SnapshotJob
from handlers.model import DocumentBatch, bytes_per_row_estimate, check_unique_ids, id_keys
from handlers.sources import OpenedSource

JSON_SAMPLE_VALUES = 1024
PREFETCH_DEPTH = 2
SMALL_JOB_ROWS = 4096
MAX_ROWS_ONE_FILE = 2**62
# A part's writer thread writes a batch this many rows at a time and looks at the cancel flag
# in between, so a cancelled encoding stops within a fraction of a second (a batch of the
# JSON format takes seconds). Writers buffer whole row groups, so the files are the same.
WRITE_SLICE_ROWS = 256
T = TypeVar("T")


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


PartDone = Callable[[EncodedPart], None]


def ignore_part(part: EncodedPart) -> None:
    return None


class EncodeCancelledError(Exception):
    """Raised in the encoding thread when its request was cancelled (never reaches a caller:
    the awaiting task is being cancelled already)."""


class Encoder:
    """Encodes a job's source into parts of about ``part_size_bytes`` (uncompressed) each."""

    def __init__(
        self, spool_dir: Path, part_size_bytes: int, page_bytes: int = VECTOR_PAGE_BYTES
    ) -> None:
        self._spool = spool_dir
        self._part_size = part_size_bytes
        self._page_bytes = page_bytes

    @property
    def spool_dir(self) -> Path:
        return self._spool

    async def __call__(
        self, job: SnapshotJob, source: OpenedSource, on_part: PartDone = ignore_part
    ) -> EncodedSnapshot:
        """Encode in a thread. Cancelling this (a deadline, a revoke, shutdown) really stops
        the encoding: the threads see the flag before their next slice of rows, the spool
        parts are deleted, and only then does the cancellation go on."""
        cancel = threading.Event()
        work = asyncio.ensure_future(
            asyncio.to_thread(
                self.encode_blocking, job, source.batches, source.expected_rows, on_part, cancel
            )
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(BaseException):  # its spool parts are gone after this
                (await work).discard()  # (it had finished all the same: nobody wants them)
            raise

    def encode_blocking(
        self,
        job: SnapshotJob,
        batches: Iterator[DocumentBatch],
        expected_rows: int | None = None,
        on_part: PartDone = ignore_part,
        cancel: threading.Event | None = None,
    ) -> EncodedSnapshot:
        """``on_part`` is told of each finished part (from this thread), in index order, so
        its upload can start while the next parts are still being encoded."""
        # Threads cost more than they save on a small job: encode it right here.
        small = expected_rows is not None and expected_rows <= SMALL_JOB_ROWS
        run = _EncodeRun(
            job,
            self._spool,
            self._part_size,
            expected_rows,
            threaded=not small,
            cancel=cancel,
            page_bytes=self._page_bytes,
        )
        run.on_part = on_part
        try:
            for batch in batches if small else prefetched(batches, PREFETCH_DEPTH):
                if cancel is not None and cancel.is_set():
                    raise EncodeCancelledError("the encoding was cancelled")
                run.add(batch)
            return run.finish()
        except BaseException:
            run.abandon()
            raise


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """Iterate ``items`` in a second thread, up to ``depth`` ahead of the consumer."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                slots.put(entry, timeout=0.05)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(("item", item)):
                    return
            offer(("end", None))
        except BaseException as exc:  # handed over: the consumer re-raises it
            offer(("error", exc))

    reader = threading.Thread(target=produce, name="akisnap-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        reader.join()


class _PartWorker:
    """Writes one part on the encode pool, fed batches through a short queue.

    A part is sealed (its queue closed) as soon as it is full, so a pool thread never waits
    on a feeder that has moved on to the next part: jobs sharing the pool cannot deadlock.
    """

    def __init__(
        self,
        index: int,
        path: Path,
        writer: PartWriter,
        *,
        threaded: bool,
        cancel: threading.Event | None = None,
    ) -> None:
        self.index = index
        self._cancel = cancel
        self.path = path
        self.rows = 0
        self._writer = writer
        self._inbox: queue.Queue[DocumentBatch | None] = queue.Queue(maxsize=PREFETCH_DEPTH)
        self._error: BaseException | None = None
        self._sealed = False
        self._done: Future[None] | None = None
        if threaded:
            self._done = encode_pool().submit(self._run)

    def feed(self, batch: DocumentBatch) -> None:
        self.rows += batch.num_rows
        if self._done is None:
            self._writer.write(batch)
        else:
            self._inbox.put(batch)

    def seal(self) -> None:
        """No more batches: the writer closes the part on its own thread."""
        if self._done is not None and not self._sealed:
            self._sealed = True
            self._inbox.put(None)

    def finish(self) -> EncodedPart:
        """Close the part and wait for it; re-raises whatever the writer thread hit."""
        if self._done is None:
            self._writer.close()
        else:
            self.seal()
            self._done.result()
        if self._error is not None:
            raise self._error
        return EncodedPart(
            self.index, self.path, self._writer.rows, self._writer.size, self._writer.sha256
        )

    def _run(self) -> None:
        try:
            while (batch := self._inbox.get()) is not None:
                if self._error is None:
                    self._write_in_slices(batch)
            self._writer.close()
        except BaseException as exc:  # kept for finish(), which re-raises it
            self._error = exc
            while self._inbox.get() is not None:  # keep the feeder from blocking
                pass

    def _write_in_slices(self, batch: DocumentBatch) -> None:
        for start in range(0, batch.num_rows, WRITE_SLICE_ROWS):
            if self._cancel is not None and self._cancel.is_set():
                raise EncodeCancelledError("the encoding was cancelled")
            take = min(WRITE_SLICE_ROWS, batch.num_rows - start)
            self._writer.write(batch if take == batch.num_rows else batch.slice(start, take))


class _EncodeRun:
    """The state of one encoding: parts being written (one thread each), finished parts,
    ids seen. Up to ``workers`` parts are compressed at once."""

    def __init__(
        self,
        job: SnapshotJob,
        spool: Path,
        part_size: int,
        expected_rows: int | None,
        *,
        threaded: bool = True,
        cancel: threading.Event | None = None,
        page_bytes: int = VECTOR_PAGE_BYTES,
    ) -> None:
        self._job = job
        self._page_bytes = page_bytes
        self._threaded = threaded
        self._cancel = cancel
        self._spool = spool
        self._part_size = part_size
        self._expected_rows = expected_rows
        self._workers = usable_cpus() if threaded else 1
        self._token = uuid.uuid4().hex[:8]
        self._active: list[_PartWorker] = []
        self._opened: list[Path] = []
        self._parts: list[EncodedPart] = []
        self._ids: list[npt.NDArray[np.void]] = []
        self._started = 0
        self._dimension = 0
        self._part_rows = 0
        self._rows = 0
        self._json_per_row = 0.0
        self.on_part: PartDone = ignore_part

    def add(self, batch: DocumentBatch) -> None:
        if self._dimension == 0:
            self._begin(batch)
        elif batch.dimension != self._dimension:
            raise InvalidDocumentsError(
                f"mixed dimensions: {self._dimension} then {batch.dimension} at row {self._rows}"
            )
        self._ids.append(id_keys(batch.record_batch.column("document_id")).copy())
        self._rows += batch.num_rows
        start = 0
        while start < batch.num_rows:
            worker = self._current_part()
            take = min(batch.num_rows - start, self._part_rows - worker.rows)
            worker.feed(batch if take == batch.num_rows else batch.slice(start, take))
            if worker.rows >= self._part_rows:
                worker.seal()
            start += take

    def finish(self) -> EncodedSnapshot:
        if self._rows == 0:
            raise InvalidDocumentsError("the source holds no documents")
        while self._active:
            self._finished(self._active.pop(0).finish())
        check_unique_ids(np.concatenate(self._ids) if len(self._ids) > 1 else self._ids[0])
        return EncodedSnapshot(
            tuple(sorted(self._parts, key=lambda part: part.index)),
            self._dimension,
            self._rows,
            round(self._json_per_row * self._rows),
        )

    def _finished(self, part: EncodedPart) -> None:
        self._parts.append(part)
        self.on_part(part)

    def abandon(self) -> None:
        for worker in self._active:
            with contextlib.suppress(Exception):
                worker.finish()
        # Every part ever opened: one whose finish() raised was in neither list any more.
        for path in self._opened:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _begin(self, batch: DocumentBatch) -> None:
        self._dimension = batch.dimension
        self._json_per_row = _json_bytes_per_row(batch)
        row_bytes = bytes_per_row_estimate(self._dimension)
        self._part_rows = max(1, self._part_size // row_bytes)
        if is_akidb_format(self._job.format):
            self._part_rows = MAX_ROWS_ONE_FILE  # AkiDB 2.0 reads exactly one file
            return
        if self._expected_rows and self._expected_rows > self._part_rows:
            # Several parts: evenly sized, their count from the data and the part size only
            # (never the cores), so the same request writes the same parts everywhere. A
            # snapshot that fits one part stays one part (a restore to .parquet is a copy).
            parts = -(-self._expected_rows // self._part_rows)
            self._part_rows = -(-self._expected_rows // parts)

    def _current_part(self) -> _PartWorker:
        if self._active and self._active[-1].rows < self._part_rows:
            return self._active[-1]
        while len(self._active) >= self._workers:
            self._finished(self._active.pop(0).finish())
        extension = part_extension(self._job.format)
        index = self._started
        path = self._spool / f"{self._job.snapshot_id}-{self._token}-{index:05d}.{extension}"
        self._opened.append(path)
        writer = open_part_writer(
            path, self._job.format, self._dimension, self._job.compression, self._page_bytes
        )
        self._started += 1
        self._active.append(
            _PartWorker(index, path, writer, threaded=self._threaded, cancel=self._cancel)
        )
        return self._active[-1]


def _json_bytes_per_row(batch: DocumentBatch) -> float:
    """Estimated from a few rows: the exact JSON of a whole collection would cost more than
    encoding it, and on real embeddings the estimate lands within a percent."""
    rows = max(1, min(batch.num_rows, JSON_SAMPLE_VALUES // batch.dimension))
    return documents_json_bytes(batch.slice(0, rows)) / rows
