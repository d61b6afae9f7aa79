"""The committed snapshots of a store: commit, find, list, delete. Reads metadata files only."""

from __future__ import annotations

import asyncio

from handlers.errors import ObjectMissingError, SnapshotNotFoundError
from handlers.job import check_collection_id
from handlers.layout import (
    collection_prefix,
    is_metadata_key,
    metadata_key,
    snapshot_id_of_metadata_key,
    snapshot_prefix,
)
from handlers.metadata import SnapshotMetadata
from handlers.stores import ObjectStore

LIST_CONCURRENCY = 16


class Catalog:
    """A snapshot exists exactly when its metadata file does."""

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

    async def find(self, collection_id: str, snapshot_id: str) -> SnapshotMetadata | None:
        key = metadata_key(collection_id, snapshot_id)
        try:
            raw = await self._store.get_bytes(key)
        except ObjectMissingError:
            return None
        return SnapshotMetadata.from_json(raw, key=key)

    async def get(self, snapshot_id: str, collection_id: str | None = None) -> SnapshotMetadata:
        """The snapshot with that id (searched across collections unless one is given)."""
        if collection_id is not None:
            found = await self.find(collection_id, snapshot_id)
            if found is not None:
                return found
            raise SnapshotNotFoundError(f"no snapshot {snapshot_id} in collection {collection_id}")
        async for info in self._store.list(collection_prefix(None)):
            if is_metadata_key(info.key) and snapshot_id_of_metadata_key(info.key) == snapshot_id:
                return SnapshotMetadata.from_json(
                    await self._store.get_bytes(info.key), key=info.key
                )
        raise SnapshotNotFoundError(f"no snapshot with id {snapshot_id!r}")

    async def list(self, collection_id: str | None = None) -> list[SnapshotMetadata]:
        """Committed snapshots, oldest first; unreadable metadata files are reported."""
        if collection_id is not None:
            check_collection_id(collection_id)
        keys = [
            info.key
            async for info in self._store.list(collection_prefix(collection_id))
            if is_metadata_key(info.key)
        ]
        slots = asyncio.Semaphore(LIST_CONCURRENCY)

        async def load(key: str) -> SnapshotMetadata:
            async with slots:
                return SnapshotMetadata.from_json(await self._store.get_bytes(key), key=key)

        loaded = await asyncio.gather(*(load(key) for key in keys))
        return sorted(loaded, key=lambda meta: (meta.created_at, meta.snapshot_id))

    async def delete(self, snapshot_id: str, collection_id: str | None = None) -> SnapshotMetadata:
        """Remove the metadata file first (the snapshot is gone at once), then its parts."""
        metadata = await self.get(snapshot_id, collection_id)
        await self._store.delete(metadata_key(metadata.collection_id, metadata.snapshot_id))
        await self.delete_parts(metadata.collection_id, metadata.snapshot_id)
        return metadata

    async def delete_parts(self, collection_id: str, snapshot_id: str) -> int:
        """Every object under the snapshot's prefix, including parts a crash left behind."""
        prefix = snapshot_prefix(collection_id, snapshot_id)
        keys = [info.key async for info in self._store.list(prefix)]
        for key in keys:
            await self._store.delete(key)
        return len(keys)
