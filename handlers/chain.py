"""A snapshot as a whole: a full snapshot plus the chain of deltas on top of it.

Row order of a chain (what restore and compact give): the rows no delta touched, in their
snapshot's order, then each delta's rows in the order it wrote them. An update is a delete
and an append, so a document a delta rewrites moves to that delta's place.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from handlers.catalog import Catalog
from handlers.codecs import read_part
from handlers.errors import CorruptSnapshotError
from handlers.metadata import SnapshotMetadata
from handlers.model import ID_TYPE, snapshot_schema
from handlers.row_index import read_side_table
from handlers.stores import ObjectStore
from handlers.verify import checked_part_file

MAX_CHAIN = 10_000


async def chain_of(store: ObjectStore, metadata: SnapshotMetadata) -> list[SnapshotMetadata]:
    """The snapshots ``metadata`` is made of, the full one first."""
    catalog = Catalog(store)
    members = [metadata]
    while (delta := members[-1].delta) is not None:
        if len(members) > MAX_CHAIN:
            raise CorruptSnapshotError(f"snapshot {metadata.snapshot_id}: chain loops")
        members.append(await catalog.get(delta.base_snapshot_id, metadata.collection_id))
    return members[::-1]


async def snapshot_table(store: ObjectStore, metadata: SnapshotMetadata, scratch: Path) -> pa.Table:
    """The rows stored in this one snapshot's parts (checked against their SHA-256)."""
    batches: list[pa.RecordBatch] = []
    for part in metadata.parts:
        async with checked_part_file(store, part, scratch) as path:
            batches.extend(read_part(path, metadata.format, metadata.dimension))
    return pa.Table.from_batches(batches, snapshot_schema(metadata.dimension))


async def deleted_ids(store: ObjectStore, metadata: SnapshotMetadata, scratch: Path) -> pa.Array:
    if metadata.delta is None or metadata.delta.deletes is None:
        return pa.array([], ID_TYPE)
    table = await read_side_table(store, metadata.delta.deletes, scratch)
    return table.column("document_id").combine_chunks()


async def materialize(store: ObjectStore, metadata: SnapshotMetadata, scratch: Path) -> pa.Table:
    """The whole collection as of ``metadata``, in chain order (see the module doc)."""
    members = await chain_of(store, metadata)
    pieces: list[pa.Table] = []
    later: list[pa.Array] = []  # ids written or deleted by snapshots above the current one
    for member in reversed(members):
        table = await snapshot_table(store, member, scratch)
        if later:
            gone = pa.concat_arrays(later)
            table = table.filter(pc.invert(pc.is_in(table.column("document_id"), gone)))
        pieces.append(table)
        later.append(table.column("document_id").combine_chunks().cast(ID_TYPE))
        later.append(await deleted_ids(store, member, scratch))
    whole = pa.concat_tables(pieces[::-1]).combine_chunks()
    if whole.num_rows != metadata.collection_rows:
        raise CorruptSnapshotError(
            f"snapshot {metadata.snapshot_id} gives {whole.num_rows} rows, "
            f"metadata says {metadata.collection_rows}"
        )
    return whole
