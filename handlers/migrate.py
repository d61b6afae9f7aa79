"""Migrate AkiDB 2.0 snapshots (docs/akidb-2.0.md) to native snapshots, verified, idempotently.

``--from`` names an AkiDB store root, a prefix inside it (``…/snapshots/``, ``…/snapshots/C/``)
or one snapshot file of either format (its data file or its sidecar). The snapshots are found
the way the catalog finds them, so what ``snapshots list`` shows is what migrates.

Each AkiDB snapshot becomes one native snapshot of the *same* collection id. The new one's
request id is ``migrate-akidb-{AkiDB snapshot id}``, so its snapshot id is fixed: a second run
finds it and reports "already migrated" without reading anything. AkiDB's snapshot id and
created_at are kept as the labels ``akidb_snapshot_id`` and ``akidb_created_at`` (and the
source as ``migrated_from``). Before success is reported: the file's rows and dimension are
checked against its sidecar, and the new snapshot is read back and compared with the source
column by column (ids, external ids, vector bits, metadata, inserted_at); a mismatch removes
the new snapshot again. AkiDB JSON keeps nanoseconds, native snapshots microseconds: the
outcome says so.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from handlers.akidb.notes import precision_notes
from handlers.akidb.sidecar import is_akidb_format, sidecar_key
from handlers.catalog import Catalog, UnreadableEntry
from handlers.codecs import read_part
from handlers.codecs.parquet import VECTOR_PAGE_BYTES
from handlers.create import (
    DEFAULT_PART_SIZE_BYTES,
    CreateOutcome,
    SnapshotCreator,
    existing_or_create,
)
from handlers.errors import CorruptSnapshotError, PermanentError, SourceError
from handlers.job import SnapshotJob, SourceFormat, UriSource, check_job
from handlers.layout import SNAPSHOTS_PREFIX
from handlers.metadata import SnapshotMetadata
from handlers.stores import ObjectStore, S3Options, open_store
from handlers.uris import parse_location
from handlers.verify import checked_part_file

Status = Literal["migrated", "already_migrated", "refused"]
COMPARED_COLUMNS = ("document_id", "external_id", "vector", "metadata", "inserted_at")


@dataclass(frozen=True)
class AkidbSnapshot:
    """One AkiDB snapshot found at the source (or a file there that is none)."""

    uri: str
    size: int
    metadata: SnapshotMetadata | None = None
    unreadable: str = ""


@dataclass(frozen=True)
class MigrationOutcome:
    source: str
    status: Status
    collection_id: str | None = None
    snapshot_id: str | None = None
    akidb_snapshot_id: str | None = None
    vectors: int = 0
    dimension: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def migration_request_id(akidb_snapshot_id: str) -> str:
    """The request id of a migration: the same AkiDB snapshot always gives the same one."""
    return f"migrate-akidb-{akidb_snapshot_id}"


def canonical_uri(uri: str) -> str:
    """``file:///abs/path`` (symlinks resolved) or ``s3://bucket/key``; plain paths accepted."""
    if "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    return parse_location(uri).display


def split_source(uri: str) -> tuple[str, str]:
    """(store root URI, the part of ``snapshots/…`` named, or "" for the whole root)."""
    display = canonical_uri(uri)
    marker = "/snapshots"
    at = display.rfind(marker + "/")
    if at < 0 and display.rstrip("/").endswith(marker):
        at = display.rstrip("/").rfind(marker)
    if at < 0:
        return display.rstrip("/"), ""
    return display[:at], display[at + len(marker) + 1 :]


