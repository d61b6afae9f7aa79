"""create = source → encode → upload → verify → commit: one snapshot from a job.

The metadata file is written last, after every part was checked, so a crash at any point
leaves either a whole snapshot or nothing visible (orphan parts at worst, which a redo
overwrites with the same bytes: part keys name their content). A part the store checked on
upload (an S3 server validating its SHA-256) is not read back; any other part is. The commit
never overwrites: if the snapshot got committed meanwhile, the outcome is a duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from handlers.akidb.sidecar import akidb_records, is_akidb_format, to_metadata
from handlers.budget import ByteBudget
from handlers.catalog import Catalog
from handlers.chain import chain_of
from handlers.codecs.parquet import VECTOR_PAGE_BYTES
from handlers.delta import (
    DeltaRows,
    base_index,
    check_dimension,
    delta_metadata,
    put_delta_objects,
    resolve_base,
    split_rows,
)
from handlers.encode import EncodedSnapshot, Encoder
from handlers.errors import CorruptSnapshotError, InvalidDocumentsError, WriteNotVerifiedError
from handlers.job import SnapshotJob
from handlers.metadata import PartInfo, RowIndexInfo, SnapshotMetadata
from handlers.model import DocumentBatch
from handlers.overlap import Overlap
from handlers.row_index import RowIndexer, store_index
from handlers.sources import OpenedSource, SourceReader
from handlers.spool import process_spool
from handlers.stages import UNTIMED_STAGE, StageClock
from handlers.stores import ObjectStore, S3Options
from handlers.upload import Uploader
from handlers.verify import Verifier

DEFAULT_PART_SIZE_BYTES = 64 * 1024 * 1024
UNBOUNDED = 1 << 62  # the CLI makes one snapshot at a time: no budget to share


@dataclass(frozen=True)
class CreateOutcome:
    metadata: SnapshotMetadata
    duplicate: bool
    stage_seconds: dict[str, float] = field(default_factory=dict)


class Finder(Protocol):
    async def existing(self, job: SnapshotJob) -> SnapshotMetadata | None: ...


async def existing_or_create(
    finder: Finder,
    job: SnapshotJob,
    create: Callable[[], Awaitable[CreateOutcome]],
    clock: StageClock | None = None,
) -> CreateOutcome:
    """The snapshot already committed for ``job``'s request id, as a duplicate (nothing is
    read or written again), else ``create()``'s. The daemon, ``snapshots create``, compact
    and migrate all decide "redo or not" here. A failed look-up is blamed in ``clock`` on
    the store (it runs between stages)."""
    with (clock or StageClock()).blame(UNTIMED_STAGE):
        found = await finder.existing(job)
    if found is not None:
        return CreateOutcome(found, duplicate=True)
    return await create()


class SnapshotCreator:
    """Makes snapshots in one store; the CLI and the daemon share it."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        source_roots: Sequence[str],
        s3: S3Options | None = None,
        part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
        page_bytes: int = VECTOR_PAGE_BYTES,
        budget: ByteBudget | None = None,
    ) -> None:
        self._budget = budget or ByteBudget(UNBOUNDED)
        spool = process_spool(store.spool_dir())
        self._catalog = Catalog(store)
        self._read_source = SourceReader(source_roots, s3=s3, spool_dir=spool)
        self._encode = Encoder(spool, part_size_bytes, page_bytes)
        self._upload = Uploader(store)
        self._verify = Verifier(store)

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    async def existing(self, job: SnapshotJob) -> SnapshotMetadata | None:
        """The committed snapshot of this job's request id, if any (a duplicate)."""
        return await self._catalog.find(job.collection_id, job.snapshot_id, job.format)

    async def __call__(
        self,
        job: SnapshotJob,
        clock: StageClock | None = None,
        progress: ProgressSink | None = None,
    ) -> CreateOutcome:
        clock = clock or StageClock()
        async with clock("source"):
            source = await self._read_source(job)
            if job.exact and source.source_dtype is not None:
                source.close()
                raise InvalidDocumentsError(
                    f"the export's vectors are {source.source_dtype}, not float32: --exact "
                    "refuses to convert them"
                )
        if progress is not None:
            progress.start(source.expected_rows)
            source.batches = _counted(source.batches, progress)
        try:
            async with self._budget.hold(source.nbytes):
                if job.base is not None:
                    return await self._delta(job, source, clock)
                return await self._create(job, source, clock)
        finally:
            source.close()

    async def create_from(self, job: SnapshotJob, source: OpenedSource) -> CreateOutcome:
        """A full snapshot of rows already at hand (compaction), without the source stage."""
        return await self._create(job, source, StageClock())

    async def _create(
        self,
        job: SnapshotJob,
        source: OpenedSource,
        clock: StageClock,
    ) -> CreateOutcome:
        indexer = RowIndexer()
        if job.format == "parquet":  # a native snapshot can be a delta's base
            source.batches = indexer.wrap(source.batches)
        overlap = Overlap(self._encode, self._upload, job, source)
        async with clock("encode"):  # uploads of finished parts run meanwhile
            encoded = await overlap.encoded()
        source.close()  # the export's spool copy is no longer needed
        async with clock("upload"):  # what is left of the uploads
            uploaded = await overlap.uploaded(encoded)
            row_index = await self._put_row_index(job, indexer)
        async with clock("verify"):
            try:
                await self._verify((*uploaded.unvouched, *_index_object(row_index)))
            except CorruptSnapshotError as exc:
                # Nothing is committed yet: a redo writes the same keys again.
                raise WriteNotVerifiedError(exc.message) from None
            metadata, committed = await self._commit(
                job, encoded, uploaded.parts, source.source_dtype, row_index
            )
        if not committed:
            return await self._committed_meanwhile(job, clock.seconds)
        return CreateOutcome(metadata, duplicate=False, stage_seconds=clock.seconds)

    async def _put_row_index(self, job: SnapshotJob, indexer: RowIndexer) -> RowIndexInfo | None:
        if job.format != "parquet":
            return None
        store = self._catalog.store
        return await store_index(store, job.collection_id, job.snapshot_id, indexer.index)

    async def _delta(
        self, job: SnapshotJob, source: OpenedSource, clock: StageClock
    ) -> CreateOutcome:
        """Only the rows that changed since the base, and the ids deleted (handlers.delta)."""
        store = self._catalog.store
        async with clock("encode"):
            base = await resolve_base(self._catalog, job)
            chain = await chain_of(store, base)
            index = await base_index(store, chain, self._encode.spool_dir)
            rows = await asyncio.to_thread(split_rows, job, source.batches, index)
            check_dimension(base, rows)
            parts, unvouched = await self._delta_parts(job, rows)
        source.close()
        async with clock("upload"):
            side = await put_delta_objects(store, job, rows)
        async with clock("verify"):
            metadata = delta_metadata(job, chain, rows, parts, side)
            try:
                await self._verify((*unvouched, *metadata.side_objects))
            except CorruptSnapshotError as exc:
                raise WriteNotVerifiedError(exc.message) from None
            committed = await self._catalog.commit(metadata)
        if not committed:
            return await self._committed_meanwhile(job, clock.seconds)
        return CreateOutcome(metadata, duplicate=False, stage_seconds=clock.seconds)

    async def _delta_parts(
        self, job: SnapshotJob, rows: DeltaRows
    ) -> tuple[tuple[PartInfo, ...], tuple[PartInfo, ...]]:
        """(parts, parts still to verify) of a delta's rows; none when nothing changed."""
        if not rows.batches:
            return (), ()
        changed = OpenedSource(iter(rows.batches), "delta rows", expected_rows=rows.rows)
        overlap = Overlap(self._encode, self._upload, job, changed)
        uploaded = await overlap.uploaded(await overlap.encoded())
        return uploaded.parts, uploaded.unvouched

    async def _commit(
        self,
        job: SnapshotJob,
        encoded: EncodedSnapshot,
        parts: tuple[PartInfo, ...],
        source_dtype: str | None,
        row_index: RowIndexInfo | None = None,
    ) -> tuple[SnapshotMetadata, bool]:
        """The snapshot's metadata, and False when another run had committed it first."""
        if is_akidb_format(job.format):
            sidecar, integrity = akidb_records(job, parts[0], encoded.dimension)
            committed = await self._catalog.commit_akidb(sidecar, integrity)
            return to_metadata(sidecar, integrity), committed
        metadata = replace(_metadata(job, encoded, parts, source_dtype), row_index=row_index)
        return metadata, await self._catalog.commit(metadata)

    async def _committed_meanwhile(
        self, job: SnapshotJob, seconds: dict[str, float]
    ) -> CreateOutcome:
        """Another run of this request committed first: report its snapshot, untouched."""
        existing = await self._catalog.find(job.collection_id, job.snapshot_id, job.format)
        if existing is None:  # deleted between the refused commit and this read
            raise WriteNotVerifiedError(
                f"snapshot {job.snapshot_id} was committed and removed while being written"
            )
        return CreateOutcome(existing, duplicate=True, stage_seconds=seconds)


