"""Big random exports, written a row group at a time (the bench never holds a whole one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.scenarios import random_table
from handlers.codecs.parquet import DEFAULT_ROW_GROUP_BYTES, writer_options
from handlers.model import snapshot_schema


def write_random_export(path: Path, rows: int, dim: int, *, seed: int) -> Path:
    """A Parquet export of ``rows`` unit-normal float32 vectors (16-byte UUID ids), written
    with akisnap's writer settings in row groups of akisnap's size (~32 MiB raw)."""
    step = max(1, DEFAULT_ROW_GROUP_BYTES // (dim * 4 + 16))
    with pq.ParquetWriter(path, snapshot_schema(dim), **writer_options("zstd")) as writer:
        for number, start in enumerate(range(0, rows, step)):
            chunk = random_table(min(step, rows - start), dim, seed=seed * 1_000_003 + number)
            writer.write_table(chunk, row_group_size=step)
    return path


def write_one_group_export(path: Path, rows: int, dim: int, *, seed: int) -> Path:
    """The same kind of export as one row group, as pandas and many exporters write them
    (made in memory once, untimed: the bench process holds the whole table here)."""
    table = random_table(rows, dim, seed=seed)
    pq.write_table(table, path, row_group_size=rows, **writer_options("zstd"))
    return path


def export_vectors(path: Path) -> np.ndarray:
    """The export's vectors as one float32 matrix (for the untimed round-trip check)."""
    column = pq.read_table(path, columns=["vector"]).column("vector").combine_chunks()
    values: np.ndarray = column.flatten().to_numpy()
    return values.reshape(len(column), column.type.list_size)


def vectors_equal(path: Path, expected: np.ndarray) -> bool:
    """Bit for bit (compared as uint32, so -0.0 is not 0.0)."""
    restored = np.load(path, mmap_mode="r")
    if restored.shape != expected.shape or restored.dtype != np.float32:
        return False
    return bool(np.array_equal(restored.view(np.uint32), expected.view(np.uint32)))