class Migrator:
    """Migrates AkiDB snapshots into one store; call :meth:`close` when done."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        s3: S3Options | None = None,
        compression: str = "zstd",
        part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
        page_bytes: int = VECTOR_PAGE_BYTES,
    ) -> None:
        self._store = store
        self._page_bytes = page_bytes
        self._s3 = s3 or S3Options()
        self._compression = compression
        self._part_size = part_size_bytes
        self._creator = SnapshotCreator(
            store, source_roots=[], s3=s3, part_size_bytes=part_size_bytes, page_bytes=page_bytes
        )
        self._sources: dict[str, ObjectStore] = {}

    async def close(self) -> None:
        for source in self._sources.values():
            await source.close()
        self._sources.clear()

    # -- discovery ------------------------------------------------------------------------------

    async def discover(self, uri: str) -> list[AkidbSnapshot]:
        """The AkiDB snapshots (and unreadable files) a URI names, in key order."""
        root, within = split_source(uri)
        source = self._source_store(root)
        scan = await Catalog(source).scan()
        found = [
            AkidbSnapshot(_uri(root, meta.parts[0].key), meta.parts[0].size, meta)
            for meta in scan.snapshots
            if is_akidb_format(meta.format) and _selected(meta, within)
        ]
        found += [
            AkidbSnapshot(_uri(root, entry.key), 0, unreadable=entry.reason)
            for entry in scan.unreadable
            if _entry_selected(entry, within)
        ]
        if not found:
            raise SourceError(f"no AkiDB 2.0 snapshots at {canonical_uri(uri)}")
        return sorted(found, key=lambda snapshot: snapshot.uri)

    def _source_store(self, root: str) -> ObjectStore:
        if root not in self._sources:
            self._sources[root] = open_store(root, self._s3)
        return self._sources[root]

    # -- one snapshot ---------------------------------------------------------------------------

    async def __call__(self, found: AkidbSnapshot) -> MigrationOutcome:
        meta = found.metadata
        if meta is None:
            return MigrationOutcome(found.uri, "refused", reason=found.unreadable)
        try:
            job = self._job(meta, found.uri)
            made = await existing_or_create(
                self._creator, job, lambda: self._migrate(found, meta, job)
            )
        except PermanentError as exc:
            return MigrationOutcome(
                found.uri,
                "refused",
                collection_id=meta.collection_id,
                akidb_snapshot_id=meta.snapshot_id,
                bytes_before=found.size,
                reason=exc.message,
            )
        status: Status = "already_migrated" if made.duplicate else "migrated"
        return _outcome(found, meta, status, made.metadata)

    async def migrate(
        self, uri: str, on_outcome: Callable[[MigrationOutcome], None] | None = None
    ) -> list[MigrationOutcome]:
        """Every AkiDB snapshot ``uri`` names, one outcome each (in key order)."""
        outcomes = []
        for found in await self.discover(uri):
            outcome = await self(found)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return outcomes

    def _job(self, meta: SnapshotMetadata, source_uri: str) -> SnapshotJob:
        """The migration of one AkiDB snapshot: its request id names that snapshot, so a
        second run finds the first one's result."""
        job = SnapshotJob(
            collection_id=meta.collection_id,
            request_id=migration_request_id(meta.snapshot_id),
            source=UriSource(source_uri, _source_format(meta)),  # read: a checked copy
            compression=self._compression,
            labels={
                "trigger": "migrate",
                "migrated_from": source_uri,
                "akidb_snapshot_id": meta.snapshot_id,
                "akidb_created_at": meta.created_at,
                "akidb_format": meta.format,
            },
        )
        return check_job(job)  # the collection id comes from a file

    async def _migrate(
        self, found: AkidbSnapshot, meta: SnapshotMetadata, job: SnapshotJob
    ) -> CreateOutcome:
        root, _ = split_source(found.uri)
        source = self._source_store(root)
        with tempfile.TemporaryDirectory(dir=self._store.spool_dir()) as scratch:
            async with checked_part_file(source, meta.parts[0], Path(scratch)) as path:
                documents = await asyncio.to_thread(_decode_checked, path, meta)
                created = await self._create(job, UriSource(path.as_uri(), _source_format(meta)))
            try:
                await self._check_round_trip(created.metadata, documents, Path(scratch))
            except CorruptSnapshotError as exc:
                await self._creator.catalog.remove(created.metadata)
                raise CorruptSnapshotError(
                    f"verification failed, the new snapshot was removed: {exc.message}"
                ) from None
        return created

    async def _create(self, job: SnapshotJob, copy: UriSource) -> CreateOutcome:
        creator = SnapshotCreator(
            self._store,
            source_roots=[copy.uri],
            s3=self._s3,
            part_size_bytes=self._part_size,
            page_bytes=self._page_bytes,
        )
        return await creator(replace(job, source=copy))

    async def _check_round_trip(
        self, created: SnapshotMetadata, source: pa.Table, scratch: Path
    ) -> None:
        """Decode every stored part: each column must equal the source's, row for row."""
        row = 0
        for part in created.parts:
            async with checked_part_file(self._store, part, scratch) as path:
                row = await asyncio.to_thread(_compare_part, path, created, source, row)
        if row != source.num_rows:
            raise CorruptSnapshotError(f"snapshot holds {row} rows, the source {source.num_rows}")


def _source_format(meta: SnapshotMetadata) -> SourceFormat:
    return "akidb-json" if meta.format == "akidb-json" else "parquet"


def _decode_checked(path: Path, meta: SnapshotMetadata) -> pa.Table:
    """The AkiDB file's documents, once its rows and dimension match its sidecar."""
    table = pa.Table.from_batches(list(read_part(path, meta.format, meta.dimension)))
    if table.num_rows != meta.vector_count:
        raise CorruptSnapshotError(
            f"the file holds {table.num_rows} documents, its sidecar says {meta.vector_count}"
        )
    return table.combine_chunks()


def _compare_part(path: Path, created: SnapshotMetadata, source: pa.Table, first: int) -> int:
    row = first
    for record in read_part(path, created.format, created.dimension):
        expected = source.slice(row, record.num_rows)
        if expected.num_rows != record.num_rows:
            raise CorruptSnapshotError("the new snapshot holds more rows than the source")
        for name in COMPARED_COLUMNS:
            stored = record.column(name)
            wanted = expected.column(name).combine_chunks()
            if name == "vector":
                stored, wanted = (
                    stored.flatten().view(pa.uint32()),
                    wanted.flatten().view(pa.uint32()),
                )
            if not stored.equals(wanted):
                raise CorruptSnapshotError(f"{name} differs from the source near row {row}")
        row += record.num_rows
    return row


def _outcome(
    found: AkidbSnapshot, akidb: SnapshotMetadata, status: Status, native: SnapshotMetadata
) -> MigrationOutcome:
    return MigrationOutcome(
        found.uri,
        status,
        collection_id=native.collection_id,
        snapshot_id=native.snapshot_id,
        akidb_snapshot_id=akidb.snapshot_id,
        vectors=native.vector_count,
        dimension=native.dimension,
        bytes_before=found.size,
        bytes_after=native.total_bytes,
        notes=precision_notes(akidb.format),
    )


def _uri(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}"


def _selected(meta: SnapshotMetadata, within: str) -> bool:
    """Whether the part of ``snapshots/`` named (a file, or a folder) covers this snapshot."""
    sidecar = sidecar_key(meta.format, meta.collection_id, meta.snapshot_id)
    return _covers(within, meta.parts[0].key) or _covers(within, sidecar)


def _entry_selected(entry: UnreadableEntry, within: str) -> bool:
    return _covers(within, entry.key)


def _covers(within: str, key: str) -> bool:
    named = SNAPSHOTS_PREFIX + within.rstrip("/")
    return not within or key == named or key.startswith(named + "/")
