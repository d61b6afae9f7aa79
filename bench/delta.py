"""Delta snapshots against full ones, same run: `python -m bench.delta [ROWS [DIM]]`.

1% of the rows change per step (new random vectors). Prints: bytes and time of a delta from a
change set and from a full export against a full create, and the restore of a 10-delta chain
against the restore of the equivalent (compacted) full snapshot. Local store, one process.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
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


class Run:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = open_store((work / "store").as_uri())
        self.creator = SnapshotCreator(self.store, source_roots=[work.as_uri()])

    async def create(
        self, table: pa.Table, base: str | None = None, change_set: bool = False
    ) -> tuple[SnapshotMetadata, float]:
        path = self.work / f"{uuid.uuid4().hex}.parquet"
        pq.write_table(table, path)
        job = SnapshotJob(
            "bench",
            str(uuid.uuid4()),
            UriSource(path.as_uri(), "parquet"),
            base=base,
            deletes=() if change_set else None,
        )
        started = time.perf_counter()
        meta = (await self.creator(job)).metadata
        seconds = time.perf_counter() - started
        path.unlink()
        return meta, seconds

    async def restore(self, meta: SnapshotMetadata) -> float:
        out = self.work / f"{uuid.uuid4().hex}.parquet"
        started = time.perf_counter()
        await restore_snapshot(self.store, meta, out)
        seconds = time.perf_counter() - started
        out.unlink()
        return seconds


def written(meta: SnapshotMetadata) -> int:
    return meta.total_bytes + sum(side.size for side in meta.side_objects)


async def main(rows: int, dim: int) -> None:
    with tempfile.TemporaryDirectory(prefix="akisnap-bench-delta-") as folder:
        run = Run(Path(folder))
        table = random_table(rows, dim, seed=1)
        full, full_s = await run.create(table)
        print(f"{rows} x {dim}, {CHANGED:.0%} rows changed per delta (local store)")
        print(f"full create            {full_s:8.2f} s  {written(full) / 1e6:10.1f} MB")
        table, rows_changed = changed(table, 1)
        cs, cs_s = await run.create(rows_changed, base=full.snapshot_id, change_set=True)
        print(
            f"delta from change set  {cs_s:8.2f} s  {written(cs) / 1e6:10.1f} MB"
            f"  ({cs_s / full_s:.3f}x time, {written(cs) / written(full):.2%} bytes)"
        )
        ex, ex_s = await run.create(table, base=full.snapshot_id)
        print(
            f"delta from full export {ex_s:8.2f} s  {written(ex) / 1e6:10.1f} MB"
            f"  ({ex_s / full_s:.3f}x time, {written(ex) / written(full):.2%} bytes)"
        )
        top = cs
        for step in range(2, CHAIN + 1):
            table, rows_changed = changed(table, step)
            top, _ = await run.create(rows_changed, base=top.snapshot_id, change_set=True)
        flat = await compact(run.creator, top)
        chain_s = await run.restore(top)
        flat_s = await run.restore(flat)
        print(
            f"restore {CHAIN}-delta chain {chain_s:8.2f} s vs equivalent full {flat_s:.2f} s"
            f"  ({chain_s / flat_s:.2f}x)"
        )


if __name__ == "__main__":
    arguments = [int(value) for value in sys.argv[1:3]]
    asyncio.run(main(*(arguments + [100_000, 768][len(arguments) :])))
