"""Read a few rows of a native part by fetching only the pages that hold them.

pyarrow reads a row group's column chunk whole; for an id lookup that is most of a snapshot.
Native parts are written with a page index and row-aligned pages (every column starts a page
at the same rows, see handlers.codecs.parquet), so the pages holding given rows are known from
the offset index. Those pages (and a column's dictionary page when they need it) are copied
into a small Parquet file in memory, one row group per run of adjacent pages, under the
part's own schema, and pyarrow decodes that. A part without an aligned page index (older
akisnap parts, pages cut by size) gives None: the caller reads the row group whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from handlers.codecs.thrift_compact import (
    I64,
    LIST,
    STRUCT,
    Field,
    ThriftError,
    decode_struct,
    encode_struct,
)

MAGIC = b"PAR1"
DICTIONARY_ENCODINGS = {2, 8}  # PLAIN_DICTIONARY, RLE_DICTIONARY
DICTIONARY_PAGE = 2
KEPT_CHUNK_FIELDS = (1, 2, 3, 4, 8)  # type, encodings, path, codec, key-value metadata

Struct = dict[int, Field]
Prefetch = Callable[[list[tuple[int, int]]], None]
"""Told the (start, length) spans about to be read, to fetch them at once (a remote part)."""


@dataclass(frozen=True)
class Footer:
    """A part's decoded footer (FileMetaData), as read from its bytes."""

    fields: Struct

    @classmethod
    def parse(cls, footer: bytes) -> Footer:
        fields, _ = decode_struct(footer)
        return cls(fields)

    def row_group(self, index: int) -> Struct:
        groups: list[Struct] = self.fields[4][1][1]
        return groups[index]


@dataclass(frozen=True)
class ChunkPages:
    """One column chunk's pages: byte offset and size of each, the dictionary page if any."""

    meta: Struct
    offsets: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64]
    dictionary: tuple[int, int] | None


@dataclass(frozen=True)
class PageFile:
    """A part's file and decoded footer; ``prefetch`` (if any) is told what is read next."""

    handle: BinaryIO
    footer: Footer
    prefetch: Prefetch | None = None


def read_rows(
    part: PageFile, group: int, columns: list[str], rows: npt.NDArray[np.int64]
) -> pa.Table | None:
    """Rows ``rows`` (sorted positions within row group ``group``) of ``columns``, reading
    only their pages; None when the group has no row-aligned page index, or when the rows are
    on most of its pages (reading the group whole is then as cheap and decodes faster)."""
    try:
        return _read_rows(part, group, columns, rows)
    except (KeyError, IndexError, TypeError) as exc:
        raise ThriftError(f"malformed page index: {exc!r}") from None


def first_reads(footer: Footer, group: int, columns: list[str]) -> list[tuple[int, int]]:
    """What reading rows of row group ``group`` reads first: the column chunks ``columns``
    (the ids, read whole) and the group's offset indexes, as (start, length) spans."""
    spans: list[tuple[int, int]] = []
    try:
        for chunk in footer.row_group(group)[1][1][1]:
            meta = chunk[3][1]
            if _column_name(meta) in columns:
                start = meta[11][1] if 11 in meta else meta[9][1]
                spans.append((start, meta[7][1]))
            if 4 in chunk and 5 in chunk:
                spans.append((chunk[4][1], chunk[5][1]))
    except (KeyError, IndexError, TypeError) as exc:
        raise ThriftError(f"malformed footer: {exc!r}") from None
    return spans


def _read_rows(
    part: PageFile, group: int, columns: list[str], rows: npt.NDArray[np.int64]
) -> pa.Table | None:
    handle, footer = part.handle, part.footer
    row_group = footer.row_group(group)
    metas: list[Struct] = [chunk[3][1] for chunk in row_group[1][1][1]]
    wanted = [index for index, meta in enumerate(metas) if _column_name(meta) in columns]
    located = _aligned_pages(handle, row_group, wanted)
    if located is None:
        return None
    starts, chunks = located
    pages = np.unique(np.searchsorted(starts, rows, side="right") - 1)
    if 2 * len(pages) > len(starts):
        return None
    runs = _runs(pages)
    if part.prefetch is not None:
        part.prefetch(_spans(chunks, runs))
    bounds = np.append(starts, row_group[3][1])
    mini = MiniFile(handle)
    for first, last in runs:
        mini.add_row_group(metas, chunks, first, last, int(bounds[last + 1] - bounds[first]))
    table = mini.decode(footer, columns)
    run_offsets = np.cumsum([0] + [int(bounds[b + 1] - bounds[a]) for a, b in runs])
    return table.take(pa.array(_positions(rows, bounds, runs, run_offsets)))


