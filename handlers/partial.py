"""Partial restore: the rows and columns a :class:`Selection` asks for, reading little.

A native part in a local store is read in place, row group by row group: a group whose
document_id (or inserted_at) statistics cannot hold a wanted row is skipped, then the columns
that decide the selection are read, and the other asked-for columns only of groups where a
row matched. Such a part is checked for its size and its Parquet schema, not for its SHA-256
(that needs every byte; ``snapshots verify`` does it). A part anywhere else (S3), and any
AkiDB-format part, is fetched whole and its SHA-256 checked before anything is decoded.

A delta chain is selected member by member, newest first: a row is visible when no snapshot
above it in the chain wrote or deleted its id (the rules of handlers.chain); restore order
is the chain's.
"""

from __future__ import annotations

import asyncio
import bisect
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from handlers.chain import chain_of, deleted_ids
from handlers.codecs import read_part
from handlers.codecs.parquet import open_checked_parquet
from handlers.errors import CorruptSnapshotError
from handlers.metadata import PartInfo, SnapshotMetadata
from handlers.model import ID_TYPE, snapshot_schema
from handlers.selection import Selection
from handlers.stores import ObjectStore
from handlers.verify import checked_part_file


@dataclass
class Picked:
    """What restore reports besides the rows: the wanted ids found, bytes read from the store."""

    found: list[pa.Array] = field(default_factory=list)
    bytes_read: int = 0


class CountingFile(io.FileIO):
    """A file that counts the bytes read through it (what partial restore reports)."""

    bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:  # type: ignore[override]
        count = super().readinto(buffer)
        self.bytes_read += count or 0
        return count or 0


async def select_rows(
    store: ObjectStore, metadata: SnapshotMetadata, selection: Selection, scratch: Path
) -> tuple[pa.Table, Picked]:
    """The selected rows of the snapshot as of ``metadata`` (a chain applied), in order."""
    members = await chain_of(store, metadata) if metadata.delta is not None else [metadata]
    picked = Picked()
    hidden: list[pa.Array] = []  # ids written or deleted above the current member
    per_member: list[list[pa.Table]] = []
    for depth, member in enumerate(reversed(members)):
        below = depth < len(members) - 1
        # A chain's base comes first in restore order but is read last: no early stop there.
        room = selection.limit if len(members) == 1 else None
        gone = pa.concat_arrays(hidden) if hidden else None
        reading = Reading(selection, gone, below, room)
        tables, written = await _select_member(store, member, reading, picked, scratch)
        per_member.append(tables)
        if below:
            hidden.extend([written, await _deleted(store, member, picked, scratch)])
    schema = snapshot_schema(metadata.dimension)
    out_schema = pa.schema([schema.field(name) for name in selection.columns])
    ordered = [table for tables in reversed(per_member) for table in tables]
    table = pa.concat_tables(
        [t.select(list(selection.columns)).cast(out_schema) for t in ordered]
        or [out_schema.empty_table()]
    )
    if selection.limit is not None:
        table = table.slice(0, selection.limit)
    return table, picked


async def _deleted(
    store: ObjectStore, member: SnapshotMetadata, picked: Picked, scratch: Path
) -> pa.Array:
    if member.delta is not None and member.delta.deletes is not None:
        picked.bytes_read += member.delta.deletes.size
    return await deleted_ids(store, member, scratch)


@dataclass(frozen=True)
class Reading:
    """How one chain member is read: the selection, the ids hidden by the members above it,
    whether a member lies below it (then the ids it writes are wanted too), and how many
    rows may still be taken (None: no early stop)."""

    selection: Selection
    gone: pa.Array | None
    below: bool
    room: int | None


async def _select_member(
    store: ObjectStore,
    member: SnapshotMetadata,
    reading: Reading,
    picked: Picked,
    scratch: Path,
) -> tuple[list[pa.Table], pa.Array]:
    """The member's selected rows, part by part, and the ids it writes that matter below."""
    tables: list[pa.Table] = []
    written: list[pa.Array] = []
    for part in member.parts:
        local = store.local_path(part.key) if member.format == "parquet" else None
        if local is not None:
            found = await asyncio.to_thread(_pick_in_place, local, part, member.dimension, reading)
        else:
            found = await _pick_fetched(store, member, part, reading, scratch)
        tables.append(found.table)
        picked.found.append(found.found)
        picked.bytes_read += found.bytes_read
        written.append(found.written)
        if reading.room is not None:
            reading = replace(reading, room=max(0, reading.room - found.table.num_rows))
    return tables, pa.concat_arrays(written) if written else pa.array([], ID_TYPE)


@dataclass(frozen=True)
class PartPick:
    """Of one part: the selected rows, the wanted ids it holds visibly, the ids that hide
    rows below it, and the bytes read."""

    table: pa.Table
    found: pa.Array
    written: pa.Array
    bytes_read: int = 0


