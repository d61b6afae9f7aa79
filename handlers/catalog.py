"""The committed snapshots of a store: commit, find, list, delete. Reads metadata files only.

A store root may hold native snapshots, AkiDB 2.0 snapshots (both of its formats, see
docs/akidb-2.0.md), or both. Every file under ``snapshots/`` that is neither part of a snapshot
nor a readable commit marker is reported as unreadable, with its key and the reason, and never
keeps the others from being listed, shown, verified, restored, deleted or pruned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from handlers.akidb.sidecar import (
    INTEGRITY_SUFFIX,
    JSON_SIDECAR_SUFFIX,
    IntegrityRecord,
    Sidecar,
    data_key,
    integrity_key,
    is_akidb_format,
    parse_integrity,
    parse_sidecar,
    sidecar_key,
    to_metadata,
)
from handlers.errors import CorruptSnapshotError, ObjectMissingError, SnapshotNotFoundError
from handlers.job import check_collection_id
from handlers.layout import (
    METADATA_SUFFIX,
    SNAPSHOTS_PREFIX,
    is_metadata_key,
    metadata_key,
    snapshot_id_of_metadata_key,
    snapshot_prefix,
)
from handlers.metadata import SnapshotMetadata
from handlers.stores import ObjectStore

LIST_CONCURRENCY = 16


@dataclass(frozen=True)
class UnreadableEntry:
    """A file under ``snapshots/`` that is no (readable) snapshot, and why."""

    key: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "format": "unreadable"}


@dataclass(frozen=True)
class CatalogScan:
    snapshots: list[SnapshotMetadata]
    unreadable: list[UnreadableEntry] = field(default_factory=list)


class Catalog:
    """A snapshot exists exactly when its metadata file (or AkiDB sidecar) does."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @property
    def store(self) -> ObjectStore:
        return self._store

    async def commit(self, metadata: SnapshotMetadata) -> bool:
        """Write the metadata file: the last write of a create, which makes it visible.

        False when the snapshot was already committed (by an earlier run of the same request):
        a committed metadata file is never overwritten.
        """
        key = metadata_key(metadata.collection_id, metadata.snapshot_id)
        return await self._store.put_if_absent(key, metadata.to_json())

    async def commit_akidb(self, sidecar: Sidecar, integrity: IntegrityRecord) -> bool:
        """akisnap's SHA-256 record first, then AkiDB's sidecar: the sidecar commits, and is
        never overwritten (False when it was already there)."""
        fmt = sidecar.snapshot_format
        ids = (sidecar.collection_id, sidecar.snapshot_id)
        await self._store.put_bytes(integrity_key(fmt, *ids), integrity.to_json())
        return await self._store.put_if_absent(sidecar_key(fmt, *ids), sidecar.to_json())

    async def find(
        self, collection_id: str, snapshot_id: str, fmt: str | None = None
    ) -> SnapshotMetadata | None:
        """The snapshot, if committed; ``fmt`` (when known) spares looking where it is not."""
        keys = [metadata_key(collection_id, snapshot_id), _json_sidecar(snapshot_id)]
        if fmt is not None:
            keys = [keys[1] if fmt == "akidb-json" else keys[0]]
        for key in keys:
            try:
                raw = await self._store.get_bytes(key)
            except ObjectMissingError:
                continue
            found = await self._load(key, raw, None)
            if found.collection_id == collection_id:
                return found
        return None

    async def get(self, snapshot_id: str, collection_id: str | None = None) -> SnapshotMetadata:
        """The snapshot with that id (searched across collections unless one is given)."""
        if collection_id is not None:
            found = await self.find(collection_id, snapshot_id)
            if found is not None:
                return found
            raise SnapshotNotFoundError(f"no snapshot {snapshot_id} in collection {collection_id}")
        async for info in self._store.list(SNAPSHOTS_PREFIX):
            if _marker_snapshot_id(info.key) == snapshot_id:
                return await self._load(info.key, await self._store.get_bytes(info.key), None)
        raise SnapshotNotFoundError(f"no snapshot with id {snapshot_id!r}")

    async def list(self, collection_id: str | None = None) -> list[SnapshotMetadata]:
        """Committed snapshots, oldest first (unreadable files left out: see scan)."""
        return (await self.scan(collection_id)).snapshots

    async def scan(self, collection_id: str | None = None) -> CatalogScan:
        """Every snapshot, oldest first, and every file under snapshots/ that is none."""
        if collection_id is not None:
            check_collection_id(collection_id)
        keys = {info.key async for info in self._store.list(SNAPSHOTS_PREFIX)}
        slots = asyncio.Semaphore(LIST_CONCURRENCY)

        async def load(key: str) -> SnapshotMetadata | UnreadableEntry:
            async with slots:
                try:
                    return await self._load(key, await self._store.get_bytes(key), keys)
                except CorruptSnapshotError as exc:
                    return UnreadableEntry(key, exc.message)
                except ObjectMissingError:
                    return UnreadableEntry(key, "deleted while being listed")

        markers = sorted(key for key in keys if _marker_snapshot_id(key) is not None)
        loaded = await asyncio.gather(*(load(key) for key in markers))
        snapshots = [m for m in loaded if isinstance(m, SnapshotMetadata)]
        unreadable = [e for e in loaded if isinstance(e, UnreadableEntry)]
        unreadable += [UnreadableEntry(key, why) for key, why in _stray_files(keys)]
        if collection_id is not None:
            snapshots = [m for m in snapshots if m.collection_id == collection_id]
            unreadable = [e for e in unreadable if _may_belong(e.key, collection_id)]
        return CatalogScan(
            sorted(snapshots, key=lambda meta: (meta.created_at, meta.snapshot_id)),
            sorted(unreadable, key=lambda entry: entry.key),
        )

    async def delete(self, snapshot_id: str, collection_id: str | None = None) -> SnapshotMetadata:
        """Remove the metadata file first (the snapshot is gone at once), then its parts."""
        metadata = await self.get(snapshot_id, collection_id)
        await self.remove(metadata)
        return metadata

    async def remove(self, metadata: SnapshotMetadata) -> None:
        """Commit marker (or AkiDB sidecar) first, then the data, then akisnap's record."""
        ids = (metadata.collection_id, metadata.snapshot_id)
        if is_akidb_format(metadata.format):
            await self._store.delete(sidecar_key(metadata.format, *ids))
            await self._store.delete(data_key(metadata.format, *ids))
            await self._store.delete(integrity_key(metadata.format, *ids))
            return
        await self._store.delete(metadata_key(*ids))
        await self.delete_parts(*ids)

    async def delete_parts(self, collection_id: str, snapshot_id: str) -> int:
        """Every object under the snapshot's prefix, including parts a crash left behind."""
        prefix = snapshot_prefix(collection_id, snapshot_id)
        keys = [info.key async for info in self._store.list(prefix)]
        for key in keys:
            await self._store.delete(key)
        return len(keys)

    async def _load(self, key: str, raw: bytes, keys: Collection[str] | None) -> SnapshotMetadata:
        """A commit marker: akisnap's metadata file, or an AkiDB 2.0 sidecar (with akisnap's
        SHA-256 record when akisnap wrote it). ``keys``: what the store holds, when known."""
        if _is_native(raw):
            return SnapshotMetadata.from_json(raw, key=key)
        try:
            sidecar = parse_sidecar(raw, key)
        except CorruptSnapshotError as exc:
            raise CorruptSnapshotError(
                f"neither an akisnap metadata file nor an AkiDB 2.0 sidecar: {exc.message}"
            ) from None
        record_key = integrity_key(
            sidecar.snapshot_format, sidecar.collection_id, sidecar.snapshot_id
        )
        integrity = None
        if keys is None or record_key in keys:
            try:
                integrity = parse_integrity(await self._store.get_bytes(record_key), record_key)
            except ObjectMissingError:
                integrity = None
        return to_metadata(sidecar, integrity)


