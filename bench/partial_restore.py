"""Partial restore against a full restore, same run: `python -m bench.partial_restore [ROWS [DIM]]`.

Local store, one process, median of ``ROUNDS``. Bytes read are counted two ways: what the
process read from files (``rchar`` of /proc/self/io, the same for every operation) and what
partial restore reports itself (bytes of parts it read; the footer included). Two snapshots
of the same rows: as written (random UUIDv4 ids, in export order: what akisnap writes
today) and from the export sorted by document_id (what sorted parts would give).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.scenarios import random_table
from handlers.create import SnapshotCreator
from handlers.job import SnapshotJob, UriSource
from handlers.metadata import SnapshotMetadata
from handlers.restore import RestoreResult, restore_snapshot
from handlers.selection import Selection, parse_columns
from handlers.stores import open_store

ROUNDS = 3
IDS = 1_000


def rchar() -> int:
    """Bytes this process has read through read(2)/pread(2) so far, page cache or not."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


class Run:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = open_store((work / "store").as_uri())
        self.creator = SnapshotCreator(self.store, source_roots=[work.as_uri()])

    async def create(self, table: pa.Table) -> SnapshotMetadata:
        path = self.work / f"{uuid.uuid4().hex}.parquet"
        pq.write_table(table, path)
        job = SnapshotJob("bench", str(uuid.uuid4()), UriSource(path.as_uri(), "parquet"))
        meta = (await self.creator(job)).metadata
        path.unlink()
        return meta

    async def timed(
        self, meta: SnapshotMetadata, selection: Selection | None
    ) -> tuple[float, int, RestoreResult]:
        """Median seconds and process bytes read of ROUNDS restores, and the last result."""
        seconds, reads = [], []
        result: RestoreResult | None = None
        for _ in range(ROUNDS):
            out = self.work / f"{uuid.uuid4().hex}.parquet"
            before, started = rchar(), time.perf_counter()
            result = await restore_snapshot(self.store, meta, out, selection=selection)
            seconds.append(time.perf_counter() - started)
            reads.append(rchar() - before)
            out.unlink()
        assert result is not None
        return statistics.median(seconds), int(statistics.median(reads)), result


def line(name: str, meta: SnapshotMetadata, figures: tuple[float, int, RestoreResult]) -> str:
    seconds, read, result = figures
    own = "" if result.bytes_read is None else f"{result.bytes_read / meta.total_bytes:7.2%}"
    return (
        f"{name:44s} {seconds:7.2f} s  {result.rows:8d} rows  "
        f"read {read / 1e6:9.1f} MB = {read / meta.total_bytes:7.2%}  (own count {own:>7s})"
    )


async def compare(
    run: Run, meta: SnapshotMetadata, ids: pa.Array, near: pa.Array, label: str
) -> None:
    groups = sum(pq.ParquetFile(run.work / "store" / p.key).num_row_groups for p in meta.parts)
    print(
        f"-- {label}: {meta.total_bytes / 1e6:.1f} MB in {len(meta.parts)} parts, "
        f"{groups} row groups"
    )
    full = await run.timed(meta, None)
    print(line("full restore", meta, full))
    cases: list[tuple[str, Selection]] = [
        (f"{IDS} random ids, all columns", Selection(ids=ids)),
        (
            f"{IDS} random ids, document_id,metadata",
            Selection(ids=ids, columns=parse_columns("document_id,metadata")),
        ),
        (f"{IDS} neighbouring ids (in id order)", Selection(ids=near)),
        (f"first {IDS} rows (--limit)", Selection(limit=IDS)),
    ]
    for name, selection in cases:
        figures = await run.timed(meta, selection)
        print(line(name, meta, figures) + f"  {figures[0] / full[0]:.3f}x time")


async def main(rows: int, dim: int) -> None:
    with tempfile.TemporaryDirectory(prefix="akisnap-bench-partial-") as folder:
        run = Run(Path(folder))
        table = random_table(rows, dim, seed=7)
        rng = np.random.default_rng(11)
        picked = rng.choice(rows, IDS, replace=False)
        ids = table.column("document_id").combine_chunks().take(pa.array(picked))
        in_order = pc.sort_indices(table.column("document_id"))
        near = table.column("document_id").take(in_order.slice(rows // 2, IDS)).combine_chunks()
        print(f"{rows} x {dim}, restore of {IDS} random ids vs a full restore, local store")
        steps: list[tuple[str, Callable[[], Awaitable[SnapshotMetadata]]]] = [
            ("as written (random UUIDv4 order)", lambda: run.create(table)),
            ("export sorted by document_id", lambda: run.create(table.sort_by("document_id"))),
        ]
        for label, make in steps:
            meta = await make()
            await compare(run, meta, ids, near, label)
            for part in meta.parts:  # room for the next snapshot
                (run.work / "store" / part.key).unlink()


if __name__ == "__main__":
    arguments = [int(value) for value in sys.argv[1:3]]
    asyncio.run(main(*(arguments + [1_000_000, 768][len(arguments) :])))
