"""Read the documents a job names: inline, or an export by URI, in batches.

A source URI must lie under one of the allowed roots: a request must never make the service
read an arbitrary file (``file:///etc/passwd``) or another bucket. Exports in S3 are first
copied to the spool directory, so every format is then read from a local file in batches.

What an export *declares* is checked before any of its data is read, so a small file cannot
make the service allocate what it claims (a decompression bomb): the dimension (at most the
model's), the row count, a Parquet column chunk that expands more than ``BOMB_RATIO`` times
past ``BOMB_MIN_BYTES``, an ``.npy`` header that promises more bytes than the file holds, and
the size of an AkiDB JSON export (parsed whole). Parquet page checksums, where an export has
them, are verified.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handlers.akidb.json_codec import documents_to_batch, parse_documents
from handlers.errors import (
    BucketMissingError,
    EnvironmentFaultError,
    InvalidDocumentsError,
    ObjectMissingError,
    SourceError,
    SourceNotAllowedError,
    SourceUnavailableError,
    StoreUnavailableError,
)
from handlers.executor import run_blocking
from handlers.job import InlineSource, SnapshotJob, UriSource
from handlers.model import MAX_DIMENSION, DocumentBatch, bytes_per_row_estimate
from handlers.stores import S3Options, open_store
from handlers.uris import Location, parse_location

MIB = 1024 * 1024
READ_BATCH_BYTES = 16 * MIB
ARROW_FLOAT_NAMES = {"halffloat": "float16", "float": "float32", "double": "float64"}
READ_BUFFER_BYTES = 4 * MIB
# Bounds on what one request may make the service read (checked before reading any data).
MAX_EXPORT_ROWS = 1_000_000_000
BOMB_MIN_BYTES = 64 * MIB
BOMB_RATIO = 100
MAX_JSON_EXPORT_BYTES = 512 * MIB
# What reading an export's content may raise (ValueError covers UnicodeError; TypeError: a
# struct metadata column holding values JSON cannot hold; RecursionError: nested too deeply).
READ_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, RecursionError)


@dataclass
class OpenedSource:
    """A source ready to be read batch by batch (lazily, in the encoder's thread)."""

    batches: Iterator[DocumentBatch]
    description: str
    cleanup_paths: list[Path] = field(default_factory=list)
    expected_rows: int | None = None
    # The vectors' type in the export ("float64", "int32", …), when it is not float32: the
    # snapshot stores float32, so such an export is converted (and says so) or refused.
    source_dtype: str | None = None
    nbytes: int = 0
    """What encoding it will hold: the export's size, or the decoded inline documents."""

    def close(self) -> None:
        for path in self.cleanup_paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class SourceReader:
    """Stage 'source': check the URI, fetch the export if remote, open it."""

    def __init__(
        self, allowed_roots: Sequence[str], *, s3: S3Options | None = None, spool_dir: Path
    ) -> None:
        self._roots = [normalise_root(root) for root in allowed_roots]
        self._s3 = s3 or S3Options()
        self._spool = spool_dir

    async def __call__(self, job: SnapshotJob) -> OpenedSource:
        started = datetime.now(UTC)
        if isinstance(job.source, InlineSource):
            if job.source.batch is None and not job.source.documents and job.deletes is not None:
                return OpenedSource(iter([]), "deletes only", expected_rows=0)
            batch = job.source.batch
            if batch is None:
                batch = await run_blocking(DocumentBatch.from_documents, job.source.documents)
            return OpenedSource(
                iter([batch]),
                "inline documents",
                expected_rows=batch.num_rows,
                nbytes=batch.nbytes,
            )
        source: UriSource = job.source
        location = self.check_allowed(source.uri)
        if location.scheme == "s3":
            path = await self._download(location)
            opened = open_local(path, source.format, seed=source.uri, default_time=started)
            opened.cleanup_paths.append(path)
            return opened
        return open_local(Path(location.path), source.format, seed=source.uri, default_time=started)

    def check_allowed(self, uri: str) -> Location:
        location = parse_location(uri)
        if not any(location.is_under(root) for root in self._roots):
            raise SourceNotAllowedError(
                f"source {uri!r} is outside the allowed roots "
                f"({', '.join(root.display for root in self._roots)})"
            )
        return location

    async def _download(self, location: Location) -> Path:
        store = open_store(f"s3://{location.bucket}", self._s3)
        target = self._spool / f"export-{os.getpid()}-{id(location)}.tmp"
        try:
            handle = await run_blocking(target.open, "wb")
            try:
                async for chunk in store.iter_chunks(location.key):
                    await run_blocking(handle.write, chunk)
            finally:
                await run_blocking(handle.close)
        except ObjectMissingError:
            target.unlink(missing_ok=True)
            raise SourceError(f"source {location.display} does not exist") from None
        except BucketMissingError:
            target.unlink(missing_ok=True)
            raise SourceError(f"source {location.display}: no such bucket") from None
        except (StoreUnavailableError, EnvironmentFaultError) as exc:
            # The request chose this export: its store failing is retried for this request
            # (then dead-lettered as retryable), it does not pause the whole daemon.
            target.unlink(missing_ok=True)
            raise SourceUnavailableError(f"source store unreachable: {exc.message}") from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        finally:
            await store.close()
        return target


# -- locations and the allow-list -----------------------------------------------------------


def normalise_root(root: str) -> Location:
    location = parse_location(root)
    return Location(location.scheme, location.path.rstrip("/") or "/", location.bucket)


# -- local readers --------------------------------------------------------------------------


def open_local(path: Path, fmt: str, *, seed: str, default_time: datetime) -> OpenedSource:
    """Open an export, checking what it declares now; its batches are read lazily."""
    if not path.is_file():
        raise SourceError(f"source file {path} does not exist")
    openers = {
        "parquet": _parquet,
        "arrow": _arrow,
        "npy": _npy,
        "akidb-json": _json,
        "json": _json,
    }
    try:
        batches, expected_rows = openers[fmt](path, seed, default_time)
    except READ_ERRORS as exc:
        raise SourceError(f"cannot read {fmt} export {path.name}: {_reason(exc)}") from None
    dtype = _vector_dtype(path, fmt)
    return OpenedSource(
        _guarded(batches, fmt, path.name),
        f"{fmt} export {path.name}",
        expected_rows=expected_rows,
        nbytes=path.stat().st_size,
        source_dtype=None if dtype == "float32" else dtype,
    )


def _vector_dtype(path: Path, fmt: str) -> str | None:
    """The numeric type the export's vectors are stored in (None: JSON text, or unknown)."""
    try:
        if fmt == "npy":
            return _npy_header(path)[1].name
        if fmt == "parquet":
            with pq.ParquetFile(path, memory_map=True) as export:
                kind = export.schema_arrow.field("vector").type
        elif fmt == "arrow":
            with pa.memory_map(str(path)) as source:
                try:
                    kind = pa.ipc.open_file(source).schema.field("vector").type
                except pa.ArrowInvalid:
                    source.seek(0)
                    kind = pa.ipc.open_stream(source).schema.field("vector").type
        else:
            return None
        # Arrow's names, in NumPy's words (not to_pandas_dtype(): it imports pandas).
        name = str(kind.value_type)
        return ARROW_FLOAT_NAMES.get(name, name)
    except (pa.ArrowException, OSError, ValueError, KeyError, AttributeError, TypeError):
        return None  # the reader itself reports an unreadable export


Opened = tuple[Iterator[DocumentBatch], int | None]
"""An export's batches (read lazily) and the rows its header declares, when it does (to
size parts for parallel encoding)."""


def _guarded(batches: Iterator[DocumentBatch], fmt: str, name: str) -> Iterator[DocumentBatch]:
    """Turn read errors mid-way (truncated, corrupt) into a typed source error."""
    try:
        yield from batches
    except READ_ERRORS as exc:
        raise SourceError(f"cannot read {fmt} export {name}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _rows_per_batch(dimension: int) -> int:
    return max(1, READ_BATCH_BYTES // bytes_per_row_estimate(dimension))


def _parquet(path: Path, seed: str, default_time: datetime) -> Opened:
    # Pages that carry a CRC are checked: a corrupt export fails, not decodes to garbage.
    # pre_buffer would read whole row groups into memory up front, and without buffer_size
    # each column chunk is read whole: a single-row-group export of 600 MB would be held at
    # once. With both, column chunks stream through a small buffer, page by page.
    export = pq.ParquetFile(
        path, page_checksum_verification=True, pre_buffer=False, buffer_size=READ_BUFFER_BYTES
    )
    dimension = _declared_dimension(export.schema_arrow)
    _check_parquet_bounds(export.metadata, path.name)
    return _parquet_batches(export, dimension, default_time), int(export.metadata.num_rows)


def _parquet_batches(
    export: pq.ParquetFile, dimension: int, default_time: datetime
) -> Iterator[DocumentBatch]:
    for batch in export.iter_batches(batch_size=_rows_per_batch(dimension)):
        yield DocumentBatch.from_arrow(batch, default_inserted_at=default_time, unique_ids=False)


def _check_parquet_bounds(metadata: pq.FileMetaData, name: str) -> None:
    """Refuse what the footer declares before a page is read: too many rows, row groups that
    do not add up to the file's rows, or a column chunk that expands like a bomb."""
    rows = int(metadata.num_rows)
    _check_rows(rows, name)
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    if sum(int(group.num_rows) for group in groups) != rows:
        raise SourceError(f"parquet export {name}: its row groups do not add up to {rows} rows")
    for group in groups:
        for index in range(group.num_columns):
            chunk = group.column(index)
            expanded = int(chunk.total_uncompressed_size)
            stored = max(1, int(chunk.total_compressed_size))
            if expanded > BOMB_MIN_BYTES and expanded > BOMB_RATIO * stored:
                raise SourceError(
                    f"parquet export {name}: column {chunk.path_in_schema} expands from "
                    f"{stored} to {expanded} bytes (over {BOMB_RATIO}x): refused as a "
                    "decompression bomb"
                )


def _check_rows(rows: int, name: str) -> None:
    if rows > MAX_EXPORT_ROWS:
        raise SourceError(
            f"export {name} declares {rows} rows, more than the limit of {MAX_EXPORT_ROWS}"
        )


def _check_dimension(dimension: int) -> None:
    if not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidDocumentsError(f"dimension {dimension} is outside 1..{MAX_DIMENSION}")


def _arrow(path: Path, seed: str, default_time: datetime) -> Opened:
    source = pa.memory_map(str(path))
    try:
        reader: pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader
        reader = pa.ipc.open_file(source)
        batches: Iterator[pa.RecordBatch] = (
            reader.get_batch(i) for i in range(reader.num_record_batches)
        )
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_stream(source)
        batches = iter(reader)
    _declared_dimension(reader.schema)
    return _arrow_batches(batches, default_time), None


def _arrow_batches(
    batches: Iterator[pa.RecordBatch], default_time: datetime
) -> Iterator[DocumentBatch]:
    for batch in batches:
        yield DocumentBatch.from_arrow(batch, default_inserted_at=default_time, unique_ids=False)


def _npy(path: Path, seed: str, default_time: datetime) -> Opened:
    shape, dtype, offset = _npy_header(path)
    if len(shape) != 2 or dtype.kind not in "fiu":
        raise SourceError(f"npy export must be a 2-D numeric array, got {dtype}{shape}")
    _check_rows(shape[0], path.name)
    _check_dimension(shape[1])
    declared = shape[0] * shape[1] * dtype.itemsize
    held = path.stat().st_size - offset
    if declared != held:
        raise SourceError(
            f"npy export {path.name} declares {dtype}{shape} ({declared} bytes) but holds "
            f"{held} bytes of data"
        )
    matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    return _npy_batches(matrix, seed, default_time), int(shape[0])


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, data offset) from the header alone."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise SourceError(f"npy export {path.name}: unsupported format version {version}")
        return tuple(int(n) for n in shape), dtype, handle.tell()


def _npy_batches(
    matrix: np.ndarray[Any, Any], seed: str, default_time: datetime
) -> Iterator[DocumentBatch]:
    step = _rows_per_batch(int(matrix.shape[1]))
    for start in range(0, max(1, matrix.shape[0]), step):
        chunk = np.asarray(matrix[start : start + step])
        yield DocumentBatch.from_arrays(
            chunk, id_seed=seed, first_position=start, inserted_at=default_time
        )


def _json(path: Path, seed: str, default_time: datetime) -> Opened:
    size = path.stat().st_size
    if size > MAX_JSON_EXPORT_BYTES:
        raise SourceError(
            f"json export {path.name} is {size} bytes, more than the {MAX_JSON_EXPORT_BYTES} "
            "an AkiDB JSON export may have (it is parsed whole): export it as Parquet"
        )
    return _json_batches(path), None


def _json_batches(path: Path) -> Iterator[DocumentBatch]:
    yield documents_to_batch(parse_documents(path.read_bytes()))


def _declared_dimension(schema: pa.Schema) -> int:
    """The vector dimension the schema declares (checked), or 1024 for variable lists."""
    if "vector" not in schema.names:
        raise SourceError("export has no 'vector' column")
    kind = schema.field("vector").type
    if not pa.types.is_fixed_size_list(kind):
        return 1024
    _check_dimension(int(kind.list_size))
    return int(kind.list_size)
