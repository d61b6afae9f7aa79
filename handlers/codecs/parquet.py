"""The Parquet codec: fixed-size-list float32 vectors, zstd + byte-stream-split, sized row groups.

Float columns get no dictionary (embeddings never repeat) and byte-stream-split, which puts
the exponent bytes of all floats side by side so zstd finds what little redundancy there is.

Parts carry a page index, and every column starts a page at the same rows (as many rows as
fill ``page_bytes`` of vectors, VECTOR_PAGE_BYTES unless set), so a lookup can fetch single pages
(handlers.codecs.parquet_pages). Smaller vector pages would make lookups cheaper but cost
compression: zstd then sees all four byte-stream-split streams in one block (measured on
real embeddings: 64 KiB pages store vectors 9% larger than 1 MiB pages).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from handlers.errors import CorruptSnapshotError
from handlers.hashing import HashedOutput, HashingFile
from handlers.model import DocumentBatch, bytes_per_row_estimate, snapshot_schema

FORMAT_VERSION = "1"
KV_FORMAT_VERSION = b"akisnap.format_version"
KV_DIMENSION = b"akisnap.dimension"
DEFAULT_ROW_GROUP_BYTES = 32 * 1024 * 1024
VECTOR_VALUES = "vector.list.element"
MAGIC = b"PAR1"
VECTOR_PAGE_BYTES = 1024 * 1024
DICTIONARY_PAGE_BYTES = 64 * 1024  # a lookup reads a column's dictionary page whole


def writer_options(compression: str) -> dict[str, Any]:
    return {
        "compression": "none" if compression == "none" else compression,
        "use_dictionary": ["external_id", "metadata"],
        "column_encoding": {VECTOR_VALUES: "BYTE_STREAM_SPLIT"},
        "write_statistics": ["document_id", "inserted_at"],
        "data_page_size": VECTOR_PAGE_BYTES,
    }


def part_writer_options(
    compression: str, dimension: int, page_bytes: int = VECTOR_PAGE_BYTES
) -> dict[str, Any]:
    """A part's options: row-aligned pages (the byte limit is set above what a page of
    vectors holds, so only the row count cuts pages) and a page index."""
    return {
        **writer_options(compression),
        "max_rows_per_page": rows_per_page(dimension, page_bytes),
        "data_page_size": 2 * max(page_bytes, VECTOR_PAGE_BYTES),
        "dictionary_pagesize_limit": DICTIONARY_PAGE_BYTES,
        "write_page_index": True,
    }


def rows_per_page(dimension: int, page_bytes: int = VECTOR_PAGE_BYTES) -> int:
    return max(1, page_bytes // (4 * dimension))


def file_schema(dimension: int) -> pa.Schema:
    return snapshot_schema(dimension).with_metadata(
        {KV_FORMAT_VERSION: FORMAT_VERSION.encode(), KV_DIMENSION: str(dimension).encode()}
    )


class ParquetPartWriter(HashedOutput):
    """Writes batches into one part file, buffering to whole row groups of a set byte size."""

    extension = "parquet"

    def __init__(
        self,
        path: Path,
        dimension: int,
        compression: str,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        page_bytes: int = VECTOR_PAGE_BYTES,
    ) -> None:
        self._rows_per_group = max(1, row_group_bytes // bytes_per_row_estimate(dimension))
        self._schema = file_schema(dimension)
        self._sink = HashingFile(path)
        self._writer = pq.ParquetWriter(
            self._sink, self._schema, **part_writer_options(compression, dimension, page_bytes)
        )
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, batch: DocumentBatch) -> None:
        self._pending.append(batch.record_batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= self._rows_per_group:
            self._flush()

    def close(self) -> None:
        try:
            self._flush()
            self._writer.close()
        finally:
            self._sink.close()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=snapshot_schema(self._schema_dim))
        self._writer.write_table(table, row_group_size=self._rows_per_group)
        self._pending, self._pending_rows = [], 0

    @property
    def _schema_dim(self) -> int:
        return int(self._schema.field("vector").type.list_size)


def read_parquet_part(source: Path | pa.NativeFile, dimension: int) -> Iterator[pa.RecordBatch]:
    """Decode one part, refusing anything that is not exactly the snapshot schema."""
    try:
        part = pq.ParquetFile(source)
        _check_file_schema(part.schema_arrow, dimension)
        for group in range(part.num_row_groups):
            table = part.read_row_group(group)
            yield from table.cast(snapshot_schema(dimension)).to_batches()
    except CorruptSnapshotError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptSnapshotError(f"Parquet part is unreadable: {exc}") from None


def parquet_part_rows(path: Path, dimension: int) -> int:
    """Rows of a part, after checking its footer and schema (without decoding the data)."""
    try:
        part = pq.ParquetFile(path)
        _check_file_schema(part.schema_arrow, dimension)
        return int(part.metadata.num_rows)
    except CorruptSnapshotError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptSnapshotError(f"Parquet part is unreadable: {exc}") from None


def open_checked_parquet(source: BinaryIO, dimension: int) -> tuple[pq.ParquetFile, bytes]:
    """A part's Parquet file, its footer read and its schema checked, no data read yet; and
    the footer's bytes (handlers.codecs.parquet_pages reads the page index through them).

    The footer is read by its recorded length: pyarrow's own first read takes the last 64 KiB,
    which is the whole of a small part."""
    source.seek(-8, io.SEEK_END)
    tail = source.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != MAGIC or length <= 0:
        raise CorruptSnapshotError("Parquet part has no Parquet footer")
    source.seek(-8 - length, io.SEEK_END)
    footer = source.read(length)
    part = pq.ParquetFile(source, metadata=pq.read_metadata(pa.BufferReader(MAGIC + footer + tail)))
    _check_file_schema(part.schema_arrow, dimension)
    return part, footer


def _check_file_schema(schema: pa.Schema, dimension: int) -> None:
    meta = schema.metadata or {}
    if meta.get(KV_FORMAT_VERSION) != FORMAT_VERSION.encode():
        raise CorruptSnapshotError(
            f"Parquet part has format version {meta.get(KV_FORMAT_VERSION)!r}, "
            f"expected {FORMAT_VERSION}"
        )
    if meta.get(KV_DIMENSION) != str(dimension).encode():
        raise CorruptSnapshotError(
            f"Parquet part has dimension {meta.get(KV_DIMENSION)!r}, metadata says {dimension}"
        )
    expected = snapshot_schema(dimension)
    if not schema.remove_metadata().equals(expected, check_metadata=False):
        raise CorruptSnapshotError(
            f"Parquet part schema differs from the snapshot schema: {schema}"
        )
