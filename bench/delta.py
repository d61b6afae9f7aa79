"""Delta snapshots against full ones, same run: `python -m bench.delta [ROWS [DIM [ROUNDS]]]`
(also part of `make bench`: `python -m bench --delta`).

Random unit vectors (deltas do not depend on how vectors compress), 1% of the rows changed per
step (new vectors). Prints medians over ROUNDS of: bytes and time of a delta from a change set
and from a full export against a full create of the same table, and the restore (.parquet) of a
10-delta chain against the restore of the equivalent compacted full snapshot. Local store, one
process; the creates of a round run back to back, the two restores interleaved.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.scenarios import random_table
from handlers.compact import compact
from handlers.create import SnapshotCreator
from handlers.job import SnapshotJob, UriSource
from handlers.metadata import SnapshotMetadata
from handlers.model import matrix_to_fixed_size_list
from handlers.restore import restore_snapshot
from handlers.stores import open_store

CHANGED = 0.01
CHAIN = 10
DEFAULT_ROWS = 1_000_000
DEFAULT_DIM = 768
DEFAULT_ROUNDS = 3
# issue 16's targets
BYTES_TARGET = 0.02
CHANGE_SET_TIME_TARGET = 0.1
EXPORT_TIME_TARGET = 0.8
CHAIN_RESTORE_TARGET = 1.3


def changed(table: pa.Table, step: int) -> tuple[pa.Table, pa.Table]:
    """(the whole table after the change, the changed rows alone): 1% get new vectors."""
    rng = np.random.default_rng(1000 + step)
    rows = rng.choice(table.num_rows, max(1, int(table.num_rows * CHANGED)), replace=False)
    fresh = random_table(len(rows), table.schema.field("vector").type.list_size, seed=step)
    vectors = table.column("vector").combine_chunks()
    matrix = vectors.flatten().to_numpy().reshape(table.num_rows, -1).copy()
    matrix[rows] = (
        fresh.column("vector").combine_chunks().flatten().to_numpy().reshape(len(rows), -1)
    )
    whole = table.set_column(2, "vector", matrix_to_fixed_size_list(matrix))
    return whole, whole.take(pa.array(np.sort(rows)))


@dataclass
class Figures:
    full: list[float] = field(default_factory=list)
    change_set: list[float] = field(default_factory=list)
    export: list[float] = field(default_factory=list)
    chain_restore: list[float] = field(default_factory=list)
    full_restore: list[float] = field(default_factory=list)
    bytes: dict[str, int] = field(default_factory=dict)


class Run:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = open_store((work / "store").as_uri())
        self.creator = SnapshotCreator(self.store, source_roots=[work.as_uri()])

    def export(self, table: pa.Table) -> str:
        path = self.work / f"{uuid.uuid4().hex}.parquet"
        pq.write_table(table, path)
        return path.as_uri()

    async def create(
        self, uri: str, base: str | None = None, change_set: bool = False
    ) -> tuple[SnapshotMetadata, float]:
        job = SnapshotJob(
            "bench",
            str(uuid.uuid4()),
            UriSource(uri, "parquet"),
            base=base,
            deletes=() if change_set else None,
        )
        started = time.perf_counter()
        meta = (await self.creator(job)).metadata
        return meta, time.perf_counter() - started

    async def restore(self, meta: SnapshotMetadata) -> float:
        out = self.work / f"{uuid.uuid4().hex}.parquet"
        started = time.perf_counter()
        await restore_snapshot(self.store, meta, out)
        seconds = time.perf_counter() - started
        out.unlink()
        return seconds


async def measure(rows: int, dim: int, rounds: int, workdir: Path | None = None) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="akisnap-bench-delta-", dir=workdir) as folder:
        run = Run(Path(folder))
        table = random_table(rows, dim, seed=1)
        original = run.export(table)
        table, rows_changed = changed(table, 1)
        whole, delta_rows = run.export(table), run.export(rows_changed)
        for _ in range(rounds):
            full, seconds = await run.create(original)
            figures.full.append(seconds)
            cs, seconds = await run.create(delta_rows, base=full.snapshot_id, change_set=True)
            figures.change_set.append(seconds)
            ex, seconds = await run.create(whole, base=full.snapshot_id)
            figures.export.append(seconds)
        figures.bytes = {"full": full.written_bytes, "cs": cs.written_bytes, "ex": ex.written_bytes}
        top = cs
        for step in range(2, CHAIN + 1):
            table, rows_changed = changed(table, step)
            top, _ = await run.create(
                run.export(rows_changed), base=top.snapshot_id, change_set=True
            )
        flat = await compact(run.creator, top)
        for _ in range(rounds):
            figures.chain_restore.append(await run.restore(top))
            figures.full_restore.append(await run.restore(flat))
    return figures


def report(rows: int, dim: int, rounds: int, figures: Figures) -> bool:
    """Prints the figures and the targets; True when all are met."""
    med = statistics.median
    full_s, cs_s, ex_s = med(figures.full), med(figures.change_set), med(figures.export)
    chain_s, flat_s = med(figures.chain_restore), med(figures.full_restore)
    size = figures.bytes
    print(f"\n== delta snapshots (issue 16): {rows} x {dim} random float32, {CHANGED:.0%} rows ")
    print(f"   changed per delta, local store, medians of {rounds} ==")
    print(f"full create              {full_s:8.2f} s  {size['full'] / 1e6:10.1f} MB")
    print(f"delta from change set    {cs_s:8.2f} s  {size['cs'] / 1e6:10.1f} MB")
    print(f"delta from full export   {ex_s:8.2f} s  {size['ex'] / 1e6:10.1f} MB")
    print(f"restore {CHAIN}-delta chain   {chain_s:8.2f} s   equivalent full: {flat_s:.2f} s")
    checks = [
        ("delta of 1% changed rows: bytes ≤ 2% of the full", size["cs"] / size["full"], "%"),
        ("delta from a change set: time ≤ 0.1× a full create", cs_s / full_s, "x"),
        ("delta from a full export: time ≤ 0.8× a full create", ex_s / full_s, "x"),
        ("restore of a 10-delta chain ≤ 1.3× the equivalent full", chain_s / flat_s, "x"),
    ]
    targets = (BYTES_TARGET, CHANGE_SET_TIME_TARGET, EXPORT_TIME_TARGET, CHAIN_RESTORE_TARGET)
    met = True
    for (title, value, unit), target in zip(checks, targets, strict=True):
        ok = value <= target
        met = met and ok
        shown = f"{value:.2%}" if unit == "%" else f"{value:.3f}×"
        print(f"{title:<68} {shown:>10} {'met' if ok else 'NOT MET':>8}")
    return met


def run_delta_bench(rows: int, dim: int, rounds: int, workdir: Path | None = None) -> bool:
    return report(rows, dim, rounds, asyncio.run(measure(rows, dim, rounds, workdir)))


if __name__ == "__main__":
    given = [int(value) for value in sys.argv[1:4]]
    rows, dim, rounds = given + [DEFAULT_ROWS, DEFAULT_DIM, DEFAULT_ROUNDS][len(given) :]
    run_delta_bench(rows, dim, rounds)
