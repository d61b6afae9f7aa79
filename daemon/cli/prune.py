"""``akisnap snapshots prune``: old snapshots of a collection, orphan parts, dead spools.

A store verb: it imports neither aiokafka nor pyarrow. On a terminal it shows what it would
remove and asks first (unless --yes or --dry-run).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from daemon.cli.common import confirm, emit, human_bytes, load_settings, will_ask
from daemon.exit_codes import UsageError
from handlers.catalog import Catalog
from handlers.errors import SnapshotNotFoundError
from handlers.job import check_collection_id
from handlers.layout import collection_prefix
from handlers.metadata import SnapshotMetadata
from handlers.retention import (
    Orphan,
    OrphanResult,
    PruneResult,
    prune,
    remove_empty_folders,
    remove_orphans,
)
from handlers.spool import sweep_dead_spools
from handlers.stores import ObjectStore, open_store


async def prune_snapshots(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    policy = args.keep_last is not None or args.older_than is not None
    if not policy and not args.orphans:
        raise UsageError(
            "prune needs --keep-last N and/or --older-than DAYS (with a collection), or --orphans"
        )
    if policy and args.collection is None:
        raise UsageError("name the collection to prune: snapshots prune C --keep-last N")
    if args.collection is not None:
        check_collection_id(args.collection)
    if args.grace_hours < 0:
        raise UsageError("--grace-hours must be >= 0")
    store = open_store(settings.store, settings.s3_options(), create=False)
    try:
        if args.collection is not None and not await _holds_collection(store, args.collection):
            raise SnapshotNotFoundError(f"no collection {args.collection!r} in {store.root_uri}")
        if not args.dry_run and will_ask(args):
            preview = await _prune_once(args, store, policy, dry_run=True)
            if preview.removes:
                confirm(args, f"{preview.question} from {store.root_uri}?")
        done = await _prune_once(args, store, policy, dry_run=args.dry_run)
    finally:
        await store.close()
    payload = {"dry_run": args.dry_run, "collection_id": args.collection, **done.payload}
    emit(
        args,
        {**payload, "store": store.root_uri},
        "\n".join([*done.lines, f"store {store.root_uri}"]),
    )
    return 0


@dataclass
class _Pruned:
    lines: list[str] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    snapshots: int = 0
    orphans: int = 0
    size: int = 0

    @property
    def removes(self) -> bool:
        return bool(self.snapshots or self.orphans)

    @property
    def question(self) -> str:
        what = [f"{self.snapshots} snapshot(s)"] if self.snapshots else []
        what += [f"{self.orphans} orphan(s)"] if self.orphans else []
        return f"delete {' and '.join(what)} ({human_bytes(self.size)})"


async def _prune_once(
    args: argparse.Namespace, store: ObjectStore, policy: bool, *, dry_run: bool
) -> _Pruned:
    done = _Pruned()
    if policy:
        result = await prune(
            Catalog(store),
            args.collection,
            keep_last=args.keep_last,
            older_than_days=args.older_than,
            dry_run=dry_run,
        )
        done.lines += _prune_lines(result)
        done.payload.update(_prune_payload(result))
        gone = result.plan.delete if dry_run else result.deleted
        done.snapshots, done.size = len(gone), sum(meta.written_bytes for meta in gone)
    if args.orphans:
        orphans = await remove_orphans(
            store,
            collection_id=args.collection,
            grace=timedelta(hours=args.grace_hours),
            dry_run=dry_run,
        )
        done.lines += _orphan_lines(orphans, args.grace_hours)
        done.payload["orphans"] = _orphan_payload(orphans)
        done.orphans, done.size = len(orphans.removed), done.size + orphans.bytes_freed
        _sweep(store, timedelta(hours=args.grace_hours), dry_run, done)
    return done


def _sweep(store: ObjectStore, grace: timedelta, dry_run: bool, done: _Pruned) -> None:
    """Spool folders of processes that are gone (a SIGKILL leaves them) and empty folders."""
    spools = sweep_dead_spools(store.spool_dir(), dry_run=dry_run)
    folders = remove_empty_folders(store, grace=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    done.lines += [
        f"{verb} spool of a process that is gone: {spool.path} ({human_bytes(spool.size)})"
        for spool in spools
    ]
    done.lines += [f"{verb} empty folder {folder}" for folder in folders]
    done.payload["dead_spools"] = [{"path": str(s.path), "bytes": s.size} for s in spools]
    done.payload["empty_folders"] = folders
    done.orphans += len(spools) + len(folders)
    done.size += sum(spool.size for spool in spools)


async def _holds_collection(store: ObjectStore, collection_id: str) -> bool:
    async for _ in store.list(collection_prefix(collection_id)):
        return True
    return False


def _prune_lines(result: PruneResult) -> list[str]:
    plan = result.plan
    verb = "would delete" if result.dry_run else "deleted"
    gone = plan.delete if result.dry_run else result.deleted
    lines = [f"{verb:<13} {_snapshot_line(meta)}" for meta in gone]
    lines += [f"{'kept':<13} {_snapshot_line(meta)}" for meta in plan.keep]
    lines += [f"{'held':<13} {base}: the base of kept delta {by}" for base, by in plan.held]
    lines += [f"{'left alone':<13} unreadable {e.key}: {e.reason}" for e in result.unreadable]
    freed = sum(meta.written_bytes for meta in gone)
    lines.append(
        f"{plan.collection_id}: {verb} {len(gone)} snapshot(s), kept {len(plan.keep)}, "
        f"{'would free' if result.dry_run else 'freed'} {human_bytes(freed)}"
    )
    return lines


def _snapshot_line(meta: SnapshotMetadata) -> str:
    return (
        f"{meta.snapshot_id}  {meta.created_at[:19]}  {meta.vector_count} vectors  "
        f"{human_bytes(meta.total_bytes)}"
    )


def _prune_payload(result: PruneResult) -> dict[str, Any]:
    gone = result.plan.delete if result.dry_run else result.deleted
    return {
        "deleted": [meta.to_dict() for meta in gone],
        "kept": [meta.snapshot_id for meta in result.plan.keep],
        "held": [{"snapshot_id": base, "needed_by": by} for base, by in result.plan.held],
        "bytes_freed": sum(meta.written_bytes for meta in gone),
        "unreadable": [entry.to_dict() for entry in result.unreadable],
    }


def _orphan_lines(result: OrphanResult, grace_hours: float) -> list[str]:
    verb = "would remove" if result.dry_run else "removed"
    lines = [f"{verb} orphan {_orphan_text(orphan)}" for orphan in result.removed]
    lines += [
        f"left orphan {_orphan_text(orphan)}: written less than {grace_hours:g} h ago"
        for orphan in result.too_young
    ]
    lines += [
        f"left {orphan.prefix}: its snapshot was committed meanwhile"
        for orphan in result.committed_meanwhile
    ]
    lines.append(
        f"orphans: {verb} {len(result.removed)} ({human_bytes(result.bytes_freed)}), "
        f"{len(result.too_young)} younger than the grace period"
    )
    return lines


def _orphan_text(orphan: Orphan) -> str:
    return (
        f"{orphan.prefix} ({len(orphan.keys)} object(s), {human_bytes(orphan.size)}, "
        f"last written {orphan.newest.isoformat(timespec='seconds')})"
    )


def _orphan_payload(result: OrphanResult) -> dict[str, Any]:
    def entry(orphan: Orphan) -> dict[str, Any]:
        return {
            "collection_id": orphan.collection_id,
            "snapshot_id": orphan.snapshot_id,
            "keys": list(orphan.keys),
            "bytes": orphan.size,
            "last_written": orphan.newest.isoformat(),
        }

    return {
        "removed": [entry(orphan) for orphan in result.removed],
        "too_young": [entry(orphan) for orphan in result.too_young],
        "committed_meanwhile": [entry(orphan) for orphan in result.committed_meanwhile],
        "bytes_freed": result.bytes_freed,
    }
