"""Read the documents a job names: inline, or an export by URI, in batches.

A source URI must lie under one of the allowed roots: a request must never make the service
read an arbitrary file (``file:///etc/passwd``) or another bucket. Exports in S3 are first
copied to the spool directory, so every format is then read from a local file in batches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handlers.codecs.json_legacy import parse_legacy
from handlers.errors import (
    ObjectMissingError,
    SourceError,
    SourceNotAllowedError,
    SourceUnavailableError,
    StoreUnavailableError,
)
from handlers.job import InlineSource, SnapshotJob, UriSource
from handlers.model import DocumentBatch, bytes_per_row_estimate
from handlers.stores import S3Options, open_store

READ_BATCH_BYTES = 16 * 1024 * 1024


@dataclass
class OpenedSource:
    """A source ready to be read batch by batch (lazily, in the encoder's thread)."""

    batches: Iterator[DocumentBatch]
    description: str
    cleanup_paths: list[Path] = field(default_factory=list)
    expected_rows: int | None = None

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
            batch = DocumentBatch.from_documents(job.source.documents)
            return OpenedSource(iter([batch]), "inline documents", expected_rows=batch.num_rows)
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
            with target.open("wb") as handle:
                async for chunk in store.iter_chunks(location.key):
                    handle.write(chunk)
        except ObjectMissingError:
            target.unlink(missing_ok=True)
            raise SourceError(f"source {location.display} does not exist") from None
        except StoreUnavailableError as exc:
            target.unlink(missing_ok=True)
            raise SourceUnavailableError(f"source store unreachable: {exc.message}") from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        finally:
            await store.close()
        return target


# -- locations and the allow-list -----------------------------------------------------------


@dataclass(frozen=True)
class Location:
    scheme: str
    path: str
    bucket: str = ""

    @property
    def key(self) -> str:
        return self.path.lstrip("/")

    @property
    def display(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.path}"

    def is_under(self, root: Location) -> bool:
        if self.scheme != root.scheme or self.bucket != root.bucket:
            return False
        base = root.path.rstrip("/")
        return self.path == base or self.path.startswith(base + "/") or base == ""


def parse_location(uri: str) -> Location:
    """A canonical location; local paths are resolved (symlinks, '..') before any check."""
    if not isinstance(uri, str) or not uri:
        raise SourceError("source URI is empty")
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost", "."):
            raise SourceError(f"source {uri!r}: file URIs name no host")
        raw = unquote(parts.path) if parts.netloc != "." else "./" + unquote(parts.path)
        return Location("file", os.path.realpath(raw))
    if parts.scheme == "s3":
        key = unquote(parts.path).lstrip("/")
        if not parts.netloc or any(seg in {".", ".."} for seg in key.split("/")):
            raise SourceError(f"source {uri!r} is not a plain s3://bucket/key URI")
        return Location("s3", "/" + key, bucket=parts.netloc)
    raise SourceError(f"source {uri!r} has unsupported scheme {parts.scheme!r} (file or s3)")


def normalise_root(root: str) -> Location:
    if "://" not in root:
        root = Path(root).resolve().as_uri()
    if root.startswith("file://./"):
        root = (Path.cwd() / root[len("file://./") :]).resolve().as_uri()
    location = parse_location(root)
    return Location(location.scheme, location.path.rstrip("/") or "/", location.bucket)


# -- local readers --------------------------------------------------------------------------


def open_local(path: Path, fmt: str, *, seed: str, default_time: datetime) -> OpenedSource:
    if not path.is_file():
        raise SourceError(f"source file {path} does not exist")
    openers = {"parquet": _parquet, "arrow": _arrow, "npy": _npy, "json": _json}
    try:
        batches = openers[fmt](path, seed, default_time)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SourceError(f"cannot read {fmt} export {path.name}: {exc}") from None
    return OpenedSource(
        _guarded(batches, fmt, path.name),
        f"{fmt} export {path.name}",
        expected_rows=_expected_rows(path, fmt),
    )


def _expected_rows(path: Path, fmt: str) -> int | None:
    """What the file's header says it holds, to size parts for parallel encoding."""
    try:
        if fmt == "parquet":
            return int(pq.read_metadata(path).num_rows)
        if fmt == "npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (pa.ArrowException, OSError, ValueError, IndexError):
        return None  # the reader itself reports the problem with its own message
    return None


def _guarded(batches: Iterator[DocumentBatch], fmt: str, name: str) -> Iterator[DocumentBatch]:
    """Turn read errors mid-way (truncated, corrupt) into a typed source error."""
    try:
        yield from batches
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SourceError(f"cannot read {fmt} export {name}: {exc}") from None


def _rows_per_batch(dimension: int) -> int:
    return max(1, READ_BATCH_BYTES // bytes_per_row_estimate(dimension))


def _parquet(path: Path, seed: str, default_time: datetime) -> Iterator[DocumentBatch]:
    export = pq.ParquetFile(path)
    dimension = _declared_dimension(export.schema_arrow)
    for batch in export.iter_batches(batch_size=_rows_per_batch(dimension)):
        yield DocumentBatch.from_arrow(batch, default_inserted_at=default_time, unique_ids=False)


def _arrow(path: Path, seed: str, default_time: datetime) -> Iterator[DocumentBatch]:
    source = pa.memory_map(str(path))
    try:
        reader: pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader
        reader = pa.ipc.open_file(source)
        batches: Iterator[pa.RecordBatch] = (
            reader.get_batch(i) for i in range(reader.num_record_batches)
        )
    except pa.ArrowInvalid:
        source.seek(0)
        batches = iter(pa.ipc.open_stream(source))
    for batch in batches:
        yield DocumentBatch.from_arrow(batch, default_inserted_at=default_time, unique_ids=False)


def _npy(path: Path, seed: str, default_time: datetime) -> Iterator[DocumentBatch]:
    matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    if matrix.ndim != 2 or matrix.dtype.kind not in "fiu":
        raise SourceError(
            f"npy export must be a 2-D numeric array, got {matrix.dtype}{matrix.shape}"
        )
    step = _rows_per_batch(int(matrix.shape[1]))
    for start in range(0, max(1, matrix.shape[0]), step):
        chunk = np.asarray(matrix[start : start + step])
        yield DocumentBatch.from_arrays(
            chunk, id_seed=seed, first_position=start, inserted_at=default_time
        )


def _json(path: Path, seed: str, default_time: datetime) -> Iterator[DocumentBatch]:
    _, documents = parse_legacy(path.read_bytes())
    yield DocumentBatch.from_documents(documents)


def _declared_dimension(schema: pa.Schema) -> int:
    if "vector" not in schema.names:
        raise SourceError("export has no 'vector' column")
    kind = schema.field("vector").type
    return int(kind.list_size) if pa.types.is_fixed_size_list(kind) else 1024
