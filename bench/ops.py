"""The timed operations of one scenario: akisnap, bare pyarrow, NumPy and Lance.

Each operation's inputs are made once, untimed (a committed snapshot to restore, files to
read); each timed run writes to a fresh path, which is removed afterwards, untimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.scenarios import Prepared
from handlers.codecs.parquet import writer_options
from handlers.create import SnapshotCreator
from handlers.hashing import sha256_file
from handlers.job import SnapshotJob, UriSource
from handlers.metadata import SnapshotMetadata
from handlers.restore import restore_snapshot
from handlers.stores import open_store

COLLECTION = "bench"
WRITE, READ = "write", "read"
READ_WRITE_SHA = "pq read export + write + SHA-256 (issue 14)"


@dataclass
class Operation:
    """One measured operation; ``kind`` says which bare-pyarrow figure it is compared with."""

    label: str
    kind: str
    run: Callable[[], None]
    cleanup: Callable[[], None] = lambda: None
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)


class ScenarioBench:
    """Owns a scenario's work directory, store, event loop and fixtures."""

    def __init__(self, prepared: Prepared, workdir: Path) -> None:
        self.prepared = prepared
        self.workdir = workdir
        self.table = prepared.table
        self.matrix = prepared.matrix
        self.loop = asyncio.Runner()
        self.store = open_store(workdir.joinpath("store").as_uri())
        self.creator = SnapshotCreator(
            self.store, source_roots=[str(prepared.export.parent), str(workdir)]
        )
        self.stage_seconds: dict[str, list[float]] = {}
        self.lance_note = ""
        self._runs = 0
        self._created: SnapshotMetadata | None = None
        self.fixture = self._create("bench-fixture")
        self.pq_fixture = workdir / "fixture-zstd.parquet"
        pq.write_table(self.table, self.pq_fixture, **writer_options("zstd"))
        self.npy_fixture = workdir / "fixture.npy"
        np.save(self.npy_fixture, self.matrix)
        self.lance_table = self.table
        self.lance_fixture = workdir / "fixture.lance"
        self._make_lance_fixture()

    def close(self) -> None:
        self.loop.close()

    # -- the operations ----------------------------------------------------------------------

    def operations(self) -> list[Operation]:
        work = self.workdir
        zstd = writer_options("zstd")
        export = self.prepared.export
        return [
            Operation(
                "akisnap create (read export+encode+store+verify)",
                WRITE,
                self.create_once,
                self.delete_created,
            ),
            Operation(
                "akisnap restore → .parquet",
                READ,
                lambda: self._restore(work / "out.parquet"),
                (work / "out.parquet").unlink,
            ),
            Operation(
                "akisnap restore → .npy",
                READ,
                lambda: self._restore(work / "out.npy"),
                (work / "out.npy").unlink,
            ),
            Operation(
                "pq.write_table zstd+BSS (akisnap settings)",
                WRITE,
                lambda: pq.write_table(self.table, work / "w-zstd.parquet", **zstd),
                (work / "w-zstd.parquet").unlink,
            ),
            Operation(
                "pq.write_table defaults (snappy)",
                WRITE,
                lambda: pq.write_table(self.table, work / "w-snappy.parquet"),
                (work / "w-snappy.parquet").unlink,
            ),
            Operation("pq.read_table (zstd+BSS file)", READ, lambda: _read(self.pq_fixture)),
            Operation(
                "pq read export + write zstd+BSS (create's like)",
                WRITE,
                lambda: pq.write_table(pq.read_table(export), work / "w-rw.parquet", **zstd),
                (work / "w-rw.parquet").unlink,
            ),
            Operation(
                READ_WRITE_SHA,
                WRITE,
                lambda: _read_write_hash(export, work / "w-rws.parquet"),
                (work / "w-rws.parquet").unlink,
            ),
            Operation(
                "pq.read_table + np.save (restore→.npy's like)",
                READ,
                lambda: np.save(work / "w-rn.npy", _vectors(pq.read_table(self.pq_fixture))),
                (work / "w-rn.npy").unlink,
            ),
            Operation(
                "np.save float32 matrix",
                WRITE,
                lambda: np.save(work / "w.npy", self.matrix),
                (work / "w.npy").unlink,
            ),
            Operation("np.load float32 matrix", READ, lambda: _np_load(self.npy_fixture)),
            Operation(
                "lance.write_dataset",
                WRITE,
                lambda: _lance_write(self.lance_table, work / "w.lance"),
                lambda: shutil.rmtree(work / "w.lance"),
            ),
            Operation("lance.dataset().to_table()", READ, lambda: _lance_read(self.lance_fixture)),
        ]

    def create_once(self) -> None:
        self._runs += 1
        self._created = self._create(f"bench-run-{self._runs}")

    def delete_created(self) -> None:
        if self._created is not None:
            self.loop.run(self.creator.catalog.delete(self._created.snapshot_id, COLLECTION))
            self._created = None

    def check_round_trip(self) -> None:
        """Untimed: the fixture snapshot restores bit for bit (a benchmark of wrong output
        would be worthless)."""
        out = self.workdir / "check.npy"
        self._restore(out)
        restored = np.load(out)
        out.unlink()
        if restored.shape != self.matrix.shape or restored.tobytes() != self.matrix.tobytes():
            raise SystemExit("bench: restored vectors differ from the input")

    # -- helpers -------------------------------------------------------------------------------

    def _create(self, request_id: str) -> SnapshotMetadata:
        job = SnapshotJob(
            COLLECTION, request_id, UriSource(self.prepared.export.as_uri(), "parquet")
        )
        outcome = self.loop.run(self.creator(job))
        if request_id != "bench-fixture":
            for stage, seconds in outcome.stage_seconds.items():
                self.stage_seconds.setdefault(stage, []).append(seconds)
        return outcome.metadata

    def _restore(self, out: Path) -> None:
        result = self.loop.run(restore_snapshot(self.store, self.fixture, out))
        if result.rows != self.prepared.scenario.rows:
            raise SystemExit(f"bench: restore gave {result.rows} rows")

    def _make_lance_fixture(self) -> None:
        try:
            _lance_write(self.table, self.lance_fixture)
        except Exception as exc:  # Lance's errors have no common base class
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.lance_fixture)
            ids = self.table.column("document_id").cast(pa.binary())
            index = self.table.schema.get_field_index("document_id")
            self.lance_table = self.table.set_column(index, "document_id", ids)
            self.lance_note = (
                f"Lance refused fixed_size_binary(16) ids ({type(exc).__name__}); "
                "document_id was cast to binary for Lance"
            )
            _lance_write(self.lance_table, self.lance_fixture)


def _read_write_hash(export: Path, out: Path) -> None:
    """What create does at its least: read the export, write it with akisnap's settings,
    hash the result (the part's SHA-256)."""
    pq.write_table(pq.read_table(export), out, **writer_options("zstd"))
    sha256_file(out)


def _read(path: Path) -> None:
    pq.read_table(path)


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column("vector").combine_chunks()
    values: np.ndarray = column.flatten().to_numpy()
    return values.reshape(len(column), column.type.list_size)


def _np_load(path: Path) -> None:
    np.load(path, allow_pickle=False)


def _lance_write(table: pa.Table, path: Path) -> None:
    import lance

    lance.write_dataset(table, str(path))


def _lance_read(path: Path) -> Any:
    import lance

    return lance.dataset(str(path)).to_table()
