"""`akisnap snapshots create|list|show|verify|delete|restore`: the catalog, without Kafka."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cli.common import (
    confirm,
    deleted_ids,
    emit,
    fail,
    human_bytes,
    labels_from,
    load_settings,
    table,
)
from daemon.exit_codes import CORRUPT, UsageError
from daemon.progress import Progress
from daemon.settings import Settings
from handlers.catalog import Catalog
from handlers.dependants import delete_snapshot
from handlers.job import (
    SnapshotJob,
    UriSource,
    check_job,
    new_request_id,
    source_format_from_uri,
)
from handlers.layout import metadata_key
from handlers.lookup import resolve_snapshot
from handlers.metadata import SnapshotMetadata
from handlers.spool import discard_process_spool
from handlers.stores import ObjectStore, open_store
from handlers.uris import parse_location, to_uri

if TYPE_CHECKING:
    from handlers.selection import Selection

Verb = Callable[[argparse.Namespace, Settings, ObjectStore], Awaitable[int]]


def main(args: argparse.Namespace) -> int:
    """``snapshots VERB``: open the store (only create makes one), run the verb, close."""
    run, writes = VERBS[args.verb]
    spools: list[Path] = []
    try:
        return asyncio.run(_with_store(args, run, writes, spools))
    finally:
        # After the event loop is gone, hence after the encoder's threads (asyncio.run waits
        # for them), Ctrl-C included: nothing half-written stays in the spool.
        for spool in spools:
            discard_process_spool(spool)


async def _with_store(args: argparse.Namespace, run: Verb, writes: bool, spools: list[Path]) -> int:
    settings = load_settings(args)
    # Only create makes a store; the other verbs refuse a path that holds none.
    store = open_store(settings.store, settings.s3_options(), create=writes)
    if writes:
        spools.append(store.spool_dir())
    try:
        return await run(args, settings, store)
    finally:
        await store.close()


async def _create(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    # create, verify and restore import pyarrow; list, show and delete do not need it.
    from handlers.akidb.notes import precision_notes  # noqa: PLC0415
    from handlers.create import SnapshotCreator, existing_or_create  # noqa: PLC0415

    started = time.perf_counter()
    uri = to_uri(args.source)
    source = UriSource(uri, source_format_from_uri(uri))
    job = check_job(
        SnapshotJob(
            collection_id=args.collection,
            request_id=args.request_id or new_request_id(),
            source=source,
            format=args.format,
            compression=args.compression,
            labels=labels_from(args.label),
            exact=args.exact,
            base=args.base,
            deletes=deleted_ids(args.deletes),
        )
    )
    # The operator named this file on the command line: allow it, unlike requests from Kafka.
    roots = [*settings.source_roots(), uri]
    creator = SnapshotCreator(
        store,
        source_roots=roots,
        s3=settings.s3_options(),
        part_size_bytes=settings.part_size_bytes,
        page_bytes=settings.page_bytes,
    )
    progress = Progress(args, unit="rows", desc="create")
    try:
        made = await existing_or_create(creator, job, lambda: creator(job, progress=progress))
    finally:
        progress.close()
    metadata, outcome = made.metadata, "duplicate" if made.duplicate else "created"
    seconds = time.perf_counter() - started
    notes = precision_notes(source.format, job.format)
    payload = {
        **_snapshot_json(metadata, store, outcome),
        "seconds": round(seconds, 3),
        "notes": notes,
    }
    human = describe(metadata, store, outcome, seconds=seconds)
    emit(args, payload, human + "".join(f"\n  note: {note}" for note in notes))
    return 0


async def _list(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    wanted = labels_from(args.label)
    scan = await Catalog(store).scan(args.collection)
    snapshots = [
        meta
        for meta in scan.snapshots
        if all(meta.labels.get(key) == value for key, value in wanted.items())
    ]
    rows = [_row(meta) for meta in snapshots]
    where = f"in {store.root_uri}" + (f", collection {args.collection}" if args.collection else "")
    if wanted:
        where += ", labels " + ", ".join(f"{k}={v}" for k, v in sorted(wanted.items()))
    human = (
        f"{table(rows)}\n{plural(len(rows), 'snapshot')} {where}"
        if rows
        else f"no snapshots {where}"
    )
    human += "".join(f"\nunreadable {entry.key}: {entry.reason}" for entry in scan.unreadable)
    payload = [meta.to_dict() for meta in snapshots]
    emit(args, payload + [entry.to_dict() for entry in scan.unreadable], human)
    return 0


async def _find(args: argparse.Namespace, store: ObjectStore) -> SnapshotMetadata:
    return await resolve_snapshot(Catalog(store), args.snapshot_id, args.collection)


async def _show(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    metadata = await _find(args, store)
    emit(args, _snapshot_json(metadata, store, "found"), describe(metadata, store, "found"))
    return 0


async def _verify(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    from handlers.verify import verify_snapshot  # noqa: PLC0415 (pyarrow: see _create)

    metadata = await _find(args, store)
    progress = Progress(args, unit="rows", desc="verify")
    if args.full:
        progress.start(metadata.vector_count)
    try:
        report = await verify_snapshot(store, metadata, full=args.full, progress=progress.update)
    finally:
        progress.close()
    outcome = "ok" if report.ok else "corrupt"
    payload = {
        **_snapshot_json(metadata, store, outcome),
        "problems": report.problems,
        "full": report.full,
        "checksum": "none" if report.notes else "sha256",
        "notes": report.notes,
    }
    human = (
        f"{metadata.snapshot_id}: {outcome} ({plural(report.parts_checked, 'part')}, "
        f"{human_bytes(report.bytes_checked)}{', every row decoded' if report.full else ''}) "
        f"in {store.root_uri}"
    )
    human += "".join(f"\n  note: {note}" for note in report.notes)
    emit(args, payload, human + "".join(f"\n  {problem}" for problem in report.problems))
    if not report.ok:
        fail(f"snapshot {metadata.snapshot_id} is corrupt: {report.problems[0]}", CORRUPT)
    return 0


async def _delete(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    metadata = await _find(args, store)
    confirm(
        args,
        f"delete snapshot {metadata.snapshot_id} of {metadata.collection_id} "
        f"({metadata.vector_count:,} vectors, {human_bytes(metadata.total_bytes)}) "
        f"from {store.root_uri}" + (" and every delta built on it" if args.cascade else "") + "?",
    )
    removed = await delete_snapshot(Catalog(store), metadata.snapshot_id, cascade=args.cascade)
    emit(
        args,
        {
            **_snapshot_json(metadata, store, "deleted"),
            "also_deleted": [meta.snapshot_id for meta in removed[:-1]],
        },
        "\n".join(
            f"deleted snapshot {meta.snapshot_id} of {meta.collection_id} "
            f"({human_bytes(meta.written_bytes)}) from {store.root_uri}"
            for meta in removed
        ),
    )
    return 0


async def _compact(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    from handlers.compact import compact  # noqa: PLC0415 (pyarrow: see _create)
    from handlers.create import SnapshotCreator  # noqa: PLC0415 (pyarrow: see _create)

    metadata = await _find(args, store)
    creator = SnapshotCreator(
        store,
        source_roots=[],
        s3=settings.s3_options(),
        part_size_bytes=settings.part_size_bytes,
        page_bytes=settings.page_bytes,
    )
    made = await compact(creator, metadata)
    emit(args, _snapshot_json(made, store, "compacted"), describe(made, store, "compacted"))
    return 0


async def _restore(args: argparse.Namespace, settings: Settings, store: ObjectStore) -> int:
    from handlers.akidb.notes import precision_notes  # noqa: PLC0415 (pyarrow: see _create)
    from handlers.restore import restore_snapshot  # noqa: PLC0415 (pyarrow: see _create)

    out = parse_location(args.out).local_path
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists: give --force to overwrite it")
    selection = _selection(args)
    metadata = await _find(args, store)
    progress = Progress(args, unit="rows", desc="restore")
    progress.start(metadata.vector_count if selection is None else None)
    try:
        result = await restore_snapshot(
            store, metadata, out, progress=progress.update, selection=selection
        )
    finally:
        progress.close()
    notes = precision_notes(metadata.format)
    if result.ids_missing:
        notes.append(
            f"{result.ids_missing} of the ids asked for "
            f"{'is' if result.ids_missing == 1 else 'are'} not in the snapshot, e.g. "
            + ", ".join(result.ids_missing_examples)
        )
    payload = {
        **_snapshot_json(metadata, store, "restored"),
        "out": str(result.path),
        "rows": result.rows,
        "bytes_written": result.bytes_written,
        "notes": notes,
    }
    if selection is not None:
        payload["partial"] = {
            "columns": list(selection.columns),
            "bytes_read": result.bytes_read,
            "ids_missing": result.ids_missing,
            "ids_missing_examples": list(result.ids_missing_examples),
        }
    human = (
        f"restored {result.rows} {'rows' if selection else 'vectors'} of snapshot "
        f"{metadata.snapshot_id} from {store.root_uri} to {result.path} "
        f"({human_bytes(result.bytes_written)})"
    )
    if result.bytes_read is not None:
        whole = "its chain" if metadata.delta else human_bytes(metadata.total_bytes)
        human += f", read {human_bytes(result.bytes_read)} of {whole}"
    emit(args, payload, human + "".join(f"\n  note: {note}" for note in notes))
    return 0


def _selection(args: argparse.Namespace) -> Selection | None:
    """The partial restore the flags ask for, or None for a whole one."""
    from handlers import selection as pick  # noqa: PLC0415 (pyarrow: see _create)

    if args.ids is None and args.columns is None and not args.where and args.limit is None:
        if args.strict:
            raise UsageError("--strict goes with --ids")
        return None
    if args.strict and args.ids is None:
        raise UsageError("--strict goes with --ids")
    return pick.Selection(
        ids=None if args.ids is None else pick.load_ids(args.ids),
        columns=pick.parse_columns(args.columns),
        where=pick.parse_where(args.where),
        limit=pick.parse_limit(args.limit),
        strict=args.strict,
    )


VERBS: dict[str, tuple[Verb, bool]] = {
    "create": (_create, True),
    "list": (_list, False),
    "show": (_show, False),
    "verify": (_verify, False),
    "delete": (_delete, False),
    "compact": (_compact, False),
    "restore": (_restore, False),
}


def _snapshot_json(metadata: SnapshotMetadata, store: ObjectStore, outcome: str) -> dict[str, Any]:
    return {
        **metadata.to_dict(),
        "outcome": outcome,
        "store": store.root_uri,
        "metadata_uri": metadata_uri(store, metadata),
    }


def metadata_uri(store: ObjectStore, metadata: SnapshotMetadata) -> str:
    return f"{store.root_uri}/{metadata_key(metadata.collection_id, metadata.snapshot_id)}"


def describe(
    metadata: SnapshotMetadata, store: ObjectStore, outcome: str, *, seconds: float | None = None
) -> str:
    """What a person wants to know of a snapshot: where, how big, from which request."""
    raw = 4 * metadata.vector_count * metadata.dimension
    size = metadata.total_bytes
    labels = ", ".join(f"{k}={v}" for k, v in sorted(metadata.labels.items())) or "none"
    lines = [
        f"{outcome}: snapshot {metadata.snapshot_id} of collection {metadata.collection_id}",
        f"  where     {metadata_uri(store, metadata)} (+ {plural(len(metadata.parts), 'part')})",
        f"  vectors   {metadata.vector_count:,} × {metadata.dimension}",
        *([_delta_line(metadata).rstrip()] if metadata.delta else []),
        f"  size      {human_bytes(size)} ({metadata.format}/{metadata.compression}): "
        f"{compared(size, raw)} raw float32 ({human_bytes(raw)})"
        + (
            f", {compared(size, metadata.json_equivalent_bytes)} JSON (estimated)"
            if metadata.json_equivalent_bytes
            else ""
        ),
        f"  request   {metadata.request_id}",
        f"  labels    {labels}",
        f"  created   {metadata.created_at}",
    ]
    if metadata.source_dtype is not None:
        lines.append(
            f"  note      vectors converted from {metadata.source_dtype} to float32 "
            "(not bit for bit; --exact refuses such an export)"
        )
    if seconds is not None:
        lines.append(f"  took      {seconds:.2f} s")
    return "\n".join(lines)


def compared(size: int, other: int) -> str:
    """'1.12× smaller than' / '1.05× larger than' / 'the same size as': reads right both ways."""
    if not size or not other or abs(size - other) < 0.005 * other:
        return "the same size as"
    if size < other:
        return f"{other / size:.2f}× smaller than"
    return f"{size / other:.2f}× larger than"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _delta_line(metadata: SnapshotMetadata) -> str:
    delta = metadata.delta
    if delta is None:
        return ""
    return (
        f"  delta of {delta.base_snapshot_id}: {delta.rows_added} added, "
        f"{delta.rows_changed} changed, {delta.rows_deleted} deleted; "
        f"{delta.collection_rows} documents in all\n"
    )


def _row(meta: SnapshotMetadata) -> dict[str, Any]:
    return {
        "SNAPSHOT": meta.snapshot_id,
        "COLLECTION": meta.collection_id,
        "FORMAT": meta.format,
        "VECTORS": str(meta.vector_count),
        "DIM": str(meta.dimension),
        "SIZE": human_bytes(meta.total_bytes),
        "CREATED": meta.created_at[:19],
        "LABELS": ",".join(f"{k}={v}" for k, v in sorted(meta.labels.items())),
    }
