"""Delta snapshots: store only the rows that changed since a base, and the ids deleted.

Two sources. A change set (the job carries ``deletes``, even empty) is written as it is:
every document in it is an upsert. A full export is compared row by row against the base's
row index (id → content hash); rows whose hash is unchanged are dropped, ids of the base the
export no longer holds become deletes. Neither reads the base's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from handlers.catalog import Catalog
from handlers.chain import deleted_ids
from handlers.errors import CorruptSnapshotError, InvalidRequestError, SnapshotNotFoundError
from handlers.job import SnapshotJob
from handlers.metadata import DeltaInfo, PartInfo, RowIndexInfo, SnapshotMetadata
from handlers.model import DocumentBatch
from handlers.row_index import (
    DELETES_NAME,
    RowIndex,
    deletes_bytes,
    load_index_table,
    put_side_object,
    row_hashes,
    store_index,
)
from handlers.stores import ObjectStore


@dataclass
class DeltaRows:
    """What a delta holds, worked out from its source and the base's row index."""

    batches: list[DocumentBatch]
    index: RowIndex
    """The whole collection's, as of the delta."""
    deleted: list[bytes]
    written: RowIndex = field(default_factory=dict)
    """The delta's own rows: what its row index stores."""
    added: int = 0
    changed: int = 0

    @property
    def rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches)


async def resolve_base(catalog: Catalog, job: SnapshotJob) -> SnapshotMetadata:
    """The snapshot a delta job names; 'latest' is the collection's newest native one."""
    if job.base == "latest":
        native = [m for m in await catalog.list(job.collection_id) if m.row_index is not None]
        if not native:
            raise SnapshotNotFoundError(
                f"collection {job.collection_id} has no native snapshot to be a base"
            )
        return max(native, key=lambda meta: meta.created_at)
    base = await catalog.get(str(job.base), job.collection_id)
    if base.row_index is None:
        raise InvalidRequestError(
            f"snapshot {base.snapshot_id} has no row index ({base.format}): it cannot be a base"
        )
    return base


async def base_index(store: ObjectStore, chain: list[SnapshotMetadata], scratch: Path) -> RowIndex:
    """The collection's index as of the top of ``chain``: each member's own index, folded in
    chain order (a rewritten row moves to its delta's place, as in handlers.chain). Folded in
    a worker thread: a million-row index takes the best part of a second of Python."""
    layers: list[tuple[pa.Array, pa.Table]] = []
    for member in chain:
        if member.row_index is None:
            raise CorruptSnapshotError(f"snapshot {member.snapshot_id} in the chain has no index")
        deleted = await deleted_ids(store, member, scratch)
        layers.append((deleted, await load_index_table(store, member.row_index, scratch)))
    return await asyncio.to_thread(_fold_indexes, layers)


def _fold_indexes(layers: list[tuple[pa.Array, pa.Table]]) -> RowIndex:
    index: RowIndex = {}
    for deleted, table in layers:
        for doc in deleted.to_pylist():
            index.pop(doc, None)
        ids = table.column("document_id").to_pylist()
        hashes = table.column("row_hash").to_pylist()
        if not index:  # nothing folded yet (the full snapshot at the bottom): take it whole
            index = dict(zip(ids, hashes, strict=True))
            continue
        for doc, digest in zip(ids, hashes, strict=True):
            index.pop(doc, None)
            index[doc] = digest
    return index


def split_rows(job: SnapshotJob, batches: Iterator[DocumentBatch], index: RowIndex) -> DeltaRows:
    """Runs in a worker thread; ``index`` (the base's) becomes the delta's own."""
    change_set = job.deletes is not None
    seen: set[bytes] = set()
    found = DeltaRows([], index, [])
    for batch in batches:
        ids = batch.record_batch.column("document_id").to_pylist()
        hashes = row_hashes(batch.record_batch)
        keep = []
        for position, (doc, digest) in enumerate(zip(ids, hashes, strict=True)):
            seen.add(doc)
            before = index.pop(doc, None)
            index[doc] = digest  # re-inserted: a written row moves to the end (chain order)
            if before == digest and not change_set:
                continue
            keep.append(position)
            found.written[doc] = digest
            found.added += before is None
            found.changed += before is not None
        if keep:
            taken = batch.record_batch.take(pa.array(keep, pa.int64()))
            found.batches.append(DocumentBatch(taken))
    if change_set:
        requested = [uuid.UUID(text).bytes for text in job.deletes or ()]
        if clash := seen.intersection(requested):
            raise InvalidRequestError(
                f"document {uuid.UUID(bytes=min(clash))} is both upserted and deleted"
            )
        found.deleted = [doc for doc in dict.fromkeys(requested) if doc in index]
    else:
        found.deleted = [doc for doc in index if doc not in seen]
    for doc in found.deleted:
        del index[doc]
    return found


async def put_delta_objects(
    store: ObjectStore, job: SnapshotJob, rows: DeltaRows
) -> tuple[RowIndexInfo, PartInfo | None]:
    """The index of the delta's own rows and its deleted ids (a side object: a delta is never
    on the small-snapshot path)."""
    index_info = await store_index(store, job.collection_id, job.snapshot_id, rows.written)
    if not rows.deleted:
        return index_info, None
    deletes = await asyncio.to_thread(deletes_bytes, rows.deleted)
    return index_info, await put_side_object(
        store, job.collection_id, job.snapshot_id, DELETES_NAME, deletes
    )


def delta_metadata(
    job: SnapshotJob,
    chain: list[SnapshotMetadata],
    rows: DeltaRows,
    parts: tuple[PartInfo, ...],
    side: tuple[RowIndexInfo, PartInfo | None],
) -> SnapshotMetadata:
    """``chain``: the base's, full snapshot first."""
    base, full = chain[-1], chain[0]
    per_row = full.total_bytes / full.vector_count if full.vector_count else 0.0
    return SnapshotMetadata(
        snapshot_id=job.snapshot_id,
        collection_id=job.collection_id,
        request_id=job.request_id,
        format=job.format,
        compression=job.compression,
        dimension=base.dimension,
        vector_count=rows.rows,
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        parts=parts,
        labels=dict(job.labels),
        row_index=side[0],
        delta=DeltaInfo(
            base_snapshot_id=base.snapshot_id,
            deletes=side[1],
            rows_added=rows.added,
            rows_changed=rows.changed,
            rows_deleted=len(rows.deleted),
            collection_rows=len(rows.index),
            chain_deltas=len(chain),
            full_equivalent_bytes=round(per_row * len(rows.index)),
        ),
    )


def check_dimension(base: SnapshotMetadata, rows: DeltaRows) -> None:
    for batch in rows.batches:
        if batch.dimension != base.dimension:
            raise InvalidRequestError(
                f"delta rows have dimension {batch.dimension}, base {base.snapshot_id} "
                f"has {base.dimension}"
            )
