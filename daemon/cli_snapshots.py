"""`akisnap snapshots create|list|show|verify|delete|restore`: the catalog, without Kafka."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from daemon import cli_operator
from daemon.cli_common import (
    add_common_options,
    emit,
    fail,
    human_bytes,
    labels_from,
    load_settings,
)
from daemon.exit_codes import CORRUPT
from daemon.settings import Settings
from handlers.catalog import Catalog
from handlers.create import SnapshotCreator
from handlers.job import (
    COMPRESSIONS,
    SnapshotJob,
    UriSource,
    new_request_id,
    source_format_from_uri,
)
from handlers.metadata import SnapshotMetadata
from handlers.restore import restore_snapshot
from handlers.sources import parse_location
from handlers.stores import ObjectStore, open_store
from handlers.verify import verify_snapshot

Verb = Callable[[argparse.Namespace, Settings, ObjectStore], Awaitable[int]]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("snapshots", help="create, list, show, verify, delete, restore")
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    cli_operator.register_prune(verbs)

    create = _verb(
        verbs, "create", "encode → upload → verify an export, here, without Kafka", _create
    )
    create.add_argument("--collection", required=True, help="collection id")
    create.add_argument("--from", dest="source", required=True, metavar="URI", help="export URI")
    create.add_argument("--request-id", help="idempotency key (default: a new UUID)")
    create.add_argument("--format", choices=("parquet", "json"), default="parquet")
    create.add_argument("--compression", choices=COMPRESSIONS, default="zstd")
    create.add_argument("--label", action="append", default=[], metavar="K=V")

    listing = _verb(verbs, "list", "committed snapshots, oldest first", _list)
    listing.add_argument("collection", nargs="?", help="only this collection")

    show = _verb(verbs, "show", "one snapshot's metadata", _show)
    show.add_argument("snapshot_id")

    verify = _verb(verbs, "verify", "check every part's size and SHA-256", _verify)
    verify.add_argument("snapshot_id")
    verify.add_argument("--full", action="store_true", help="also decode and check every row")

    delete = _verb(verbs, "delete", "remove a snapshot (metadata first, then parts)", _delete)
    delete.add_argument("snapshot_id")

    restore = _verb(verbs, "restore", "write a snapshot to .parquet/.arrow/.npy/.jsonl", _restore)
    restore.add_argument("snapshot_id")
    restore.add_argument("--out", required=True, type=Path, metavar="FILE")


def _verb(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str, run: Verb
) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name, help=text, description=text)
    add_common_options(parser)
    parser.set_defaults(func=lambda args: asyncio.run(_with_store(args, run)))
    return parser


async def _with_store(args: argparse.Namespace, run: Verb) -> int:
    settings = load_settings(args)
    store = open_store(settings.store, settings.s3_options())
    try:
        return await run(args, settings, store)
    finally:
        await store.close()


async def _create(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    source = UriSource(args.source, source_format_from_uri(args.source))
    job = SnapshotJob(
        collection_id=args.collection,
        request_id=args.request_id or new_request_id(),
        source=source,
        format=args.format,
        compression=args.compression,
        labels=labels_from(args.label),
    )
    # The operator named this file on the command line: allow it, unlike requests from Kafka.
    roots = [*settings.source_roots(), parse_location(args.source).display]
    creator = SnapshotCreator(
        store,
        source_roots=roots,
        s3=settings.s3_options(),
        part_size_bytes=settings.part_size_bytes,
    )
    existing = await creator.existing(job)
    outcome = "duplicate" if existing else "created"
    metadata = existing or (await creator(job)).metadata
    emit(args, {**metadata.to_dict(), "outcome": outcome}, _describe(metadata, outcome))
    return 0


async def _list(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    snapshots = await Catalog(store).list(args.collection)
    rows = [_row(meta) for meta in snapshots]
    emit(args, [meta.to_dict() for meta in snapshots], _table(rows) if rows else "no snapshots")
    return 0


async def _show(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    metadata = await Catalog(store).get(args.snapshot_id)
    emit(args, {**metadata.to_dict(), "outcome": "found"}, _describe(metadata, "found"))
    return 0


async def _verify(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    metadata = await Catalog(store).get(args.snapshot_id)
    report = await verify_snapshot(store, metadata, full=args.full)
    outcome = "ok" if report.ok else "corrupt"
    payload = {
        **metadata.to_dict(),
        "outcome": outcome,
        "problems": report.problems,
        "full": report.full,
    }
    human = f"{metadata.snapshot_id}: {outcome} ({report.parts_checked} parts, " + (
        f"{human_bytes(report.bytes_checked)}{', decoded' if report.full else ''})"
    )
    emit(args, payload, human + "".join(f"\n  {problem}" for problem in report.problems))
    if not report.ok:
        fail(f"snapshot {metadata.snapshot_id} is corrupt: {report.problems[0]}", CORRUPT)
    return 0


async def _delete(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    metadata = await Catalog(store).delete(args.snapshot_id)
    emit(args, {**metadata.to_dict(), "outcome": "deleted"}, f"deleted {metadata.snapshot_id}")
    return 0


async def _restore(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    metadata = await Catalog(store).get(args.snapshot_id)
    progress = cli_operator.Progress(args, unit="rows", desc="restore")
    progress.start(metadata.vector_count)
    try:
        result = await restore_snapshot(store, metadata, args.out, progress=progress.update)
    finally:
        progress.close()
    payload = {
        **metadata.to_dict(),
        "outcome": "restored",
        "out": str(result.path),
        "rows": result.rows,
        "bytes_written": result.bytes_written,
    }
    emit(args, payload, f"restored {result.rows} vectors to {result.path}")
    return 0


def _describe(metadata: SnapshotMetadata, outcome: str) -> str:
    ratio = metadata.json_equivalent_bytes / metadata.total_bytes if metadata.total_bytes else 0
    raw = 4 * metadata.vector_count * metadata.dimension
    return (
        f"{outcome}: snapshot {metadata.snapshot_id} of {metadata.collection_id}\n"
        f"  {metadata.vector_count} vectors × {metadata.dimension}, {len(metadata.parts)} part(s), "
        f"{human_bytes(metadata.total_bytes)} ({metadata.format}/{metadata.compression})\n"
        f"  {raw / metadata.total_bytes:.2f}× smaller than raw float32, "
        f"{ratio:.2f}× smaller than JSON (estimated)\n"
        f"  created {metadata.created_at}"
    )


def _row(meta: SnapshotMetadata) -> dict[str, Any]:
    return {
        "SNAPSHOT": meta.snapshot_id,
        "COLLECTION": meta.collection_id,
        "VECTORS": str(meta.vector_count),
        "DIM": str(meta.dimension),
        "SIZE": human_bytes(meta.total_bytes),
        "CREATED": meta.created_at[:19],
    }


def _table(rows: list[dict[str, Any]]) -> str:
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}
    lines = ["  ".join(key.ljust(width) for key, width in widths.items())]
    lines += ["  ".join(row[key].ljust(width) for key, width in widths.items()) for row in rows]
    return "\n".join(lines)
