"""Partial restore: the rows and columns a :class:`Selection` asks for, reading little.

A native part is read where it lies (a local file, or an S3 object by ranged GETs), row
group by row group: a group whose document_id (or inserted_at) statistics cannot hold a
wanted row is skipped, then the columns that decide the selection are read, and the other
asked-for columns only where a row matched: only the pages holding the matched rows when the
part has a row-aligned page index (handlers.codecs.parquet_pages), and their ids are checked
against the ones read first. Such a part is checked for its size, its schema and its footer's
row count (and in S3 for the SHA-256 the server recorded, when it keeps one), not for its
SHA-256 (that needs every byte; ``snapshots verify`` does it). An AkiDB-format part is
fetched whole and its SHA-256 checked before anything is decoded.

A delta chain is selected member by member in chain order: a row is visible when no
snapshot above it wrote or deleted its id (handlers.chain gives those ids, from the row
indexes and deletes of the members above); restore order is the chain's.
"""

from __future__ import annotations

import asyncio
import bisect
import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from handlers.chain import chain_of, hidden_ids
from handlers.codecs import read_part
from handlers.codecs.parquet import open_checked_parquet
from handlers.codecs.parquet_pages import Footer, PageFile, Prefetch, first_reads, read_rows
from handlers.errors import CorruptSnapshotError
from handlers.metadata import PartInfo, SnapshotMetadata
from handlers.model import ID_TYPE, snapshot_schema
from handlers.selection import Selection
from handlers.stores import ObjectStore
from handlers.stores.ranged import RangedFile
from handlers.verify import checked_part_file, head_checked


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
    store: ObjectStore,
    metadata: SnapshotMetadata,
    selection: Selection,
    scratch: Path,
    sink: Callable[[pa.Table], None],
) -> Picked:
    """The selected rows of the snapshot as of ``metadata`` (a chain applied), in order,
    given part by part to ``sink`` (run in a worker thread) with only the asked-for columns."""
    members = await chain_of(store, metadata) if metadata.delta is not None else [metadata]
    hidden = await hidden_ids(store, members, scratch) if len(members) > 1 else [None]
    picked = Picked(bytes_read=sum(_side_bytes(member) for member in members))
    schema = output_schema(metadata.dimension, selection)
    room = selection.limit
    for member, gone in zip(members, hidden, strict=True):
        reading = Reading(selection, gone if gone is not None and len(gone) else None, room)
        for part in member.parts:
            found = await _pick_part(store, member, part, reading, scratch)
            table = found.table.select(list(selection.columns)).cast(schema)
            if reading.room is not None:
                table = table.slice(0, reading.room)
                reading = replace(reading, room=reading.room - table.num_rows)
            if table.num_rows:
                await asyncio.to_thread(sink, table)
            picked.found.append(found.found)
            picked.bytes_read += found.bytes_read
        room = reading.room
    return picked


def output_schema(dimension: int, selection: Selection) -> pa.Schema:
    schema = snapshot_schema(dimension)
    return pa.schema([schema.field(name) for name in selection.columns])


def _side_bytes(member: SnapshotMetadata) -> int:
    """What applying a delta reads besides its parts: its row index and deletes objects."""
    return sum(side.size for side in member.side_objects) if member.delta is not None else 0


@dataclass(frozen=True)
class Reading:
    """How one chain member is read: the selection, the ids the members above it write or
    delete (hidden here), and how many rows may still be taken (None: no limit)."""

    selection: Selection
    gone: pa.Array | None
    room: int | None


@dataclass(frozen=True)
class PartPick:
    """Of one part: the selected rows, the wanted ids it holds visibly, and the bytes read."""

    table: pa.Table
    found: pa.Array
    bytes_read: int = 0


async def _pick_part(
    store: ObjectStore, member: SnapshotMetadata, part: PartInfo, reading: Reading, scratch: Path
) -> PartPick:
    if member.format == "parquet":
        local = store.local_path(part.key)
        if local is not None:
            return await asyncio.to_thread(_pick_in_place, local, part, member.dimension, reading)
        return await _pick_by_ranges(store, part, member.dimension, reading)
    async with checked_part_file(store, part, scratch) as path:
        batches = await asyncio.to_thread(
            lambda: list(read_part(path, member.format, member.dimension))
        )
    whole = pa.Table.from_batches(batches, snapshot_schema(member.dimension))
    if whole.num_rows != part.rows:
        raise CorruptSnapshotError(
            f"part {part.key} decodes to {whole.num_rows} rows, metadata says {part.rows}"
        )
    mask, found = _pick(whole, reading)
    if reading.room is not None:
        mask = _first(mask, reading.room)
    return PartPick(whole.filter(mask), found, part.size)


def _pick(keys: pa.Table, reading: Reading) -> tuple[pa.Array, pa.Array]:
    """Of rows ``keys``: which are selected, and the wanted ids among the visible ones."""
    selection, gone = reading.selection, reading.gone
    id_column = keys.column("document_id").combine_chunks().cast(ID_TYPE)
    every = pa.array(np.ones(keys.num_rows, dtype=bool))
    visible = every if gone is None else pc.invert(pc.is_in(id_column, value_set=gone))
    found = pa.array([], ID_TYPE)
    if selection.ids is not None:
        found = id_column.filter(pc.and_(pc.is_in(id_column, value_set=selection.ids), visible))
    mask = pc.and_(selection.row_mask(keys), visible)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return mask, found


