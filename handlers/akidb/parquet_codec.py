"""AkiDB 2.0's Parquet snapshot: six columns read back *by position* (docs/akidb-2.0.md).

Written exactly as AkiDB 2.0's encoder writes it (SNAPPY, 10,000 rows per row group,
dictionary on, Parquet format 1.0), so AkiDB 2.0 servers restore it. ``inserted_at`` is
``timestamp[ms]`` there: sub-millisecond digits are dropped on write (said in the output).
Read: the same six columns, in that order and of those types, or the file is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handlers.errors import CorruptSnapshotError, InvalidDocumentsError
from handlers.hashing import HashedOutput, HashingFile
from handlers.model import DocumentBatch

ROWS_PER_ROW_GROUP = 10_000
PRECISION_NOTE = "inserted_at: AkiDB Parquet holds milliseconds (sub-millisecond digits dropped)"


def akidb_schema(dimension: int) -> pa.Schema:
    """Column by column what AkiDB 2.0's decoder reads, by position 0..5."""
    return pa.schema(
        [
            pa.field("document_id", pa.binary(), nullable=False),
            pa.field("external_id", pa.string(), nullable=True),
            pa.field("dimension", pa.uint32(), nullable=False),
            pa.field(
                "vector",
                pa.list_(pa.field("item", pa.float32(), nullable=False), dimension),
                nullable=False,
            ),
            pa.field("metadata_json", pa.string(), nullable=True),
            pa.field("inserted_at", pa.timestamp("ms"), nullable=False),
        ]
    )


def to_akidb_batch(batch: DocumentBatch) -> pa.RecordBatch:
    record = batch.record_batch
    rows = batch.num_rows
    micros = record.column("inserted_at").cast(pa.int64()).to_numpy()
    millis = np.floor_divide(micros, 1000)
    vector_type = akidb_schema(batch.dimension).field("vector").type
    arrays = [
        record.column("document_id").cast(pa.binary()),
        record.column("external_id"),
        pa.array(np.full(rows, batch.dimension, dtype=np.uint32), type=pa.uint32()),
        pa.FixedSizeListArray.from_arrays(record.column("vector").flatten(), type=vector_type),
        record.column("metadata"),
        pa.array(millis, type=pa.int64()).cast(pa.timestamp("ms")),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=akidb_schema(batch.dimension))


class AkidbParquetWriter(HashedOutput):
    """One AkiDB Parquet file, whole row groups of exactly 10,000 rows, hashed as written."""

    extension = "parquet"

    def __init__(self, path: Path, dimension: int, compression: str = "snappy") -> None:
        self._schema = akidb_schema(dimension)
        self._sink = HashingFile(path)
        self._writer = pq.ParquetWriter(
            self._sink,
            self._schema,
            compression="snappy",
            use_dictionary=True,
            version="2.4",
            use_compliant_nested_type=False,
            data_page_version="1.0",
        )
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, batch: DocumentBatch) -> None:
        self._pending.append(to_akidb_batch(batch))
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= ROWS_PER_ROW_GROUP:
            self._flush(whole_groups_only=True)

    def close(self) -> None:
        try:
            self._flush(whole_groups_only=False)
            self._writer.close()
        finally:
            self._sink.close()

    def _flush(self, *, whole_groups_only: bool) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        cut = (table.num_rows // ROWS_PER_ROW_GROUP) * ROWS_PER_ROW_GROUP
        if not whole_groups_only:
            cut = table.num_rows
        if cut:
            self._writer.write_table(table.slice(0, cut), row_group_size=ROWS_PER_ROW_GROUP)
        rest = table.slice(cut).combine_chunks()
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows


def read_akidb_parquet(path: Path, dimension: int) -> Iterator[pa.RecordBatch]:
    """Decode a stored AkiDB Parquet snapshot into snapshot-schema batches."""
    try:
        part = pq.ParquetFile(path, pre_buffer=False)
        check_akidb_schema(part.schema_arrow, dimension)
        stamp = datetime.now(UTC)
        for group in range(part.num_row_groups):
            for record in part.read_row_group(group).to_batches():
                yield DocumentBatch.from_arrow(record, default_inserted_at=stamp).record_batch
    except CorruptSnapshotError:
        raise
    except InvalidDocumentsError as exc:
        raise CorruptSnapshotError(f"AkiDB Parquet snapshot is unreadable: {exc.message}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptSnapshotError(f"AkiDB Parquet snapshot is unreadable: {exc}") from None


def check_akidb_schema(schema: pa.Schema, dimension: int) -> None:
    """Position by position, the name and type AkiDB's decoder expects."""
    expected = akidb_schema(dimension)
    if len(schema) != len(expected):
        raise CorruptSnapshotError(
            f"AkiDB Parquet snapshot has {len(schema)} columns, AkiDB 2.0 writes {len(expected)}"
        )
    for position, (found, wanted) in enumerate(zip(schema, expected, strict=True)):
        if found.name != wanted.name or not found.type.equals(wanted.type):
            raise CorruptSnapshotError(
                f"AkiDB Parquet column {position} is {found.name}: {found.type}, "
                f"expected {wanted.name}: {wanted.type}"
            )
