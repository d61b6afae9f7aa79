"""Snapshot part codecs, chosen by the snapshot's format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from handlers.akidb.json_codec import AkidbJsonWriter, read_akidb_json
from handlers.akidb.parquet_codec import AkidbParquetWriter, read_akidb_parquet
from handlers.codecs.parquet import VECTOR_PAGE_BYTES, ParquetPartWriter, read_parquet_part
from handlers.errors import InvalidRequestError
from handlers.model import DocumentBatch


class PartWriter(Protocol):
    extension: str
    rows: int

    @property
    def sha256(self) -> str:
        """Of the bytes written, valid once closed."""
        ...

    @property
    def size(self) -> int: ...

    def write(self, batch: DocumentBatch) -> None: ...

    def close(self) -> None: ...


def open_part_writer(
    path: Path, fmt: str, dimension: int, compression: str, page_bytes: int = VECTOR_PAGE_BYTES
) -> PartWriter:
    """``page_bytes``: vector bytes per page of a native part (AkiDB's formats fix theirs)."""
    if fmt == "parquet":
        return ParquetPartWriter(path, dimension, compression, page_bytes=page_bytes)
    if fmt == "akidb-parquet":
        return AkidbParquetWriter(path, dimension)
    if fmt == "akidb-json":
        return AkidbJsonWriter(path, dimension)
    raise InvalidRequestError(f"unknown snapshot format {fmt!r}")


def part_extension(fmt: str) -> str:
    return {"parquet": "parquet", "akidb-parquet": "parquet", "akidb-json": "json"}[fmt]


def read_part(path: Path, fmt: str, dimension: int) -> Iterator[pa.RecordBatch]:
    """Decode a part file; raises CorruptSnapshotError rather than return wrong data."""
    if fmt == "parquet":
        return read_parquet_part(path, dimension)
    if fmt == "akidb-parquet":
        return read_akidb_parquet(path, dimension)
    if fmt == "akidb-json":
        return read_akidb_json(path, dimension)
    raise InvalidRequestError(f"unknown snapshot format {fmt!r}")
