"""Restore a snapshot to a local file: .parquet, .arrow, .npy or .jsonl, by extension.

Every part's SHA-256 is checked before any of its data is decoded, and the output is written
to a temporary file beside the target and renamed at the end: a failed restore leaves the
target untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from handlers.chain import chain_of, hidden_ids, visible_rows
from handlers.codecs import read_part
from handlers.codecs.documents_json import batch_to_documents
from handlers.codecs.parquet import file_schema, parquet_part_rows, writer_options
from handlers.errors import (
    CorruptSnapshotError,
    IdsNotFoundError,
    InvalidRequestError,
    SelectionError,
)
from handlers.filemode import new_file_mode
from handlers.metadata import SnapshotMetadata
from handlers.model import ID_TYPE, DocumentBatch, snapshot_schema
from handlers.partial import output_schema, select_rows
from handlers.selected_output import SelectedOutput
from handlers.selection import Selection, id_texts
from handlers.stores import ObjectStore
from handlers.verify import checked_part_file

RESTORE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".npy": "npy", ".jsonl": "jsonl"}

COPY_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RestoreResult:
    path: Path
    rows: int
    bytes_written: int
    # A partial restore's report: bytes read from the store, ids asked for but not held.
    bytes_read: int | None = None
    ids_missing: int = 0
    ids_missing_examples: tuple[str, ...] = ()


class OutputWriter(Protocol):
    def write(self, batch: DocumentBatch) -> None: ...

    def close(self) -> None: ...


def output_format(path: Path) -> str:
    try:
        return RESTORE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise InvalidRequestError(
            f"cannot restore to {path.name}: use .parquet, .arrow, .npy or .jsonl"
        ) from None


async def restore_snapshot(
    store: ObjectStore,
    metadata: SnapshotMetadata,
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
    selection: Selection | None = None,
) -> RestoreResult:
    """Write the snapshot's documents to ``out``; ``progress`` gets rows as they land.
    With ``selection``, only the rows and columns it asks for (handlers.partial)."""
    kind = output_format(out)
    if selection is not None and kind == "npy" and "vector" not in selection.columns:
        raise SelectionError("--columns without vector cannot restore to .npy (vectors only)")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False)  # noqa: SIM115
    temp = Path(handle.name)
    handle.close()
    partial: RestoreResult | None = None
    try:
        if selection is not None:
            partial = await _restore_selection(store, metadata, selection, temp, kind)
            rows = metadata.collection_rows  # the row count is checked per part instead
        elif metadata.delta is not None:
            rows = await _restore_chain(store, metadata, temp, kind, progress)
        elif kind == "parquet" and metadata.format == "parquet" and len(metadata.parts) == 1:
            rows = await _copy_single_part(store, metadata, temp, out.parent, progress)
        else:
            rows = await _decode_parts_into(
                store, metadata, temp, kind, out.parent, progress=progress
            )
        if rows != metadata.collection_rows:
            raise CorruptSnapshotError(
                f"snapshot decodes to {rows} rows, metadata says {metadata.collection_rows}"
            )
        os.chmod(temp, new_file_mode())  # the temporary file was made 0600
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if partial is not None:
        return replace(partial, path=out, bytes_written=out.stat().st_size)
    return RestoreResult(out, rows, out.stat().st_size)


async def _restore_selection(
    store: ObjectStore, metadata: SnapshotMetadata, selection: Selection, target: Path, kind: str
) -> RestoreResult:
    """Selected rows into ``target``; with ``strict``, refuses if ids lack (the caller then
    removes ``target``: nothing is written)."""
    schema = output_schema(metadata.dimension, selection)
    output = SelectedOutput(kind, target, schema, metadata.collection_rows)
    try:
        picked = await select_rows(store, metadata, selection, target.parent, output.write)
    finally:
        await asyncio.to_thread(output.close)
    missing = pa.array([], ID_TYPE)
    if selection.ids is not None:
        found = pa.concat_arrays(picked.found) if picked.found else missing
        missing = selection.ids.filter(pc.invert(pc.is_in(selection.ids, value_set=found)))
    examples = tuple(id_texts(missing))
    if selection.strict and len(missing):
        raise IdsNotFoundError(
            f"{len(missing)} of the {len(selection.ids or [])} ids are not in snapshot "
            f"{metadata.snapshot_id}, e.g. {', '.join(examples)}"
        )
    return RestoreResult(target, output.rows, 0, picked.bytes_read, len(missing), examples)


async def _restore_chain(
    store: ObjectStore,
    metadata: SnapshotMetadata,
    target: Path,
    kind: str,
    progress: Callable[[int], None] | None,
) -> int:
    """A delta: its chain's rows streamed into one output, one part on disk at a time (the
    caller checks the row count)."""
    members = await chain_of(store, metadata)
    hidden = await hidden_ids(store, members, target.parent)
    writer = _open_writer(kind, target, replace(metadata, vector_count=metadata.collection_rows))
    rows = 0
    try:
        for member, gone in zip(members, hidden, strict=True):
            for part in member.parts:
                async with checked_part_file(store, part, target.parent) as path:
                    shown = visible_rows(path, member, gone)
                    rows += await asyncio.to_thread(_write_rows, shown, writer, progress)
        return rows
    finally:
        await asyncio.to_thread(writer.close)


def _write_rows(
    rows: Iterator[pa.RecordBatch],
    writer: OutputWriter,
    progress: Callable[[int], None] | None,
) -> int:
    written = 0
    for record in rows:
        writer.write(DocumentBatch(record))
        written += record.num_rows
        if progress is not None:
            progress(record.num_rows)
    return written


async def _copy_single_part(
    store: ObjectStore,
    metadata: SnapshotMetadata,
    target: Path,
    scratch: Path,
    progress: Callable[[int], None] | None,
) -> int:
    """A one-part Parquet snapshot already is the restored file: copy its checked bytes."""
    part = metadata.parts[0]
    async with checked_part_file(store, part, scratch) as path:
        await asyncio.to_thread(_copy_file, path, target, part.rows, progress)
    return await asyncio.to_thread(parquet_part_rows, target, metadata.dimension)


def _copy_file(
    source: Path, target: Path, rows: int, progress: Callable[[int], None] | None
) -> None:
    """A byte copy that reports its share of ``rows`` as it goes (a bar that moves on a
    one-part snapshot, rather than jumping from 0 to 100% at the end)."""
    size = max(1, source.stat().st_size)
    copied = reported = 0
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(COPY_CHUNK_BYTES):
            dst.write(chunk)
            copied += len(chunk)
            done = rows * copied // size
            if progress is not None and done > reported:
                progress(done - reported)
                reported = done


async def _decode_parts_into(
    store: ObjectStore,
    metadata: SnapshotMetadata,
    target: Path,
    kind: str,
    scratch: Path,
    *,
    progress: Callable[[int], None] | None,
) -> int:
    writer = _open_writer(kind, target, metadata)
    try:
        return await _copy_parts(store, metadata, writer, scratch, progress)
    finally:
        await asyncio.to_thread(writer.close)


async def _copy_parts(
    store: ObjectStore,
    metadata: SnapshotMetadata,
    writer: OutputWriter,
    scratch: Path,
    progress: Callable[[int], None] | None,
) -> int:
    rows = 0
    for part in metadata.parts:
        async with checked_part_file(store, part, scratch) as path:
            part_rows = await asyncio.to_thread(_decode_into, path, metadata, writer, progress)
        if part_rows != part.rows:
            raise CorruptSnapshotError(
                f"part {part.key} decodes to {part_rows} rows, metadata says {part.rows}"
            )
        rows += part_rows
    return rows


def _decode_into(
    path: Path,
    metadata: SnapshotMetadata,
    writer: OutputWriter,
    progress: Callable[[int], None] | None = None,
) -> int:
    rows = 0
    for record in read_part(path, metadata.format, metadata.dimension):
        batch = DocumentBatch(record)
        writer.write(batch)
        rows += batch.num_rows
        if progress is not None:
            progress(batch.num_rows)
    return rows


def _open_writer(kind: str, path: Path, metadata: SnapshotMetadata) -> OutputWriter:
    if kind == "parquet":
        return _ParquetOutput(path, metadata.dimension)
    if kind == "arrow":
        return _ArrowOutput(path, metadata.dimension)
    if kind == "npy":
        return _NpyOutput(path, metadata.vector_count, metadata.dimension)
    return _JsonlOutput(path)


class _ParquetOutput:
    def __init__(self, path: Path, dimension: int) -> None:
        self._writer = pq.ParquetWriter(path, file_schema(dimension), **writer_options("zstd"))

    def write(self, batch: DocumentBatch) -> None:
        self._writer.write_batch(batch.record_batch)

    def close(self) -> None:
        self._writer.close()


class _ArrowOutput:
    def __init__(self, path: Path, dimension: int) -> None:
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, snapshot_schema(dimension))

    def write(self, batch: DocumentBatch) -> None:
        self._writer.write_batch(batch.record_batch)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


class _NpyOutput:
    """Streams rows into a .npy whose header already states the final shape."""

    def __init__(self, path: Path, rows: int, dimension: int) -> None:
        self._handle: BinaryIO = path.open("wb")
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dimension)}
        np.lib.format.write_array_header_1_0(self._handle, header)

    def write(self, batch: DocumentBatch) -> None:
        self._handle.write(np.ascontiguousarray(batch.vectors, dtype="<f4").data)

    def close(self) -> None:
        self._handle.close()


class _JsonlOutput:
    def __init__(self, path: Path) -> None:
        self._handle = path.open("w", encoding="utf-8")

    def write(self, batch: DocumentBatch) -> None:
        for document in batch_to_documents(batch):
            self._handle.write(json.dumps(document, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._handle.close()


__all__ = ["RestoreResult", "output_format", "restore_snapshot"]