def _pick_in_place(path: Path, part: PartInfo, dimension: int, reading: Reading) -> PartPick:
    """A native Parquet part of a local store, read in place."""
    size = path.stat().st_size
    if size != part.size:
        raise CorruptSnapshotError(f"part {part.key} has {size} bytes, metadata says {part.size}")
    with CountingFile(path, "rb") as handle:
        picked = _pick_native(handle, part, dimension, reading)
        return replace(picked, bytes_read=handle.bytes_read)


async def _pick_by_ranges(
    store: ObjectStore, part: PartInfo, dimension: int, reading: Reading
) -> PartPick:
    """A native Parquet part of a remote store, read by ranged GETs. Its size, and the SHA-256
    the server recorded when it keeps one, are checked against the metadata first."""
    info = await head_checked(store, part)
    handle = RangedFile(store, part.key, info.size, asyncio.get_running_loop())
    picked = await asyncio.to_thread(
        _pick_native, handle, part, dimension, reading, handle.prefetch
    )
    return replace(picked, bytes_read=handle.bytes_read)


def _pick_native(
    handle: BinaryIO,
    part: PartInfo,
    dimension: int,
    reading: Reading,
    prefetch: Prefetch | None = None,
) -> PartPick:
    """A native Parquet part read group by group, only where a wanted row can be."""
    try:
        parquet, footer = open_checked_parquet(handle, dimension)
        if parquet.metadata.num_rows != part.rows:
            raise CorruptSnapshotError(
                f"part {part.key} holds {parquet.metadata.num_rows} rows, metadata says {part.rows}"
            )
        pages = PageSource(PageFile(handle, Footer.parse(footer), prefetch))
        return _pick_groups(parquet, pages, reading)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptSnapshotError(f"part {part.key} is unreadable: {exc}") from None


@dataclass(frozen=True)
class PageSource:
    """A part's file and footer, to fetch only the pages of a few rows."""

    file: PageFile

    def ahead(self, group: int, columns: list[str]) -> None:
        """For a remote part: fetch at once what reading ``group`` starts with."""
        if self.file.prefetch is not None:
            self.file.prefetch(first_reads(self.file.footer, group, columns))

    def rows(
        self, part: pq.ParquetFile, group: int, columns: list[str], mask: pa.Array, ids: pa.Array
    ) -> pa.Table:
        """Columns ``columns`` of the rows of ``group`` that ``mask`` selects, whose ids are
        ``ids``. Page reads fetch the ids too: a page index that places rows wrongly is a
        corrupt part, never other documents restored."""
        rows = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
        asked = list(dict.fromkeys([*columns, "document_id"]))
        table = read_rows(self.file, group, asked, rows.astype(np.int64))
        if table is None:
            return part.read_row_group(group, columns=columns).filter(mask)
        fetched = table.column("document_id").combine_chunks().cast(ID_TYPE)
        if not fetched.equals(ids.cast(ID_TYPE)):
            raise CorruptSnapshotError(f"row group {group}: its page index places rows wrongly")
        return table.select(columns)


def _pick_groups(part: pq.ParquetFile, pages: PageSource, reading: Reading) -> PartPick:
    selection, room = reading.selection, reading.room
    wanted = sorted(selection.ids.to_pylist()) if selection.ids is not None else None
    tables: list[pa.Table] = []
    found: list[pa.Array] = []
    keys_read = selection.key_columns
    rest = [name for name in selection.columns if name not in keys_read]
    for group in range(part.num_row_groups):
        stats = _group_ranges(part.metadata.row_group(group))
        if not _worth_reading(selection, wanted, stats, room):
            continue
        pages.ahead(group, keys_read)
        keys = part.read_row_group(group, columns=keys_read)
        mask, seen = _pick(keys, reading)
        found.append(seen)
        taken = pc.sum(mask).as_py() or 0
        if room is not None:
            mask, taken = _first(mask, room), min(taken, room)
            room -= taken
        if taken:
            selected = keys.filter(mask)
            ids = selected.column("document_id").combine_chunks()
            others = pages.rows(part, group, rest, mask, ids) if rest else None
            for name in rest:
                assert others is not None
                selected = selected.append_column(name, others.column(name))
            tables.append(selected)
    return PartPick(
        pa.concat_tables(tables) if tables else part.schema_arrow.empty_table(),
        pa.concat_arrays(found) if found else pa.array([], ID_TYPE),
    )


def _worth_reading(
    selection: Selection,
    wanted: list[bytes] | None,
    stats: dict[str, tuple[object, object]],
    room: int | None,
) -> bool:
    """From a row group's statistics: whether it can hold a wanted id or a row to take.
    With ids, a group that may hold one is read even when no row of it can be taken: the
    report says which wanted ids the snapshot holds."""
    if wanted is not None:
        return _ids_may_hold(wanted, stats.get("document_id"))
    return room != 0 and _conditions_may_hold(selection, stats)


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
