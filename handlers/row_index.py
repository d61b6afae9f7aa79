"""The row index: document id → content hash of the rows a native snapshot stores.

A delta from a full export compares the export's rows against the index of its base's chain
(each member's own index, folded), so the base's data is never read again. The hash covers every
column (vector bytes, external id, metadata, inserted_at): two rows with the same hash are the
same row, bit for bit. A small index rides inline in the metadata (a small snapshot then costs
no extra object, see the commit path); a large one is a side object beside the parts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from handlers.errors import CorruptSnapshotError
from handlers.layout import snapshot_prefix
from handlers.metadata import PartInfo, RowIndexInfo
from handlers.model import ID_TYPE, DocumentBatch, fixed_size_list_to_matrix
from handlers.stores import ObjectStore
from handlers.verify import checked_part_file

INDEX_NAME = "row-index.parquet"
INLINE_INDEX_BYTES = 64 * 1024
"""Largest index kept inline: about 2,000 rows (ids and hashes do not compress), so the small
snapshots of the commit path (1,000 documents) stay at three S3 calls. Base64 adds a third to
the metadata file, which `list` reads: a bigger index is an object of its own."""
DELETES_NAME = "deletes.parquet"
HASH_BYTES = 16
NULL_LENGTH = 0xFFFFFFFF  # no text is that long: a null never hashes like a text
INDEX_SCHEMA = pa.schema(
    [
        pa.field("document_id", ID_TYPE, nullable=False),
        pa.field("row_hash", pa.binary(HASH_BYTES), nullable=False),
    ]
)
DELETES_SCHEMA = pa.schema([pa.field("document_id", ID_TYPE, nullable=False)])

RowIndex = dict[bytes, bytes]
"""document id (16 bytes) → row hash, in the collection's row order."""


def row_hashes(rows: pa.RecordBatch | pa.Table) -> list[bytes]:
    """One hash per row: the first 16 bytes of SHA-256 (the fastest hash hashlib has on CPUs
    with SHA extensions) over the vector's bytes, then :func:`_tails`. A full snapshot hashes
    every row it writes, so the loop does one hash object per row and nothing else."""
    if isinstance(rows, pa.Table):
        rows = rows.combine_chunks().to_batches()[0] if rows.num_rows else rows.to_batches()[0]
    vectors = np.ascontiguousarray(fixed_size_list_to_matrix(rows.column("vector")))
    width = vectors.shape[1] * vectors.itemsize
    flat = vectors.data.cast("B")
    tails = _tails(rows)
    offsets = np.frombuffer(tails.buffers()[1], np.int32, len(tails) + 1, tails.offset * 4)
    data = memoryview(tails.buffers()[2] or b"")
    sha256 = hashlib.sha256
    found = []
    for row in range(rows.num_rows):
        digest = sha256(flat[row * width : (row + 1) * width])
        digest.update(data[offsets[row] : offsets[row + 1]])
        found.append(digest.digest()[:HASH_BYTES])
    return found


def _tails(rows: pa.RecordBatch) -> pa.Array:
    """Per row, what follows the vector in its hash: external id and metadata, each as its
    UTF-8 length (4 bytes, little endian; 0xffffffff for null) and bytes, then inserted_at
    (8 bytes, little-endian microseconds). Built column-wise by Arrow, not row by row."""
    stamps = rows.column("inserted_at").cast(pa.int64()).to_numpy(zero_copy_only=False)
    return pc.binary_join_element_wise(
        _length_prefixed(rows.column("external_id")),
        _length_prefixed(rows.column("metadata")),
        _fixed_bytes(stamps.astype("<i8")),
        b"",
    )


def _length_prefixed(column: pa.Array) -> pa.Array:
    text = column.cast(pa.binary())
    lengths = pc.binary_length(text).cast(pa.int64()).fill_null(NULL_LENGTH).to_numpy()
    return pc.binary_join_element_wise(
        _fixed_bytes(lengths.astype("<u4")), text.fill_null(b""), b""
    )


def _fixed_bytes(values: np.ndarray[Any, Any]) -> pa.Array:
    """Each little-endian number's bytes as one binary value (zero copy into Arrow)."""
    size = values.dtype.itemsize
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(size), len(values), [None, pa.py_buffer(values.tobytes())]
    )
    return fixed.cast(pa.binary())


