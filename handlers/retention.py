"""Retention: prune old snapshots of a collection, and clean up orphan parts.

Pruning keeps the ``keep_last`` newest committed snapshots of a collection and, when
``older_than_days`` is given, deletes only those of the rest that are older than that. A
snapshot is deleted metadata file first (it is gone at once), then its parts: a crash in between
leaves an orphan, never a snapshot with missing parts.

An orphan is a set of objects under ``snapshots/C/ID/`` with no ``snapshots/C/ID.metadata.json``:
what a create leaves when it crashes before its commit, or a prune after deleting the metadata.
Part keys name their content, so a redo that encodes other bytes (a new default ``inserted_at``,
other settings) writes other keys: the parts an interrupted run left beside a snapshot that a
later run committed are orphans too (*leftovers*: under a committed prefix, not in its
metadata, which is never rewritten). Only orphans whose newest object is older than a grace
period are removed, so a create still uploading its parts is never touched; the metadata file
is checked once more right before deleting, in case that create committed meanwhile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from handlers.catalog import Catalog, UnreadableEntry
from handlers.dependants import needed_by
from handlers.errors import InvalidRequestError
from handlers.layout import SNAPSHOTS_PREFIX, collection_prefix, is_metadata_key, metadata_key
from handlers.metadata import SnapshotMetadata
from handlers.stores import ObjectStore

DEFAULT_ORPHAN_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class PrunePlan:
    """What a prune of one collection keeps and deletes (newest first in both)."""

    collection_id: str
    keep: tuple[SnapshotMetadata, ...]
    delete: tuple[SnapshotMetadata, ...]
    held: tuple[tuple[str, str], ...] = ()
    """(snapshot id, id of the kept delta that needs it): kept although the policy said go."""

    @property
    def bytes_freed(self) -> int:
        return sum(meta.written_bytes for meta in self.delete)


@dataclass(frozen=True)
class PruneResult:
    plan: PrunePlan
    dry_run: bool
    deleted: tuple[SnapshotMetadata, ...] = ()
    unreadable: tuple[UnreadableEntry, ...] = ()
    """Files under snapshots/ that are no readable snapshot: left alone, reported."""


@dataclass(frozen=True)
class Orphan:
    """The objects under one snapshot prefix that no metadata file commits."""

    collection_id: str
    snapshot_id: str
    keys: tuple[str, ...]
    size: int
    newest: datetime
    leftover: bool = False
    """Objects beside a committed snapshot that its metadata does not list."""

    @property
    def prefix(self) -> str:
        return f"snapshots/{self.collection_id}/{self.snapshot_id}/"


@dataclass(frozen=True)
class OrphanResult:
    removed: tuple[Orphan, ...]
    too_young: tuple[Orphan, ...]
    dry_run: bool
    committed_meanwhile: tuple[Orphan, ...] = field(default_factory=tuple)

    @property
    def bytes_freed(self) -> int:
        return sum(orphan.size for orphan in self.removed)


def created_at(metadata: SnapshotMetadata) -> datetime:
    stamp = datetime.fromisoformat(metadata.created_at)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def plan_prune(
    collection_id: str,
    snapshots: Sequence[SnapshotMetadata],
    *,
    keep_last: int | None,
    older_than_days: float | None = None,
    now: datetime | None = None,
) -> PrunePlan:
    """Keep the ``keep_last`` newest; of the others delete those older than the age (if any)."""
    check_policy(keep_last, older_than_days)
    newest_first = sorted(snapshots, key=lambda m: (created_at(m), m.snapshot_id), reverse=True)
    protected = newest_first[: keep_last if keep_last is not None else 0]
    cutoff = (
        None
        if older_than_days is None
        else (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    )
    keep: list[SnapshotMetadata] = list(protected)
    delete: list[SnapshotMetadata] = []
    for meta in newest_first[len(protected) :]:
        if cutoff is not None and created_at(meta) >= cutoff:
            keep.append(meta)
        else:
            delete.append(meta)
    needed = needed_by(keep, snapshots)
    held = [meta for meta in delete if meta.snapshot_id in needed]
    delete = [meta for meta in delete if meta.snapshot_id not in needed]
    return PrunePlan(
        collection_id,
        tuple(keep + held),
        tuple(delete),
        tuple((meta.snapshot_id, needed[meta.snapshot_id]) for meta in held),
    )


def check_policy(keep_last: int | None, older_than_days: float | None) -> None:
    if keep_last is None and older_than_days is None:
        raise InvalidRequestError("a prune needs --keep-last N and/or --older-than DAYS")
    if keep_last is not None and keep_last < 0:
        raise InvalidRequestError(f"--keep-last must be >= 0, got {keep_last}")
    if older_than_days is not None and older_than_days < 0:
        raise InvalidRequestError(f"--older-than must be >= 0 days, got {older_than_days}")


async def prune(
    catalog: Catalog,
    collection_id: str,
    *,
    keep_last: int | None,
    older_than_days: float | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    on_deleted: Callable[[SnapshotMetadata], None] | None = None,
) -> PruneResult:
    """Plan, then (unless ``dry_run``) delete: each snapshot's metadata first, then its parts."""
    scan = await catalog.scan(collection_id)
    plan = plan_prune(
        collection_id,
        scan.snapshots,
        keep_last=keep_last,
        older_than_days=older_than_days,
        now=now,
    )
    unreadable = tuple(scan.unreadable)
    if dry_run:
        return PruneResult(plan, dry_run=True, unreadable=unreadable)
    deleted: list[SnapshotMetadata] = []
    for meta in plan.delete:
        await catalog.remove(meta)
        deleted.append(meta)
        if on_deleted is not None:
            on_deleted(meta)
    return PruneResult(plan, dry_run=False, deleted=tuple(deleted), unreadable=unreadable)