def _positions(
    rows: npt.NDArray[np.int64],
    bounds: npt.NDArray[np.int64],
    runs: list[tuple[int, int]],
    run_offsets: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Where each wanted row lands in the decoded runs (concatenated in order)."""
    run_starts = np.array([bounds[first] for first, _ in runs], dtype=np.int64)
    run_index = np.searchsorted(run_starts, rows, side="right") - 1
    return np.asarray(run_offsets[run_index] + (rows - run_starts[run_index]), dtype=np.int64)


def _runs(pages: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """Adjacent page numbers merged into (first, last) runs: one read each."""
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    return [(int(part[0]), int(part[-1])) for part in np.split(pages, breaks)]


def _spans(chunks: dict[int, ChunkPages], runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """What MiniFile reads for ``runs``: each run's pages of each column, and dictionaries."""
    spans = [chunk.dictionary for chunk in chunks.values() if chunk.dictionary is not None]
    for chunk in chunks.values():
        for first, last in runs:
            start = int(chunk.offsets[first])
            spans.append((start, int(chunk.offsets[last] + chunk.sizes[last]) - start))
    return spans


def _column_name(meta: Struct) -> str:
    path: list[bytes] = meta[3][1][1]
    return path[0].decode()


def _aligned_pages(
    handle: BinaryIO, row_group: Struct, wanted: list[int]
) -> tuple[npt.NDArray[np.int64], dict[int, ChunkPages]] | None:
    """The first row of each page and the pages of the wanted columns (by position), when
    those columns all page alike."""
    chunks: list[Struct] = [row_group[1][1][1][index] for index in wanted]
    if not chunks or any(4 not in chunk or 5 not in chunk for chunk in chunks):
        return None
    start = min(chunk[4][1] for chunk in chunks)
    end = max(chunk[4][1] + chunk[5][1] for chunk in chunks)
    region = _read_at(handle, start, end - start)
    starts: npt.NDArray[np.int64] | None = None
    located: dict[int, ChunkPages] = {}
    for position, chunk in zip(wanted, chunks, strict=True):
        index, _ = decode_struct(region, chunk[4][1] - start)
        locations: list[Struct] = index[1][1][1]
        first_rows = np.array([location[3][1] for location in locations], dtype=np.int64)
        if starts is None:
            starts = first_rows
        elif not np.array_equal(starts, first_rows):
            return None
        located[position] = _chunk_pages(chunk[3][1], locations)
    if starts is None or not _pages_cover(starts, row_group[3][1]):
        raise ThriftError("offset index does not cover the row group's rows")
    return starts, located


def _pages_cover(starts: npt.NDArray[np.int64], rows: int) -> bool:
    """Pages start at row 0, in order, each before the group's end."""
    return bool(
        len(starts) and starts[0] == 0 and np.all(np.diff(starts) > 0) and starts[-1] < rows
    )


def _chunk_pages(meta: Struct, locations: list[Struct]) -> ChunkPages:
    offsets = np.array([location[1][1] for location in locations], dtype=np.int64)
    sizes = np.array([location[2][1] for location in locations], dtype=np.int64)
    dictionary = None
    if 11 in meta and meta[11][1] < offsets[0]:
        dictionary = (int(meta[11][1]), int(offsets[0] - meta[11][1]))
    return ChunkPages(meta, offsets, sizes, dictionary)


class MiniFile:
    """A Parquet file in memory made of pages copied from a part, one row group per run."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._body = bytearray(MAGIC)
        self._groups: list[Struct] = []
        self._dictionaries: dict[int, bytes] = {}

    def add_row_group(
        self, metas: list[Struct], pages: dict[int, ChunkPages], first: int, last: int, rows: int
    ) -> None:
        """Pages ``first..last`` of the columns in ``pages``, as one row group of ``rows``
        rows; the other columns are there in name only (empty, never read)."""
        columns = [
            self._add_pages(index, pages[index], first, last) if index in pages else _unread(meta)
            for index, meta in enumerate(metas)
        ]
        self._groups.append(_row_group(columns, rows))

    def decode(self, footer: Footer, columns: list[str]) -> pa.Table:
        """The row groups added, decoded under the part's schema and key-value metadata."""
        fields = {key: value for key, value in footer.fields.items() if key in (1, 2, 5, 6, 7)}
        fields[3] = (I64, sum(group[3][1] for group in self._groups))
        fields[4] = (LIST, (STRUCT, self._groups))
        encoded = encode_struct(fields)
        data = bytes(self._body) + encoded + len(encoded).to_bytes(4, "little") + MAGIC
        return pq.ParquetFile(pa.BufferReader(data)).read(columns=columns)

    def _add_pages(self, column: int, chunk: ChunkPages, first: int, last: int) -> Struct:
        """Append a column's pages (after its dictionary page when they use it); the column
        chunk metadata that describes them here."""
        start = int(chunk.offsets[first])
        pages = _read_at(self._handle, start, int(chunk.offsets[last] + chunk.sizes[last]) - start)
        values, uncompressed, needs_dictionary = _scan_pages(pages)
        meta = {field: chunk.meta[field] for field in KEPT_CHUNK_FIELDS if field in chunk.meta}
        chunk_start = len(self._body)
        if needs_dictionary and chunk.dictionary is not None:
            if column not in self._dictionaries:
                self._dictionaries[column] = _read_at(self._handle, *chunk.dictionary)
            meta[11] = (I64, chunk_start)
            self._body += self._dictionaries[column]
            uncompressed += _scan_pages(self._dictionaries[column])[1]
        meta[9] = (I64, len(self._body))
        self._body += pages
        meta[5] = (I64, values)
        meta[6] = (I64, uncompressed)
        meta[7] = (I64, len(self._body) - chunk_start)
        return {2: (I64, chunk_start), 3: (STRUCT, meta)}


def _unread(meta: Struct) -> Struct:
    """A column chunk of no bytes: a column the read leaves out (pyarrow never opens it)."""
    empty = {field: meta[field] for field in KEPT_CHUNK_FIELDS if field in meta}
    empty.update({5: (I64, 0), 6: (I64, 0), 7: (I64, 0), 9: (I64, len(MAGIC))})
    return {2: (I64, len(MAGIC)), 3: (STRUCT, empty)}


def _scan_pages(pages: bytes) -> tuple[int, int, bool]:
    """Of consecutive pages: their values, uncompressed bytes (headers included), and whether
    any data page is dictionary-encoded."""
    values = uncompressed = 0
    needs_dictionary = False
    pos = 0
    while pos < len(pages):
        header, body_start = decode_struct(pages, pos)
        uncompressed += body_start - pos + header[2][1]
        pos = body_start + header[3][1]
        if header[1][1] == DICTIONARY_PAGE:
            continue
        data = header.get(5, header.get(8))
        if data is None:
            raise ValueError("a page that is neither data nor dictionary")
        values += data[1][1][1]
        encoding = data[1][2 if 5 in header else 4][1]
        needs_dictionary = needs_dictionary or encoding in DICTIONARY_ENCODINGS
    return values, uncompressed, needs_dictionary


def _row_group(columns: list[Struct], rows: int) -> Struct:
    first = min(column[2][1] for column in columns if column[3][1][7][1])
    total = sum(column[3][1][7][1] for column in columns)
    return {
        1: (LIST, (STRUCT, columns)),
        2: (I64, sum(column[3][1][6][1] for column in columns)),
        3: (I64, rows),
        5: (I64, first),
        6: (I64, total),
    }


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError(f"part ends before byte {offset + size}")
    return data