async def _pick_fetched(
    store: ObjectStore, member: SnapshotMetadata, part: PartInfo, reading: Reading, scratch: Path
) -> PartPick:
    async with checked_part_file(store, part, scratch) as path:
        if member.format == "parquet":
            whole_read = replace(reading, room=None)
            picked = await asyncio.to_thread(
                _pick_in_place, path, part, member.dimension, whole_read
            )
            return replace(picked, bytes_read=part.size)
        batches = await asyncio.to_thread(
            lambda: list(read_part(path, member.format, member.dimension))
        )
    whole = pa.Table.from_batches(batches, snapshot_schema(member.dimension))
    if whole.num_rows != part.rows:
        raise CorruptSnapshotError(
            f"part {part.key} decodes to {whole.num_rows} rows, metadata says {part.rows}"
        )
    mask, found, written = _pick(whole, reading)
    return PartPick(whole.filter(mask), found, written, part.size)


def _pick(keys: pa.Table, reading: Reading) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Of rows ``keys``: which are selected, the wanted ids seen, the ids that hide rows below."""
    selection, gone = reading.selection, reading.gone
    id_column = keys.column("document_id").combine_chunks().cast(ID_TYPE)
    every = pa.array(np.ones(keys.num_rows, dtype=bool))
    visible = every if gone is None else pc.invert(pc.is_in(id_column, value_set=gone))
    wanted = every if selection.ids is None else pc.is_in(id_column, value_set=selection.ids)
    empty = pa.array([], ID_TYPE)
    found = empty if selection.ids is None else id_column.filter(pc.and_(wanted, visible))
    written = id_column.filter(wanted) if reading.below else empty
    mask = pc.and_(selection.row_mask(keys), visible)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return mask, found, written


def _pick_in_place(path: Path, part: PartInfo, dimension: int, reading: Reading) -> PartPick:
    """A native Parquet part read group by group, only where a wanted row can be."""
    size = path.stat().st_size
    if size != part.size:
        raise CorruptSnapshotError(f"part {part.key} has {size} bytes, metadata says {part.size}")
    with CountingFile(path, "rb") as handle:
        try:
            picked = _pick_groups(open_checked_parquet(handle, dimension), reading)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise CorruptSnapshotError(f"part {part.key} is unreadable: {exc}") from None
        return replace(picked, bytes_read=handle.bytes_read)


def _pick_groups(part: pq.ParquetFile, reading: Reading) -> PartPick:
    selection, room = reading.selection, reading.room
    wanted = sorted(selection.ids.to_pylist()) if selection.ids is not None else None
    tables: list[pa.Table] = []
    found: list[pa.Array] = []
    written: list[pa.Array] = []
    keys_read = selection.key_columns
    rest = [name for name in selection.columns if name not in keys_read]
    for group in range(part.num_row_groups):
        stats = _group_ranges(part.metadata.row_group(group))
        if not _worth_reading(reading, wanted, stats, room):
            continue
        keys = part.read_row_group(group, columns=keys_read)
        mask, seen, ids = _pick(keys, reading)
        found.append(seen)
        written.append(ids)
        taken = pc.sum(mask).as_py() or 0
        if room is not None:
            mask, taken = _first(mask, room), min(taken, room)
            room -= taken
        if taken:
            selected = keys.filter(mask)
            others = part.read_row_group(group, columns=rest).filter(mask) if rest else None
            for name in rest:
                assert others is not None
                selected = selected.append_column(name, others.column(name))
            tables.append(selected)
    empty = pa.array([], ID_TYPE)
    return PartPick(
        pa.concat_tables(tables) if tables else part.schema_arrow.empty_table(),
        pa.concat_arrays(found) if found else empty,
        pa.concat_arrays(written) if written else empty,
    )


def _worth_reading(
    reading: Reading,
    wanted: list[bytes] | None,
    stats: dict[str, tuple[object, object]],
    room: int | None,
) -> bool:
    """From a row group's statistics: whether it can hold a wanted id or a row to take.

    With ids, a group that may hold one is read even when no row of it can be taken (the
    report says which wanted ids the snapshot holds); a member with others below it is read
    for the ids that hide theirs."""
    if wanted is not None:
        return _ids_may_hold(wanted, stats.get("document_id"))
    if reading.below:
        return True
    return room != 0 and _conditions_may_hold(reading.selection, stats)


def _first(mask: pa.Array, count: int) -> pa.Array:
    """``mask`` with only its first ``count`` true values kept."""
    values = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    values[np.flatnonzero(values)[count:]] = False
    return pa.array(values)


def _group_ranges(group: pq.RowGroupMetaData) -> dict[str, tuple[object, object]]:
    ranges = {}
    for index in range(group.num_columns):
        column = group.column(index)
        stats = column.statistics
        if stats is not None and stats.has_min_max:
            ranges[column.path_in_schema] = (stats.min, stats.max)
    return ranges


def _ids_may_hold(wanted: list[bytes], span: tuple[object, object] | None) -> bool:
    if span is None:
        return True
    low, high = span
    if not isinstance(low, bytes) or not isinstance(high, bytes):
        return True
    at = bisect.bisect_left(wanted, low)
    return at < len(wanted) and wanted[at] <= high


def _conditions_may_hold(selection: Selection, stats: dict[str, tuple[object, object]]) -> bool:
    for condition in selection.where:
        span = stats.get(condition.column)
        if span is None:
            continue
        try:
            if not condition.may_hold(*span):
                return False
        except TypeError:  # a statistic of another type than the value: read the group
            continue
    return True