# -- orphans ----------------------------------------------------------------------------------


async def find_orphans(
    store: ObjectStore,
    *,
    collection_id: str | None = None,
    grace: timedelta = DEFAULT_ORPHAN_GRACE,
    now: datetime | None = None,
) -> tuple[list[Orphan], list[Orphan]]:
    """(old enough to remove, too young) orphans under the collection, or all collections."""
    committed: set[tuple[str, str]] = set()
    groups: dict[tuple[str, str], list[tuple[str, int, datetime]]] = {}
    async for info in store.list(collection_prefix(collection_id)):
        parts = info.key.split("/")
        if is_metadata_key(info.key):
            committed.add((parts[1], parts[2][: -len(".metadata.json")]))
        elif len(parts) >= 4 and parts[0] == "snapshots":
            stamp = info.last_modified
            stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
            groups.setdefault((parts[1], parts[2]), []).append((info.key, info.size, stamp))
    cutoff = (now or datetime.now(UTC)) - grace
    old: list[Orphan] = []
    young: list[Orphan] = []
    catalog = Catalog(store)
    for (collection, snapshot), found in sorted(groups.items()):
        leftover = (collection, snapshot) in committed
        listed = await _listed_parts(catalog, collection, snapshot) if leftover else set()
        objects = [item for item in found if item[0] not in listed]
        if not objects:
            continue
        orphan = Orphan(
            collection_id=collection,
            snapshot_id=snapshot,
            keys=tuple(sorted(key for key, _, _ in objects)),
            size=sum(size for _, size, _ in objects),
            newest=max(stamp for _, _, stamp in objects),
            leftover=leftover,
        )
        (old if orphan.newest < cutoff else young).append(orphan)
    return old, young


async def _listed_parts(catalog: Catalog, collection_id: str, snapshot_id: str) -> set[str]:
    """The part keys a committed snapshot's metadata lists (none if it is gone by now)."""
    metadata = await catalog.find(collection_id, snapshot_id)
    if metadata is None:
        return set()
    return {part.key for part in (*metadata.parts, *metadata.side_objects)}


async def remove_orphans(
    store: ObjectStore,
    *,
    collection_id: str | None = None,
    grace: timedelta = DEFAULT_ORPHAN_GRACE,
    dry_run: bool = False,
    now: datetime | None = None,
    on_removed: Callable[[Orphan], None] | None = None,
) -> OrphanResult:
    """Delete every orphan older than ``grace`` (re-checking its metadata file first)."""
    if grace < timedelta(0):
        raise InvalidRequestError("the orphan grace period must not be negative")
    old, young = await find_orphans(store, collection_id=collection_id, grace=grace, now=now)
    if dry_run:
        return OrphanResult(tuple(old), tuple(young), dry_run=True)
    removed: list[Orphan] = []
    committed: list[Orphan] = []
    catalog = Catalog(store)
    for orphan in old:
        if orphan.leftover:
            listed = await _listed_parts(catalog, orphan.collection_id, orphan.snapshot_id)
            if listed.intersection(orphan.keys):  # never a committed snapshot's own part
                committed.append(orphan)
                continue
        elif await store.head(metadata_key(orphan.collection_id, orphan.snapshot_id)) is not None:
            committed.append(orphan)
            continue
        for key in orphan.keys:
            await store.delete(key)
        removed.append(orphan)
        if on_removed is not None:
            on_removed(orphan)
    return OrphanResult(tuple(removed), tuple(young), False, tuple(committed))


def remove_empty_folders(
    store: ObjectStore,
    *,
    grace: timedelta = DEFAULT_ORPHAN_GRACE,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Empty folders under ``snapshots/`` of a local store (a delete or prune removes the
    files, not their folders), deepest first; only those untouched for ``grace``, so a
    create that just made its folder is left alone. Object stores have no folders: []."""
    root = store.local_path(SNAPSHOTS_PREFIX.rstrip("/"))
    if root is None or not root.is_dir():
        return []
    cutoff = (now or datetime.now(UTC)) - grace
    removed = []
    for directory, _, _ in os.walk(root, topdown=False):
        path = Path(directory)
        if path == root or any(path.iterdir()):
            continue
        if datetime.fromtimestamp(path.stat().st_mtime, tz=UTC) > cutoff:
            continue
        if not dry_run:
            with contextlib.suppress(OSError):  # filled meanwhile: then it is not empty
                path.rmdir()
        removed.append(path.relative_to(root.parent).as_posix() + "/")
    return removed