class ProgressSink(Protocol):
    """Told the rows to expect (None: unknown), then the rows read, from the encoder's thread."""

    def start(self, total: int | None) -> None: ...

    def update(self, amount: int = 1) -> None: ...


def _index_object(row_index: RowIndexInfo | None) -> tuple[PartInfo, ...]:
    """A large index is a side object, checked with the parts; an inline one needs no check."""
    return (row_index.object,) if row_index and row_index.object else ()


def _counted(batches: Iterator[DocumentBatch], progress: ProgressSink) -> Iterator[DocumentBatch]:
    for batch in batches:
        yield batch
        progress.update(batch.num_rows)


def _metadata(
    job: SnapshotJob,
    encoded: EncodedSnapshot,
    parts: tuple[PartInfo, ...],
    source_dtype: str | None = None,
) -> SnapshotMetadata:
    return SnapshotMetadata(
        snapshot_id=job.snapshot_id,
        collection_id=job.collection_id,
        request_id=job.request_id,
        format=job.format,
        compression=job.compression if job.format == "parquet" else "none",
        dimension=encoded.dimension,
        vector_count=encoded.vector_count,
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        parts=parts,
        labels=dict(job.labels),
        json_equivalent_bytes=encoded.json_equivalent_bytes,
        source_dtype=source_dtype,
    )
