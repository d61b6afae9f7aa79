"""Compaction: a delta chain written again as one full snapshot of the same content."""

from __future__ import annotations

from handlers.chain import chain_parts, chain_rows
from handlers.create import CreateOutcome, SnapshotCreator, existing_or_create
from handlers.errors import CorruptSnapshotError
from handlers.job import InlineSource, SnapshotJob, check_job
from handlers.metadata import SnapshotMetadata
from handlers.model import DocumentBatch
from handlers.sources import OpenedSource
from handlers.verify import verify_snapshot


def compaction_job(metadata: SnapshotMetadata) -> SnapshotJob:
    """Request id derived from the snapshot: compacting it twice finds the first result."""
    job = SnapshotJob(
        collection_id=metadata.collection_id,
        request_id=f"compact-{metadata.snapshot_id}",
        source=InlineSource(()),  # the rows come from the chain, not from the request
        compression=metadata.compression,
        labels={**metadata.labels, "compacted_from": metadata.snapshot_id},
    )
    return check_job(job)  # built from a file in the store


async def compact(creator: SnapshotCreator, metadata: SnapshotMetadata) -> SnapshotMetadata:
    """A new full snapshot (new id, verified with --full) holding the chain's collection."""
    job = compaction_job(metadata)
    return (
        await existing_or_create(creator, job, lambda: _compact(creator, job, metadata))
    ).metadata


async def _compact(
    creator: SnapshotCreator, job: SnapshotJob, metadata: SnapshotMetadata
) -> CreateOutcome:
    store = creator.catalog.store
    async with chain_parts(store, metadata, store.spool_dir()) as parts:
        rows = metadata.collection_rows
        batches = (DocumentBatch(batch) for batch in chain_rows(parts, rows))
        source = OpenedSource(batches, f"chain of {metadata.snapshot_id}", expected_rows=rows)
        made = await creator.create_from(job, source)
    report = await verify_snapshot(store, made.metadata, full=True)
    if not report.ok:
        raise CorruptSnapshotError(
            f"compacted snapshot {made.metadata.snapshot_id}: {report.problems[0]}"
        )
    return made