def commit_marker_key(metadata: SnapshotMetadata) -> str:
    """The key whose existence makes the snapshot exist (its metadata file or sidecar)."""
    ids = (metadata.collection_id, metadata.snapshot_id)
    if is_akidb_format(metadata.format):
        return sidecar_key(metadata.format, *ids)
    return metadata_key(*ids)


def _is_native(raw: bytes) -> bool:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(body, dict) and "schema" in body


def _json_sidecar(snapshot_id: str) -> str:
    return f"{SNAPSHOTS_PREFIX}{snapshot_id}{JSON_SIDECAR_SUFFIX}"


def _marker_snapshot_id(key: str) -> str | None:
    """The snapshot id a commit-marker key names (native/AkiDB Parquet, or AkiDB JSON)."""
    if is_metadata_key(key):
        return snapshot_id_of_metadata_key(key)
    parts = key.split("/")
    if len(parts) == 2 and parts[0] == "snapshots" and parts[1].endswith(JSON_SIDECAR_SUFFIX):
        return parts[1][: -len(JSON_SIDECAR_SUFFIX)]
    return None


def _stray_files(keys: Collection[str]) -> list[tuple[str, str]]:
    """Files that belong to no snapshot: AkiDB data without its sidecar, unknown names.
    Native parts (``snapshots/C/ID/…``) are left to the orphan clean-up."""
    stray = []
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 4 or _marker_snapshot_id(key) is not None:
            continue
        marker = _marker_of(key)
        if marker is None:
            stray.append((key, "not a snapshot file akisnap knows (neither format)"))
        elif marker not in keys:
            stray.append((key, f"no commit marker {marker}: an unfinished or damaged snapshot"))
    return stray


def _marker_of(key: str) -> str | None:
    """The commit marker a data file or integrity record of an AkiDB snapshot needs."""
    depth = len(key.split("/"))
    for suffix in (INTEGRITY_SUFFIX, ".parquet", ".json"):
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            if suffix == ".parquet" and depth == 3:
                return stem + METADATA_SUFFIX
            if suffix == ".json" and depth == 2:
                return stem + JSON_SIDECAR_SUFFIX
            if suffix == INTEGRITY_SUFFIX:
                return stem + (METADATA_SUFFIX if depth == 3 else JSON_SIDECAR_SUFFIX)
    return None


def _may_belong(key: str, collection_id: str) -> bool:
    """An unreadable file is shown with a collection filter if it might be that collection's."""
    parts = key.split("/")
    return len(parts) == 2 or parts[1] == collection_id
