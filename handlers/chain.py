"""A snapshot as a whole: a full snapshot plus the chain of deltas on top of it.

Row order of a chain (what restore and compact give): the rows no delta touched, in their
snapshot's order, then each delta's rows in the order it wrote them. An update is a delete
and an append, so a document a delta rewrites moves to that delta's place.

Rows stream part by part: a member's rows are hidden when a later member writes or deletes
their id, and those ids come from the later members' row indexes and deletes (small), so the
collection is never held in memory whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from handlers.catalog import Catalog
from handlers.codecs import read_part
from handlers.errors import CorruptSnapshotError
from handlers.metadata import SnapshotMetadata
from handlers.model import ID_TYPE
from handlers.row_index import index_ids, read_side_table
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


async def deleted_ids(store: ObjectStore, metadata: SnapshotMetadata, scratch: Path) -> pa.Array:
    if metadata.delta is None or metadata.delta.deletes is None:
        return pa.array([], ID_TYPE)
    table = await read_side_table(store, metadata.delta.deletes, scratch)
    return table.column("document_id").combine_chunks().cast(ID_TYPE)


@dataclass(frozen=True)
class ChainPart:
    """One part of a chain member, checked and on local disk, with the ids later members
    hide (rewrite or delete)."""

    path: Path
    member: SnapshotMetadata
    hidden: pa.Array


@contextlib.asynccontextmanager
async def chain_parts(
    store: ObjectStore, metadata: SnapshotMetadata, scratch: Path
) -> AsyncIterator[list[ChainPart]]:
    """Every part of the chain of ``metadata``, in chain order, checked against its SHA-256
    (a corrupt part anywhere below fails the whole snapshot), all on local disk at once: for
    compaction, whose encoder reads one iterator in its own thread. A restore takes the parts
    one at a time instead (handlers.restore)."""
    members = await chain_of(store, metadata)
    hidden = await hidden_ids(store, members, scratch)
    async with contextlib.AsyncExitStack() as stack:
        found = []
        for member, gone in zip(members, hidden, strict=True):
            for part in member.parts:
                path = await stack.enter_async_context(checked_part_file(store, part, scratch))
                found.append(ChainPart(path, member, gone))
        yield found


async def hidden_ids(
    store: ObjectStore, members: list[SnapshotMetadata], scratch: Path
) -> list[pa.Array]:
    """Per member, the ids every later member writes or deletes."""
    hidden: list[pa.Array] = []
    later: list[pa.Array] = []
    for member in reversed(members):
        hidden.append(pa.concat_arrays(later) if later else pa.array([], ID_TYPE))
        if member.delta is None:
            continue
        if member.row_index is None:
            raise CorruptSnapshotError(f"delta {member.snapshot_id} has no row index")
        later.append(await index_ids(store, member.row_index, scratch))
        later.append(await deleted_ids(store, member, scratch))
    return hidden[::-1]


def visible_rows(
    path: Path, member: SnapshotMetadata, hidden: pa.Array
) -> Iterator[pa.RecordBatch]:
    """One checked part's rows that are still the collection's: none whose id a later member
    rewrote or deleted (blocking: run it in a worker thread)."""
    for record in read_part(path, member.format, member.dimension):
        shown = record
        if len(hidden):
            shown = record.filter(pc.invert(pc.is_in(record.column("document_id"), hidden)))
        if shown.num_rows:
            yield shown


def chain_rows(parts: list[ChainPart], expected: int) -> Iterator[pa.RecordBatch]:
    """The collection's rows, batch by batch (blocking: run it in a worker thread); raises at
    the end when they are not the ``expected`` count its metadata promises, so nothing built
    from a wrong chain gets committed."""
    rows = 0
    for part in parts:
        for shown in visible_rows(part.path, part.member, part.hidden):
            rows += shown.num_rows
            yield shown
    if rows != expected:
        raise CorruptSnapshotError(f"the chain gives {rows} rows, its metadata says {expected}")
