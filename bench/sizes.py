"""Sizes, measured by writing each format once: akisnap, raw float32, JSON, pyarrow settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.ops import ScenarioBench
from handlers.akidb.json_codec import AkidbJsonWriter
from handlers.codecs.documents_json import documents_json_bytes
from handlers.codecs.parquet import writer_options
from handlers.model import DocumentBatch

JSON_SAMPLE_ROWS = 2000


@dataclass(frozen=True)
class Sizes:
    akisnap: int
    raw: int
    json: int
    json_exact: bool
    npy: int
    lance: int
    pq_akisnap_settings: int
    pq_zstd_only: int
    pq_snappy: int
    sweep: dict[str, int]

    @property
    def best_name(self) -> str:
        return min(self.sweep, key=lambda name: self.sweep[name])

    @property
    def best(self) -> int:
        return self.sweep[self.best_name]


def measure_sizes(bench: ScenarioBench, *, exact_json: bool) -> Sizes:
    table, work = bench.table, bench.workdir
    no_bss = writer_options("zstd")
    del no_bss["column_encoding"]
    sweep: dict[str, int] = {}
    for level in (1, 3, 9):
        bss = {**writer_options("zstd"), "compression_level": level}
        sweep[f"zstd-{level}+BSS"] = _parquet_size(table, work, bss)
        sweep[f"zstd-{level}"] = _parquet_size(table, work, {**no_bss, "compression_level": level})
    return Sizes(
        akisnap=bench.fixture.total_bytes,
        raw=bench.prepared.scenario.raw_bytes,
        json=_json_size(table, work, bench.prepared.scenario.dim, exact=exact_json),
        json_exact=exact_json,
        npy=bench.npy_fixture.stat().st_size,
        lance=_tree_size(bench.lance_fixture),
        pq_akisnap_settings=_parquet_size(table, work, writer_options("zstd")),
        pq_zstd_only=_parquet_size(table, work, no_bss),
        pq_snappy=_parquet_size(table, work, {}),
        sweep=sweep,
    )


def _parquet_size(table: pa.Table, work: Path, options: dict[str, Any]) -> int:
    path = work / "size.parquet"
    pq.write_table(table, path, **options)
    size = path.stat().st_size
    path.unlink()
    return size


def _json_size(table: pa.Table, work: Path, dim: int, *, exact: bool) -> int:
    """AkiDB 2.0's JSON snapshot size: written whole (exact), or extrapolated from a sample."""
    if not exact:
        sample = table.slice(0, min(JSON_SAMPLE_ROWS, table.num_rows)).combine_chunks()
        sampled = documents_json_bytes(DocumentBatch(sample.to_batches()[0]))
        rows: int = table.num_rows
        return round(sampled * rows / int(sample.num_rows))
    path = work / "akidb.json"
    writer = AkidbJsonWriter(path, dim)
    for batch in table.to_batches():
        writer.write(DocumentBatch(batch))
    writer.close()
    size = path.stat().st_size
    path.unlink()
    return size


def _tree_size(path: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )
