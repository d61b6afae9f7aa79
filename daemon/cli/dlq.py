"""``akisnap dlq list|replay``: dead letters listed and sent back (:mod:`daemon.dead_letters`).

Thin, like the rest of the CLI: parse, call the daemon's dead-letter code, print one line per
thing done (or one JSON document with ``--json``), return an exit code.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from daemon.cli.common import (
    emit,
    load_settings,
    table,
)
from daemon.dead_letters.letter import DeadLetterRecord
from daemon.dead_letters.reading import DlqFilter, list_dead_letters, parse_when
from daemon.dead_letters.replay import ReplayAction, Replayer, ReplayObserver, ReplayOptions
from daemon.exit_codes import UsageError
from daemon.progress import Progress
from handlers.errors import InvalidRequestError

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
    return table(rows)


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


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
