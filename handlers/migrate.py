"""Migrate legacy JSON snapshot files to Parquet snapshots, verified, idempotently.

``--from`` names one legacy file (``file:///…/x.json``, ``s3://bucket/…/x.json``) or a folder /
prefix full of them (every ``*.json`` below it, metadata files excepted). Each file becomes one
snapshot through the same :class:`~handlers.create.SnapshotCreator` as every other snapshot.

Idempotent: a file's request id is derived from its canonical URI, so its snapshot id is too;
a file whose snapshot already exists is reported "already migrated" without being read. After
a create, every part is read back and decoded, and its ids and vector bits compared with the
source's; a mismatch removes the new snapshot again. A file that is not a readable legacy
snapshot is refused with the reason, and the others go on.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from handlers.codecs import read_part
from handlers.codecs.json_legacy import parse_legacy
from handlers.create import DEFAULT_PART_SIZE_BYTES, SnapshotCreator
from handlers.errors import (
    CorruptSnapshotError,
    InvalidDocumentsError,
    ObjectMissingError,
    PermanentError,
    SourceError,
)
from handlers.job import COLLECTION_ID, InlineSource, SnapshotJob, snapshot_id_for
from handlers.layout import METADATA_SUFFIX
from handlers.metadata import SnapshotMetadata
from handlers.model import DocumentBatch, vectors_bit_equal
from handlers.stores import ObjectStore, S3Options, open_store
from handlers.uris import Location, parse_location
from handlers.verify import checked_part_file

MIGRATION_NAMESPACE = uuid.UUID("0b7f8f0e-3a51-5c55-9a9e-6d2f0c1e5a42")
"""Fixed forever: the snapshot ids of migrated files depend on it."""

Status = Literal["migrated", "already_migrated", "refused"]


@dataclass(frozen=True)
class LegacyFile:
    """One legacy JSON snapshot to migrate."""

    uri: str
    size: int


@dataclass(frozen=True)
class MigrationOutcome:
    source: str
    status: Status
    collection_id: str | None = None
    snapshot_id: str | None = None
    vectors: int = 0
    dimension: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def migration_request_id(uri: str) -> str:
    """The request id of a file's migration: the same URI always gives the same snapshot."""
    return f"migrate-{uuid.uuid5(MIGRATION_NAMESPACE, uri)}"


def canonical_uri(uri: str) -> str:
    """``file:///abs/path`` (symlinks resolved) or ``s3://bucket/key``; plain paths accepted."""
    if "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    return parse_location(uri).display


def default_collection(uri: str) -> str | None:
    """A file's collection when none is given: its name without ``.json``."""
    stem = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
    return stem if COLLECTION_ID.fullmatch(stem) else None


