"""Operator verbs: ``dlq list|replay``, ``migrate`` and ``snapshots prune``.

Thin, like the rest of the CLI: parse, call the handlers (``handlers.retention``,
``handlers.migrate``) or :mod:`daemon.dlq`, print one line per thing done (or one JSON document
with ``--json``), return an exit code. Progress bars (tqdm, on stderr) only when stderr is a
terminal and ``--json`` is off.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from daemon.cli_common import (
    add_common_options,
    add_yes_option,
    confirm,
    emit,
    fail,
    human_bytes,
    load_settings,
    will_ask,
)
from daemon.dlq import (
    DEFAULT_MAX_REPLAYS,
    DEFAULT_RATE_PER_SECOND,
    DEFAULT_REPLAY_GROUP,
    DeadLetterRecord,
    DlqFilter,
    ReplayAction,
    Replayer,
    ReplayObserver,
    ReplayOptions,
    list_dead_letters,
    parse_when,
)
from daemon.exit_codes import BAD_INPUT, UsageError
from handlers.catalog import Catalog
from handlers.errors import InvalidRequestError, SnapshotNotFoundError
from handlers.job import COMPRESSIONS, check_collection_id
from handlers.layout import collection_prefix
from handlers.metadata import SnapshotMetadata
from handlers.migrate import MigrationOutcome, Migrator
from handlers.retention import Orphan, OrphanResult, PruneResult, prune, remove_orphans
from handlers.stores import ObjectStore, open_store
from handlers.uris import to_uri

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
MESSAGE_COLUMN_CHARS = 60


def register(commands: Subparsers) -> None:
    """Top-level ``dlq`` (list, replay) and ``migrate``."""
    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    verbs = dlq.add_subparsers(dest="dlq_verb", required=True, metavar="VERB")

    listing = _verb(verbs, "list", "the dead letters, oldest first, filtered", _dlq_list)
    _filters(listing)

    replay = _verb(
        verbs,
        "replay",
        "re-publish dead letters (key and value untouched) to the request topic",
        _dlq_replay,
    )
    _filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    replay.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE_PER_SECOND,
        metavar="PER_SECOND",
        help="at most this many messages a second "
        f"(0: no limit; default {DEFAULT_RATE_PER_SECOND:g})",
    )
    replay.add_argument(
        "--max-replays",
        type=int,
        default=DEFAULT_MAX_REPLAYS,
        metavar="N",
        help=f"refuse a dead letter already replayed N times (default {DEFAULT_MAX_REPLAYS})",
    )
    replay.add_argument(
        "--group",
        default=DEFAULT_REPLAY_GROUP,
        help=f"consumer group that records the progress (default {DEFAULT_REPLAY_GROUP})",
    )

    migrate = commands.add_parser(
        "migrate",
        help="legacy JSON snapshots -> Parquet snapshots",
        description="Convert a legacy JSON snapshot file, or every *.json under a folder or "
        "S3 prefix, into verified Parquet snapshots. Idempotent: a file migrated before is "
        "reported 'already migrated'.",
    )
    add_common_options(migrate)
    migrate.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URI",
        help="a file, folder or S3 prefix: a path, file:///… or s3://…",
    )
    migrate.add_argument(
        "--collection", help="collection of the new snapshots (default: each file's name)"
    )
    migrate.add_argument("--compression", choices=COMPRESSIONS, default="zstd")
    migrate.set_defaults(func=lambda args: asyncio.run(_migrate(args)))


def register_prune(verbs: Subparsers) -> None:
    """``snapshots prune C --keep-last N [--older-than DAYS] [--dry-run]`` and ``--orphans``."""
    text = "delete old snapshots of a collection, and/or orphan parts left by crashes"
    parser = verbs.add_parser("prune", help=text, description=text)
    add_common_options(parser)
    parser.add_argument("collection", nargs="?", help="the collection (orphans: optional)")
    parser.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest snapshots")
    parser.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="delete only snapshots older than DAYS (never one of the --keep-last newest)",
    )
    parser.add_argument(
        "--orphans",
        action="store_true",
        help="remove parts with no metadata file (as a crash leaves them)",
    )
    parser.add_argument(
        "--grace-hours",
        type=float,
        default=1.0,
        metavar="H",
        help="orphans written less than H hours ago are left alone (default 1)",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be deleted")
    add_yes_option(parser)
    parser.set_defaults(func=lambda args: asyncio.run(_prune(args)))


def _verb(
    verbs: Subparsers,
    name: str,
    text: str,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name, help=text, description=text)
    add_common_options(parser)
    parser.set_defaults(func=lambda args: asyncio.run(run(args)))
    return parser


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", help="decode, validate, source, encode, upload or verify")
    parser.add_argument("--error-class", metavar="CLASS", help="e.g. StoreUnavailableError")
    parser.add_argument("--collection", metavar="C", help="only this collection")
    parser.add_argument("--since", metavar="WHEN", help="ISO 8601 time or an age: 2h, 3d")
    parser.add_argument("--until", metavar="WHEN", help="ISO 8601 time or an age: 30m")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N dead letters")


def _filter(args: argparse.Namespace) -> DlqFilter:
    return DlqFilter(
        stage=args.stage,
        error_class=args.error_class,
        collection=args.collection,
        since=_when("--since", args.since),
        until=_when("--until", args.until),
    )


def _when(flag: str, text: str | None) -> datetime | None:
    try:
        return parse_when(text) if text else None
    except InvalidRequestError as exc:
        raise UsageError(f"{flag}: {exc.message}") from None


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """A tqdm bar on stderr when it is a terminal and --json is off; lines go above it."""

    def __init__(self, args: argparse.Namespace, *, unit: str, desc: str) -> None:
        self._quiet = bool(getattr(args, "json", False))
        self._enabled = not self._quiet and sys.stderr.isatty()
        self._unit = unit
        self._desc = desc
        self._bar: Any = None

    def start(self, total: int) -> None:
        if self._enabled and self._bar is None:
            try:
                from tqdm import tqdm  # noqa: PLC0415 (only on a terminal)
            except ImportError:  # a bar is a nicety: go on without one
                self._enabled = False
                return
            scale = self._unit == "B"
            self._bar = tqdm(
                total=total,
                unit=self._unit,
                unit_scale=scale,
                desc=self._desc,
                file=sys.stderr,
                leave=False,
            )

    def update(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def line(self, text: str) -> None:
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# -- dlq --------------------------------------------------------------------------------------


async def _dlq_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    letters = await list_dead_letters(settings, _filter(args), limit=args.limit)
    human = _letters_table(letters) if letters else f"no dead letters in {settings.dlq_topic}"
    emit(args, [letter.to_dict() for letter in letters], human)
    return 0


def _letters_table(letters: list[DeadLetterRecord]) -> str:
    rows = [
        {
            "TIME": letter.to_dict()["time"][:19].replace("T", " "),
            "DLQ": letter.position,
            "ORIGINAL": letter.original,
            "STAGE": letter.stage,
            "ERROR": letter.error_class,
            "COLLECTION": letter.collection_id or "?",
            "REPLAYS": str(letter.replay_count),
            "MESSAGE": _clip(letter.message, MESSAGE_COLUMN_CHARS),
        }
        for letter in letters
    ]
    return _table(rows)


class _ReplayLines(ReplayObserver):
    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def started(self, total: int) -> None:
        self._progress.start(total)

    def scanned(self) -> None:
        self._progress.update()

    def acted(self, action: ReplayAction) -> None:
        self._progress.line(_replay_line(action))


def _replay_line(action: ReplayAction) -> str:
    letter = action.letter
    what = {
        "replayed": f"replayed (replay {action.replay_count})",
        "would_replay": f"would replay (replay {action.replay_count})",
        "refused": "refused",
        "deferred": "deferred",
    }[action.action]
    line = (
        f"{what:<24} dlq {letter.position:<10} {letter.stage:<8} {letter.error_class:<24} "
        f"collection={letter.collection_id or '?'} request={letter.request_id or '?'}"
    )
    return f"{line}: {action.reason}" if action.reason else line


async def _dlq_replay(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    options = ReplayOptions(
        where=_filter(args),
        limit=args.limit,
        max_replays=args.max_replays,
        rate_per_second=args.rate,
        dry_run=args.dry_run,
        group_id=args.group,
    )
    progress = Progress(args, unit="msg", desc="replay")
    try:
        report = await Replayer(settings, options, _ReplayLines(progress))()
    finally:
        progress.close()
    replayed = report.count("would_replay" if report.dry_run else "replayed")
    verb = "would replay" if report.dry_run else "replayed"
    summary = (
        f"{verb} {replayed}, refused {report.count('refused')}, "
        f"deferred {report.count('deferred')}; already replayed earlier {report.already_replayed}, "
        f"not matching {report.not_matching} (group {report.group_id}, "
        f"{settings.dlq_topic} -> {settings.request_topic})"
    )
    emit(args, report.to_dict(), summary)
    return 0


# -- migrate ----------------------------------------------------------------------------------


async def _migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.collection is not None:
        check_collection_id(args.collection)
    store = open_store(settings.store, settings.s3_options())
    migrator = Migrator(
        store,
        s3=settings.s3_options(),
        collection_id=args.collection,
        compression=args.compression,
        part_size_bytes=settings.part_size_bytes,
    )
    progress = Progress(args, unit="B", desc="migrate")
    outcomes: list[MigrationOutcome] = []
    try:
        files = await migrator.discover(to_uri(args.source))
        progress.start(sum(legacy.size for legacy in files))
        for legacy in files:
            outcome = await migrator(legacy)
            outcomes.append(outcome)
            progress.update(legacy.size)
            progress.line(_migration_line(outcome))
    finally:
        progress.close()
        await migrator.close()
        await store.close()
    if args.json:
        emit(args, [outcome.to_dict() for outcome in outcomes], "")
    else:
        print(f"{_migration_summary(outcomes)}; store {store.root_uri}")
    refused = sum(1 for outcome in outcomes if outcome.status == "refused")
    if refused:
        fail(f"{refused} of {len(outcomes)} legacy file(s) refused (see above)", BAD_INPUT)
    return 0


def _migration_line(outcome: MigrationOutcome) -> str:
    if outcome.status == "refused":
        return f"refused           {outcome.source}: {outcome.reason}"
    label = "migrated" if outcome.status == "migrated" else "already migrated"
    return (
        f"{label:<17} {outcome.source} -> {outcome.collection_id}/{outcome.snapshot_id}  "
        f"{outcome.vectors} vectors × {outcome.dimension}, "
        f"{human_bytes(outcome.bytes_before)} -> {human_bytes(outcome.bytes_after)}"
        f"{_ratio(outcome.bytes_before, outcome.bytes_after)}"
    )


def _migration_summary(outcomes: list[MigrationOutcome]) -> str:
    done = [o for o in outcomes if o.status != "refused"]
    before = sum(o.bytes_before for o in done)
    after = sum(o.bytes_after for o in done)
    counts = {
        status: sum(1 for o in outcomes if o.status == status)
        for status in ("migrated", "already_migrated", "refused")
    }
    return (
        f"{counts['migrated']} migrated, {counts['already_migrated']} already migrated, "
        f"{counts['refused']} refused; {human_bytes(before)} of JSON -> "
        f"{human_bytes(after)} of Parquet{_ratio(before, after)}"
    )


def _ratio(before: int, after: int) -> str:
    return f" ({before / after:.1f}× smaller)" if after and before else ""


# -- prune ------------------------------------------------------------------------------------


async def _prune(args: argparse.Namespace) -> int:
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
        done.snapshots, done.size = len(gone), sum(meta.total_bytes for meta in gone)
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
    return done


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
    freed = sum(meta.total_bytes for meta in gone)
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
        "bytes_freed": sum(meta.total_bytes for meta in gone),
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


# -- tables -----------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[dict[str, str]]) -> str:
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}
    lines = ["  ".join(key.ljust(width) for key, width in widths.items()).rstrip()]
    lines += [
        "  ".join(row[key].ljust(width) for key, width in widths.items()).rstrip() for row in rows
    ]
    return "\n".join(lines)
