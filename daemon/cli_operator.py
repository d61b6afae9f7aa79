"""Operator verbs: ``dlq list|replay``, ``migrate`` and ``snapshots prune``.

Thin, like the rest of the CLI: parse, call the handlers (``handlers.retention``,
``handlers.migrate``) or :mod:`daemon.dead_letters`, print one line per thing done (or one JSON
document with ``--json``), return an exit code. Progress bars (tqdm, on stderr) only when stderr
is a terminal and ``--json`` is off.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TypeAlias

from daemon.cli_common import (
    emit,
    fail,
    human_bytes,
    load_settings,
)
from daemon.dead_letters.letter import DeadLetterRecord
from daemon.dead_letters.reading import DlqFilter, list_dead_letters, parse_when
from daemon.dead_letters.replay import ReplayAction, Replayer, ReplayObserver, ReplayOptions
from daemon.exit_codes import BAD_INPUT, UsageError
from daemon.progress import Progress
from handlers.errors import InvalidRequestError
from handlers.migrate import MigrationOutcome, Migrator
from handlers.spool import discard_process_spool
from handlers.stores import open_store
from handlers.uris import to_uri

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
MESSAGE_COLUMN_CHARS = 60


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


# -- dlq --------------------------------------------------------------------------------------


async def dlq_list(args: argparse.Namespace) -> int:
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


async def dlq_replay(args: argparse.Namespace) -> int:
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


async def migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    store = open_store(settings.store, settings.s3_options())
    migrator = Migrator(
        store,
        s3=settings.s3_options(),
        compression=args.compression,
        part_size_bytes=settings.part_size_bytes,
    )
    progress = Progress(args, unit="B", desc="migrate")
    outcomes: list[MigrationOutcome] = []
    try:
        found = await migrator.discover(to_uri(args.source))
        progress.start(sum(snapshot.size for snapshot in found))
        for snapshot in found:
            outcome = await migrator(snapshot)
            outcomes.append(outcome)
            progress.update(snapshot.size)
            progress.line(_migration_line(outcome))
    finally:
        progress.close()
        await migrator.close()
        discard_process_spool(store.spool_dir())  # Ctrl-C included
        await store.close()
    if args.json:
        emit(args, [outcome.to_dict() for outcome in outcomes], "")
    else:
        print(f"{_migration_summary(outcomes)}; store {store.root_uri}")
    refused = sum(1 for outcome in outcomes if outcome.status == "refused")
    if refused:
        fail(f"{refused} of {len(outcomes)} AkiDB snapshot(s) refused (see above)", BAD_INPUT)
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
        + "".join(f"\n                  note: {note}" for note in outcome.notes)
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
        f"{counts['refused']} refused; {human_bytes(before)} in AkiDB 2.0 formats -> "
        f"{human_bytes(after)} native{_ratio(before, after)}"
    )


def _ratio(before: int, after: int) -> str:
    return f" ({before / after:.1f}× smaller)" if after and before else ""


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