class Migrator:
    """Migrates legacy files into one store; call :meth:`close` when done."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        s3: S3Options | None = None,
        collection_id: str | None = None,
        compression: str = "zstd",
        part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
    ) -> None:
        self._store = store
        self._s3 = s3 or S3Options()
        self._collection_id = collection_id
        self._compression = compression
        self._creator = SnapshotCreator(
            store, source_roots=[], s3=s3, part_size_bytes=part_size_bytes
        )
        self._sources: dict[str, ObjectStore] = {}

    async def close(self) -> None:
        for source in self._sources.values():
            await source.close()
        self._sources.clear()

    # -- discovery ------------------------------------------------------------------------------

    async def discover(self, uri: str) -> list[LegacyFile]:
        """The legacy files a URI names: the file itself, or every ``*.json`` below it."""
        location = parse_location(canonical_uri(uri))
        found = (
            await self._discover_s3(location)
            if location.scheme == "s3"
            else await asyncio.to_thread(_discover_local, Path(location.path))
        )
        if not found:
            raise SourceError(f"no legacy JSON snapshots (*.json) at {location.display}")
        return found

    async def _discover_s3(self, location: Location) -> list[LegacyFile]:
        bucket = self._source_store(location.bucket)
        if location.key.endswith(".json"):
            info = await bucket.head(location.key)
            if info is None:
                raise SourceError(f"{location.display} does not exist")
            return [LegacyFile(location.display, info.size)]
        prefix = location.key.rstrip("/") + "/" if location.key.strip("/") else ""
        found = [
            LegacyFile(f"s3://{location.bucket}/{info.key}", info.size)
            async for info in bucket.list(prefix)
            if _is_legacy_name(info.key)
        ]
        return sorted(found, key=lambda legacy: legacy.uri)

    def _source_store(self, bucket: str) -> ObjectStore:
        if bucket not in self._sources:
            self._sources[bucket] = open_store(f"s3://{bucket}", self._s3)
        return self._sources[bucket]

    # -- one file -------------------------------------------------------------------------------

    async def __call__(self, legacy: LegacyFile) -> MigrationOutcome:
        collection = self._collection_id or default_collection(legacy.uri)
        if collection is None:
            return MigrationOutcome(
                legacy.uri,
                "refused",
                bytes_before=legacy.size,
                reason="cannot derive a collection id from the file name: pass --collection",
            )
        job_id = migration_request_id(legacy.uri)
        existing = await self._creator.catalog.find(collection, snapshot_id_for(collection, job_id))
        if existing is not None:
            return _outcome(legacy, "already_migrated", existing)
        try:
            raw = await self._read(legacy)
            batch, documents = _parse(raw)
            job = SnapshotJob(
                collection_id=collection,
                request_id=job_id,
                source=InlineSource(documents),
                format="parquet",
                compression=self._compression,
                labels={"trigger": "migrate", "migrated_from": legacy.uri},
            )
            metadata = (await self._creator(job)).metadata
        except PermanentError as exc:
            return MigrationOutcome(
                legacy.uri,
                "refused",
                collection_id=collection,
                bytes_before=legacy.size,
                reason=exc.message,
            )
        try:
            await self._check_round_trip(metadata, batch)
        except CorruptSnapshotError as exc:
            await self._creator.catalog.delete(metadata.snapshot_id, metadata.collection_id)
            return MigrationOutcome(
                legacy.uri,
                "refused",
                collection_id=collection,
                bytes_before=legacy.size,
                reason=f"verification failed, the new snapshot was removed: {exc.message}",
            )
        return _outcome(legacy, "migrated", metadata, bytes_before=len(raw))

    async def migrate(
        self, uri: str, on_outcome: Callable[[MigrationOutcome], None] | None = None
    ) -> list[MigrationOutcome]:
        """Every legacy file under ``uri``, one outcome each (in name order)."""
        outcomes = []
        for legacy in await self.discover(uri):
            outcome = await self(legacy)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return outcomes

    async def _read(self, legacy: LegacyFile) -> bytes:
        location = parse_location(legacy.uri)
        try:
            if location.scheme == "s3":
                return await self._source_store(location.bucket).get_bytes(location.key)
            return await asyncio.to_thread(Path(location.path).read_bytes)
        except (ObjectMissingError, FileNotFoundError):
            raise SourceError(f"{legacy.uri} disappeared before it was read") from None
        except OSError as exc:
            raise SourceError(f"cannot read {legacy.uri}: {exc.strerror or exc}") from None

    async def _check_round_trip(self, metadata: SnapshotMetadata, source: DocumentBatch) -> None:
        """Decode every stored part; ids and vector bits must equal the source's, in order."""
        with tempfile.TemporaryDirectory(dir=self._store.spool_dir()) as scratch:
            row = 0
            for part in metadata.parts:
                async with checked_part_file(self._store, part, Path(scratch)) as path:
                    row = await asyncio.to_thread(_compare_part, path, metadata, source, row)
        if row != source.num_rows:
            raise CorruptSnapshotError(f"snapshot holds {row} rows, the source {source.num_rows}")


def _parse(raw: bytes) -> tuple[DocumentBatch, list[Any]]:
    declared, documents = parse_legacy(raw)
    batch = DocumentBatch.from_documents(documents)
    if declared is not None and declared != batch.dimension:
        raise InvalidDocumentsError(
            f"legacy file declares dimension {declared}, its vectors have {batch.dimension}"
        )
    return batch, list(documents)


def _compare_part(
    path: Path, metadata: SnapshotMetadata, source: DocumentBatch, first_row: int
) -> int:
    row = first_row
    for record in read_part(path, metadata.format, metadata.dimension):
        stored = DocumentBatch(record)
        expected = source.slice(row, stored.num_rows) if row < source.num_rows else None
        if expected is None or expected.num_rows != stored.num_rows:
            raise CorruptSnapshotError("snapshot holds more rows than the source")
        if not vectors_bit_equal(np.ascontiguousarray(stored.vectors), expected.vectors):
            raise CorruptSnapshotError(f"vectors differ from the source near row {row}")
        if not record.column("document_id").equals(expected.record_batch.column("document_id")):
            raise CorruptSnapshotError(f"document ids differ from the source near row {row}")
        row += stored.num_rows
    return row


def _outcome(
    legacy: LegacyFile, status: Status, metadata: SnapshotMetadata, bytes_before: int = 0
) -> MigrationOutcome:
    return MigrationOutcome(
        legacy.uri,
        status,
        collection_id=metadata.collection_id,
        snapshot_id=metadata.snapshot_id,
        vectors=metadata.vector_count,
        dimension=metadata.dimension,
        bytes_before=bytes_before or legacy.size,
        bytes_after=metadata.total_bytes,
    )


def _is_legacy_name(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith(".json") and not name.endswith(METADATA_SUFFIX)


def _discover_local(path: Path) -> list[LegacyFile]:
    if path.is_file():
        return [LegacyFile(_file_uri(path), path.stat().st_size)]
    if not path.is_dir():
        raise SourceError(f"{path.as_uri()} does not exist")
    found = [
        LegacyFile(_file_uri(child), child.stat().st_size)
        for child in path.rglob("*.json")
        if child.is_file()
        and _is_legacy_name(child.name)
        and not any(part.startswith(".") for part in child.relative_to(path).parts)
    ]
    return sorted(found, key=lambda legacy: legacy.uri)


def _file_uri(path: Path) -> str:
    return parse_location(path.resolve().as_uri()).display
