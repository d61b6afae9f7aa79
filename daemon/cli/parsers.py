"""Every verb's options, and where its code lives: nothing heavy is imported here.

``akisnap --help`` and a wrong option must answer at once, so this module imports argparse
and a few light modules only. A leaf parser's ``run`` default names its function as
``module:function``; :func:`daemon.cli.main` imports that module only when the verb runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from daemon.dead_letters.defaults import (
    DEFAULT_MAX_REPLAYS,
    DEFAULT_RATE_PER_SECOND,
    DEFAULT_REPLAY_GROUP,
)
from handlers.job import COMPRESSIONS, SNAPSHOT_FORMATS

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(commands: Subparsers) -> None:
    _daemon_verbs(commands)
    _snapshot_verbs(commands)
    _dlq_verbs(commands)
    _migrate(commands)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URI",
        help="object-store root: a path, file:///dir or s3://bucket/prefix "
        "(default: AKISNAP_STORE)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")


def add_yes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--yes", "-y", action="store_true", help="do not ask before removing (on a terminal)"
    )


def _leaf(commands: Subparsers, name: str, text: str, run: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=text, description=text)
    add_common_options(parser)
    parser.set_defaults(run=run)
    return parser


def _delta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", metavar="ID", help="write a delta against this snapshot, or 'latest'"
    )
    parser.add_argument(
        "--deletes",
        type=Path,
        metavar="FILE",
        help="with --base: --from is a change set and FILE lists deleted ids, one a line",
    )


def _labels(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--label", action="append", default=[], metavar="K=V", help=text)


# -- run, request, demo -----------------------------------------------------------------------


def _daemon_verbs(commands: Subparsers) -> None:
    _leaf(
        commands,
        "run",
        "the daemon: consume snapshot requests, publish results and dead letters "
        "(until SIGTERM/SIGINT; settings: AKISNAP_* or --config)",
        "daemon.cli.service:run",
    )

    request = _leaf(
        commands,
        "request",
        "publish a snapshot request to the request topic (and optionally wait for its result "
        "or dead letter)",
        "daemon.cli.service:request",
    )
    request.add_argument("--collection", required=True, metavar="C", help="collection id")
    source = request.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="source_uri",
        metavar="URI",
        help="an export: a path, file:///… or s3://… (.parquet, .arrow, .npy or .json)",
    )
    source.add_argument(
        "--random",
        metavar="N,DIM",
        help="N inline documents of DIM random unit-normal float32 values, random UUID ids",
    )
    request.add_argument("--request-id", metavar="ID", help="default: a new UUID")
    _labels(request, "a label (repeatable)")
    request.add_argument(
        "--format", choices=SNAPSHOT_FORMATS, default="parquet", help="the snapshot's format"
    )
    request.add_argument(
        "--compression", choices=COMPRESSIONS, default="zstd", help="the parts' compression"
    )
    _delta(request)
    request.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for the result (or dead letter) and print it",
    )

    demo = _leaf(
        commands,
        "demo",
        "the whole loop on this machine, end to end (needs `make services`): the daemon "
        "in-process, a local store under ./demo-output, a few requests (one bad), a summary",
        "daemon.cli.service:demo",
    )
    demo.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="default: ./demo-output"
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up waiting for the outcomes after SECONDS (default 120)",
    )


# -- snapshots ----------------------------------------------------------------------------------


def _snapshot_verbs(commands: Subparsers) -> None:
    group = commands.add_parser(
        "snapshots", help="create, list, show, verify, delete, restore, prune"
    )
    verbs = group.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = "daemon.cli.snapshots:main"

    create = _leaf(verbs, "create", "encode → upload → verify an export, here, without Kafka", run)
    create.add_argument("--collection", required=True, help="collection id")
    create.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URI",
        help="the export: a path, file:///… or s3://… (.parquet, .arrow, .npy or .json)",
    )
    create.add_argument("--request-id", help="idempotency key (default: a new UUID)")
    create.add_argument(
        "--format",
        choices=SNAPSHOT_FORMATS,
        default="parquet",
        help="parquet (native), or AkiDB 2.0's own akidb-parquet / akidb-json",
    )
    create.add_argument(
        "--compression", choices=COMPRESSIONS, default="zstd", help="the parts' compression"
    )
    _labels(create, "a label (repeatable)")
    create.add_argument(
        "--exact",
        action="store_true",
        help="refuse an export whose vectors are not float32 (default: convert them, say so, "
        "and record source_dtype in the metadata)",
    )
    _delta(create)

    listing = _leaf(verbs, "list", "committed snapshots, oldest first", run)
    listing.add_argument("collection", nargs="?", help="only this collection")
    _labels(listing, "only snapshots with this label (repeatable: all must match)")

    _with_id(_leaf(verbs, "show", "one snapshot's metadata", run))

    verify = _with_id(_leaf(verbs, "verify", "check every part's size and SHA-256", run))
    verify.add_argument("--full", action="store_true", help="also decode and check every row")

    delete = _leaf(verbs, "delete", "remove a snapshot (metadata first, then parts)", run)
    add_yes_option(_with_id(delete))
    delete.add_argument("--cascade", action="store_true", help="also delete the deltas built on it")

    _with_id(_leaf(verbs, "compact", "write a delta chain again as one full snapshot", run))

    restore = _with_id(
        _leaf(verbs, "restore", "write a snapshot to .parquet/.arrow/.npy/.jsonl", run)
    )
    restore.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="a path or file:///… URI; the extension picks the format",
    )
    restore.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    _partial_restore(restore)

    _prune(verbs)


def _partial_restore(restore: argparse.ArgumentParser) -> None:
    restore.add_argument(
        "--ids",
        type=Path,
        metavar="FILE",
        help="only these documents: one UUID a line, or a .parquet (document_id column) or .npy",
    )
    restore.add_argument(
        "--columns",
        metavar="LIST",
        help="only these columns: a comma list of document_id,external_id,vector,metadata,"
        "inserted_at",
    )
    restore.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="EXPR",
        help="only rows where EXPR holds (repeatable: all must): external_id or inserted_at, "
        "= != < <= > >=, a value; e.g. inserted_at>=2026-01-01T00:00:00Z",
    )
    restore.add_argument("--limit", type=int, metavar="N", help="at most N rows, the first ones")
    restore.add_argument(
        "--strict",
        action="store_true",
        help="with --ids: fail (exit 3, nothing written) if an id is not in the snapshot",
    )


def _with_id(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("snapshot_id", metavar="ID", help="a snapshot id, or a unique prefix")
    parser.add_argument("--collection", metavar="C", help="look for the id in this collection only")
    return parser


def _prune(verbs: Subparsers) -> None:
    parser = _leaf(
        verbs,
        "prune",
        "delete old snapshots of a collection, and/or orphan parts left by crashes",
        "daemon.cli.prune:prune_snapshots",
    )
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
        help="remove parts with no metadata file (as a crash leaves them), spool folders of "
        "processes that are gone, and empty snapshot folders",
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


# -- dlq, migrate -------------------------------------------------------------------------------


def _dlq_verbs(commands: Subparsers) -> None:
    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    verbs = dlq.add_subparsers(dest="dlq_verb", required=True, metavar="VERB")
    listing = _leaf(
        verbs, "list", "the dead letters, oldest first, filtered", "daemon.cli.dlq:dlq_list"
    )
    _filters(listing)
    replay = _leaf(
        verbs,
        "replay",
        "re-publish dead letters (key and value untouched) to the request topic",
        "daemon.cli.dlq:dlq_replay",
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


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", help="decode, validate, source, encode, upload or verify")
    parser.add_argument("--error-class", metavar="CLASS", help="e.g. StoreUnavailableError")
    parser.add_argument("--collection", metavar="C", help="only this collection")
    parser.add_argument("--since", metavar="WHEN", help="ISO 8601 time or an age: 2h, 3d")
    parser.add_argument("--until", metavar="WHEN", help="ISO 8601 time or an age: 30m")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N dead letters")


def _migrate(commands: Subparsers) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="AkiDB 2.0 snapshots -> native snapshots",
        description="Convert AkiDB 2.0 snapshots (both formats) under a store root, a prefix, "
        "or one snapshot file into verified native snapshots of the same collection. "
        "Idempotent: a snapshot migrated before is reported 'already migrated'.",
    )
    add_common_options(migrate)
    migrate.set_defaults(run="daemon.cli.migrate:migrate")
    migrate.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URI",
        help="AkiDB store root, prefix, or snapshot file (a path, file:///… or s3://…)",
    )
    migrate.add_argument(
        "--compression", choices=COMPRESSIONS, default="zstd", help="the parts' compression"
    )