class RowIndexer:
    """Builds a full snapshot's index from its batches as the encoder reads them (the parts
    themselves may be uploaded and gone before the encoding ends). Hashing runs in a thread of
    its own, beside the encoding (SHA-256 and Parquet's compression both release the GIL), a
    few batches behind at most so the batches it still holds stay bounded."""

    AHEAD = 2

    def __init__(self) -> None:
        self.index: RowIndex = {}

    def wrap(self, batches: Iterator[DocumentBatch]) -> Iterator[DocumentBatch]:
        pending: deque[Future[list[tuple[bytes, bytes]]]] = deque()
        pool = ThreadPoolExecutor(1, thread_name_prefix="akisnap-row-index")
        try:
            for batch in batches:
                pending.append(pool.submit(_keyed_hashes, batch.record_batch))
                while len(pending) > self.AHEAD:
                    self.index.update(pending.popleft().result())
                yield batch
            while pending:
                self.index.update(pending.popleft().result())
        finally:
            # No wait: an abandoned generator may be closed by the garbage collector in the
            # pool's own thread, which cannot join itself; a hash still running is harmless.
            pool.shutdown(wait=False, cancel_futures=True)


def _keyed_hashes(rows: pa.RecordBatch) -> list[tuple[bytes, bytes]]:
    ids = rows.column("document_id").to_pylist()
    return list(zip(ids, row_hashes(rows), strict=True))


def index_bytes(index: RowIndex) -> bytes:
    table = pa.table(
        [pa.array(list(index), ID_TYPE), pa.array(list(index.values()), pa.binary(HASH_BYTES))],
        schema=INDEX_SCHEMA,
    )
    return _parquet_bytes(table)


def deletes_bytes(ids: Iterable[bytes]) -> bytes:
    return _parquet_bytes(pa.table([pa.array(list(ids), ID_TYPE)], schema=DELETES_SCHEMA))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


async def put_side_object(
    store: ObjectStore, collection_id: str, snapshot_id: str, name: str, data: bytes
) -> PartInfo:
    key = f"{snapshot_prefix(collection_id, snapshot_id)}{name}"
    await store.put_bytes(key, data)
    return PartInfo(key=key, size=len(data), rows=0, sha256=hashlib.sha256(data).hexdigest())


async def read_side_table(store: ObjectStore, part: PartInfo, scratch: Path) -> pa.Table:
    """A side object's table, once its size and SHA-256 match the metadata."""
    async with checked_part_file(store, part, scratch) as path:
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise CorruptSnapshotError(f"{part.key} is unreadable: {exc}") from None


async def store_index(
    store: ObjectStore, collection_id: str, snapshot_id: str, index: RowIndex
) -> RowIndexInfo:
    """Inline when small, else a side object (the caller verifies it with the parts)."""
    data = await asyncio.to_thread(index_bytes, index)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) <= INLINE_INDEX_BYTES:
        return RowIndexInfo(len(index), digest, inline=base64.b64encode(data).decode("ascii"))
    stored = await put_side_object(store, collection_id, snapshot_id, INDEX_NAME, data)
    return RowIndexInfo(len(index), digest, object=replace(stored, rows=len(index)))


async def index_ids(store: ObjectStore, info: RowIndexInfo, scratch: Path) -> pa.Array:
    """The document ids an index covers (the ids its snapshot writes)."""
    table = await load_index_table(store, info, scratch)
    return table.column("document_id").combine_chunks().cast(ID_TYPE)


async def load_index_table(store: ObjectStore, info: RowIndexInfo, scratch: Path) -> pa.Table:
    """An index as read (document_id, row_hash), its size and SHA-256 checked."""
    if info.object is not None:
        return await read_side_table(store, info.object, scratch)
    return _inline_table(info)


def _inline_table(info: RowIndexInfo) -> pa.Table:
    try:
        data = base64.b64decode(info.inline or "", validate=True)
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise CorruptSnapshotError("the inline row index does not match its SHA-256")
        return pq.read_table(io.BytesIO(data))
    except (binascii.Error, pa.ArrowException, OSError) as exc:
        raise CorruptSnapshotError(f"the inline row index is unreadable: {exc}") from None
