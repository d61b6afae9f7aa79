"""The Parquet and JSON codecs: exact round trips, the DESIGN settings, and no wrong data."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handlers.codecs import open_part_writer, read_part
from handlers.codecs.parquet import KV_DIMENSION, KV_FORMAT_VERSION
from handlers.errors import CorruptSnapshotError
from handlers.model import DocumentBatch, vectors_bit_equal
from tests.support import documents_table


def encode(tmp_path: Path, table: pa.Table, fmt: str, compression: str = "zstd") -> Path:
    path = tmp_path / f"part.{fmt}.bin"
    batch = DocumentBatch(table.to_batches()[0])
    writer = open_part_writer(path, fmt, batch.dimension, compression)
    writer.write(batch)
    writer.close()
    return path


@pytest.mark.parametrize("fmt", ["parquet", "akidb-json"])
def test_round_trip_is_bit_for_bit(tmp_path: Path, fmt: str) -> None:
    """Every column comes back identical, vectors to the bit."""
    table = documents_table(300, 48, seed=3)
    back = pa.Table.from_batches(list(read_part(encode(tmp_path, table, fmt), fmt, 48)))
    assert back.num_rows == 300
    assert vectors_bit_equal(
        DocumentBatch(back.combine_chunks().to_batches()[0]).vectors,
        DocumentBatch(table.to_batches()[0]).vectors,
    )
    for column in ("document_id", "external_id", "metadata", "inserted_at"):
        assert back.column(column).equals(table.column(column)), column


@pytest.mark.parametrize("compression", ["zstd", "snappy", "lz4", "none"])
def test_parquet_settings_follow_design(tmp_path: Path, compression: str) -> None:
    """Vector values use byte-stream-split, no dictionary, the chosen codec; kv metadata set."""
    path = encode(tmp_path, documents_table(200, 32), "parquet", compression)
    parquet = pq.ParquetFile(path)
    column = parquet.metadata.row_group(0).column(2)
    assert column.path_in_schema == "vector.list.element"
    assert "BYTE_STREAM_SPLIT" in column.encodings
    assert not column.has_dictionary_page
    expected = {"none": "UNCOMPRESSED", "lz4": "LZ4"}.get(compression, compression.upper())
    assert column.compression == expected
    meta = parquet.schema_arrow.metadata
    assert meta[KV_FORMAT_VERSION] == b"1" and meta[KV_DIMENSION] == b"32"


def test_parquet_row_groups_are_sized_by_bytes(tmp_path: Path) -> None:
    """Row groups hold about the configured bytes, not one group per written batch."""
    from handlers.codecs.parquet import ParquetPartWriter

    path = tmp_path / "p.parquet"
    writer = ParquetPartWriter(path, 64, "zstd", row_group_bytes=64 * 1024)
    table = documents_table(1000, 64)
    for batch in table.to_batches(max_chunksize=10):
        writer.write(DocumentBatch(batch))
    writer.close()
    groups = pq.ParquetFile(path).metadata.num_row_groups
    assert 1 < groups < 100, groups


def test_truncated_parquet_is_corrupt_not_wrong(tmp_path: Path) -> None:
    """A cut-off part raises CorruptSnapshotError."""
    path = encode(tmp_path, documents_table(100, 16), "parquet")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptSnapshotError):
        list(read_part(path, "parquet", 16))


def test_parquet_with_other_dimension_is_refused(tmp_path: Path) -> None:
    """A part whose dimension disagrees with the metadata is refused."""
    path = encode(tmp_path, documents_table(10, 16), "parquet")
    with pytest.raises(CorruptSnapshotError, match="dimension"):
        list(read_part(path, "parquet", 17))


def test_foreign_parquet_is_refused(tmp_path: Path) -> None:
    """A Parquet file that is not an akisnap part (no format version) is refused."""
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(CorruptSnapshotError, match="format version"):
        list(read_part(path, "parquet", 2))


def test_corrupt_json_part_is_refused(tmp_path: Path) -> None:
    """A JSON part that does not parse is CorruptSnapshotError."""
    path = encode(tmp_path, documents_table(5, 4), "akidb-json")
    path.write_text(path.read_text()[:-10])
    with pytest.raises(CorruptSnapshotError):
        list(read_part(path, "akidb-json", 4))
