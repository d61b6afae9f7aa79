"""The benchmark's inputs: seeded random unit vectors and the real MiniLM embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from handlers.codecs.parquet import writer_options
from handlers.model import ID_TYPE, TIMESTAMP_TYPE, snapshot_schema

REPO_ROOT = Path(__file__).resolve().parent.parent
# The full 20k set lives beside the repository, not in it (tests/data holds a 2k slice): the
# real-embedding scenario runs only where that file is present.
REAL_DATA = REPO_ROOT / ".." / "shared" / "data" / "pypi-summaries-minilm-20k.parquet"
FIXED_TIME_US = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z: inserted_at of random rows


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    dim: int
    real: bool = False

    @property
    def raw_bytes(self) -> int:
        """The float32 payload alone: rows × dim × 4."""
        return self.rows * self.dim * 4

    @property
    def description(self) -> str:
        kind = "real MiniLM embeddings" if self.real else "random unit-normal vectors"
        return f"{self.rows:,} × {self.dim} {kind}"


SCENARIOS = (
    Scenario("random-10k-512", 10_000, 512),
    Scenario("random-100k-128", 100_000, 128),
    Scenario("real-minilm-20k-384", 20_000, 384, real=True),
)


@dataclass(frozen=True)
class Prepared:
    """A scenario's table (the snapshot schema), its float32 matrix and its export file."""

    scenario: Scenario
    table: pa.Table
    matrix: np.ndarray
    export: Path


def real_data_note() -> str | None:
    """Where the real embeddings come from, or None when the file is absent."""
    if REAL_DATA.is_file():
        return f"real embeddings: {REAL_DATA.resolve()} (present beside the repository)"
    return None


def check_real_data() -> None:
    if not REAL_DATA.is_file():
        raise SystemExit(
            f"bench: real embeddings not found at {REAL_DATA.resolve()} — the "
            f"real-minilm-20k-384 scenario needs them (or pick another with --scenario)"
        )


def prepare(scenario: Scenario, workdir: Path) -> Prepared:
    """Build the scenario's table and its Parquet export (written like an akisnap part)."""
    if scenario.real:
        check_real_data()
        table = pq.read_table(REAL_DATA).cast(snapshot_schema(scenario.dim))
        if table.num_rows != scenario.rows:
            raise SystemExit(f"bench: {REAL_DATA} has {table.num_rows} rows, expected 20000")
        export = REAL_DATA.resolve()
    else:
        table = random_table(scenario.rows, scenario.dim, seed=scenario.rows * 7 + scenario.dim)
        export = workdir / f"export-{scenario.name}.parquet"
        pq.write_table(table, export, **writer_options("zstd"))
    flat = table.column("vector").combine_chunks().flatten().to_numpy()
    matrix = np.ascontiguousarray(flat, dtype=np.float32).reshape(scenario.rows, scenario.dim)
    return Prepared(scenario, table, matrix, export)


def random_table(rows: int, dim: int, *, seed: int) -> pa.Table:
    """Unit-normal float32 vectors, L2-normalised, random UUIDv4 ids, no metadata."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    raw = rng.integers(0, 256, size=(rows, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    ids = pa.FixedSizeBinaryArray.from_buffers(ID_TYPE, rows, [None, pa.py_buffer(raw.tobytes())])
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
    stamps = pa.array(np.full(rows, FIXED_TIME_US, dtype=np.int64)).cast(TIMESTAMP_TYPE)
    columns = [ids, pa.nulls(rows, pa.string()), vectors, pa.nulls(rows, pa.string()), stamps]
    return pa.Table.from_arrays(columns, schema=snapshot_schema(dim))
