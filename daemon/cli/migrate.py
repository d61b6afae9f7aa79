"""``akisnap migrate``: AkiDB 2.0 snapshots to native ones (:mod:`handlers.migrate`), one
line per snapshot (or one JSON document with ``--json``). A progress bar (tqdm, on stderr)
only when stderr is a terminal and ``--json`` is off.
"""

from __future__ import annotations

import argparse

from daemon.cli.common import emit, fail, human_bytes, load_settings
from daemon.exit_codes import BAD_INPUT
from daemon.progress import Progress
from handlers.migrate import MigrationOutcome, Migrator
from handlers.spool import discard_process_spool
from handlers.stores import open_store
from handlers.uris import to_uri


async def migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    store = open_store(settings.store, settings.s3_options())
    migrator = Migrator(
        store,
        s3=settings.s3_options(),
        compression=args.compression,
        part_size_bytes=settings.part_size_bytes,
        page_bytes=settings.page_bytes,
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
