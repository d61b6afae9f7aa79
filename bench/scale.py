"""Whole-process scenarios: `akisnap snapshots create|restore` vs bare pyarrow (and Lance),
each a fresh process, timed from exec to exit, with its peak RSS.

The export (random unit-normal vectors, 16-byte ids, akisnap's writer settings) is written
once per scenario; each timed run writes to a fresh path, removed afterwards, untimed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.exports import (
    export_vectors,
    vectors_equal,
    write_one_group_export,
    write_random_export,
)
from bench.procs import GIB, MIB, ProcessRun, akisnap_exe, bare_command, check_disk, run_measured
from handlers.catalog import Catalog
from handlers.stores import open_store

MB = 1_000_000
COLLECTION = "bench"
AKISNAP_CREATE = "akisnap snapshots create"
AKISNAP_RESTORE_PARQUET = "akisnap snapshots restore → .parquet"
AKISNAP_RESTORE_NPY = "akisnap snapshots restore → .npy"
BARE_CREATE = "bare pq: read_table export + write_table zstd+BSS"
BARE_RESTORE_PARQUET = "bare pq: read_table + write_table .parquet"
BARE_RESTORE_NPY = "bare pq: read_table + np.save .npy"
LANCE_WRITE = "Lance: read_table export + write_dataset"
AKISNAP_STARTUP = "startup only: akisnap --version"
BARE_STARTUP = "startup only: python -c 'import pyarrow.parquet'"


@dataclass(frozen=True)
class ScaleScenario:
    name: str
    rows: int
    dim: int
    restore: bool  # also time restores (and Lance); else create only
    one_row_group: bool = False  # the export is one row group (as pandas writes them)

    @property
    def raw_bytes(self) -> int:
        return self.rows * self.dim * 4

    @property
    def description(self) -> str:
        kind = "create and restore" if self.restore else "create"
        layout = ", the export ONE row group" if self.one_row_group else ""
        return (
            f"{self.rows:,} × {self.dim} random unit-normal vectors{layout}, whole-process {kind}"
        )


PROCESS_200K = ScaleScenario("process-200k-768", 200_000, 768, restore=True)
PROCESS_1M = ScaleScenario("process-1m-768", 1_000_000, 768, restore=False)
PROCESS_200K_ONE_GROUP = ScaleScenario(
    "process-200k-768-one-row-group", 200_000, 768, restore=False, one_row_group=True
)
QUICK_ROWS_DIVISOR = 10  # --quick: a tenth of the rows


@dataclass
class ProcessOp:
    label: str
    bare: str  # the label this one is compared with ("" for none)
    command: Callable[[int], list[str]]
    after: Callable[[ProcessRun], None] = lambda run: None
    runs: list[ProcessRun] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def peak_rss(self) -> int:
        return max(run.peak_rss for run in self.runs)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(run.cpu_seconds for run in self.runs)


@dataclass(frozen=True)
class ScaleResult:
    scenario: ScaleScenario
    ops: dict[str, ProcessOp]

    def ratio(self, label: str, against: str | None = None) -> float:
        return self.ops[label].seconds / self.ops[against or self.ops[label].bare].seconds


def run_scale(
    scenario: ScaleScenario, repeats: int, base: Path | None, *, quick: bool
) -> ScaleResult | None:
    if quick:
        scenario = ScaleScenario(
            scenario.name + "-quick",
            scenario.rows // QUICK_ROWS_DIVISOR,
            scenario.dim,
            scenario.restore,
            scenario.one_row_group,
        )
    print()
    print(f"== {scenario.name}: {scenario.description} ==")
    where = base or Path(tempfile.gettempdir())
    copies = 7 if scenario.restore else 4  # export, fixtures, outputs, Lance
    if not check_disk(where, scenario.raw_bytes * copies, scenario.name):
        return None
    with tempfile.TemporaryDirectory(prefix="akisnap-bench-scale-", dir=base) as temp:
        run = _ScaleRun(scenario, Path(temp))
        ops = run.operations()
        for _ in range(repeats):
            for op in ops:
                result = run_measured(op.command(len(op.runs)))
                op.after(result)
                op.runs.append(result)
        by_label = {op.label: op for op in ops}
        print_scale(scenario, ops, repeats, run.notes)
    return ScaleResult(scenario, by_label)


class _ScaleRun:
    """The scenario's work directory, export, fixtures and operations."""

    def __init__(self, scenario: ScaleScenario, work: Path) -> None:
        self.scenario = scenario
        self.work = work
        self.store_uri = (work / "store").as_uri()
        self.notes: list[str] = []
        write = write_one_group_export if scenario.one_row_group else write_random_export
        self.export = write(
            work / "export.parquet", scenario.rows, scenario.dim, seed=scenario.rows + 7
        )
        size = self.export.stat().st_size
        groups = "one row group" if scenario.one_row_group else "~32 MiB row groups"
        self.notes.append(
            f"export: {size / MB:.0f} MB Parquet (zstd+BSS, {groups}), "
            f"raw float32 {scenario.raw_bytes / MB:.0f} MB"
        )
        self.fixture_id = ""
        self.bare_fixture = work / "bare-fixture.parquet"
        if scenario.restore:
            self._make_fixtures()

    def _make_fixtures(self) -> None:
        """Untimed: one akisnap snapshot and one bare file to restore from, and a check that
        the snapshot restores bit for bit (a benchmark of wrong output would be worthless)."""
        made = run_measured(self._create_command("bench-fixture"))
        meta = json.loads(made.stdout)
        self.fixture_id = meta["snapshot_id"]
        self.notes.append(
            f"akisnap snapshot: {len(meta['parts'])} part(s), "
            f"{sum(part['size'] for part in meta['parts']) / MB:.0f} MB"
        )
        run_measured(bare_command("create", str(self.export), str(self.bare_fixture)))
        check = self.work / "check.npy"
        run_measured(self._restore_command(check))
        if not vectors_equal(check, export_vectors(self.export)):
            raise SystemExit("bench: akisnap restore → .npy differs from the export's vectors")
        check.unlink()

    def operations(self) -> list[ProcessOp]:
        work, export = self.work, str(self.export)
        ops = [
            ProcessOp(
                AKISNAP_CREATE,
                BARE_CREATE,
                lambda n: self._create_command(f"bench-run-{n}"),
                self._delete_created,
            ),
            ProcessOp(
                BARE_CREATE,
                "",
                lambda n: bare_command("create", export, str(work / "bare-out.parquet")),
                lambda run: (work / "bare-out.parquet").unlink(),
            ),
        ]
        if not self.scenario.restore:
            return ops
        for suffix, akisnap_label, bare_label in (
            (".parquet", AKISNAP_RESTORE_PARQUET, BARE_RESTORE_PARQUET),
            (".npy", AKISNAP_RESTORE_NPY, BARE_RESTORE_NPY),
        ):
            out = work / f"restored{suffix}"
            bare_out = work / f"bare-restored{suffix}"
            ops += [
                ProcessOp(
                    akisnap_label,
                    bare_label,
                    lambda n, out=out: self._restore_command(out),
                    lambda run, out=out: out.unlink(),
                ),
                ProcessOp(
                    bare_label,
                    "",
                    lambda n, bare_out=bare_out: bare_command(
                        "restore", str(self.bare_fixture), str(bare_out)
                    ),
                    lambda run, bare_out=bare_out: bare_out.unlink(),
                ),
            ]
        lance_out = work / "out.lance"
        ops += [
            ProcessOp(
                LANCE_WRITE,
                BARE_CREATE,
                lambda n: bare_command("lance", export, str(lance_out)),
                lambda run: shutil.rmtree(lance_out),
            ),
            ProcessOp(AKISNAP_STARTUP, BARE_STARTUP, lambda n: [akisnap_exe(), "--version"]),
            ProcessOp(BARE_STARTUP, "", lambda n: [sys.executable, "-c", "import pyarrow.parquet"]),
        ]
        return ops

    def _create_command(self, request_id: str) -> list[str]:
        return [
            akisnap_exe(), "snapshots", "create", "--collection", COLLECTION,
            "--from", self.export.as_uri(), "--store", self.store_uri,
            "--request-id", request_id, "--json",
        ]  # fmt: skip

    def _restore_command(self, out: Path) -> list[str]:
        return [
            akisnap_exe(), "snapshots", "restore", self.fixture_id,
            "--out", str(out), "--store", self.store_uri, "--json",
        ]  # fmt: skip

    def _delete_created(self, run: ProcessRun) -> None:
        snapshot_id = json.loads(run.stdout)["snapshot_id"]

        async def delete() -> None:
            store = open_store(self.store_uri)
            try:
                await Catalog(store).delete(snapshot_id, COLLECTION)
            finally:
                await store.close()

        asyncio.run(delete())


def print_scale(
    scenario: ScaleScenario, ops: list[ProcessOp], repeats: int, notes: list[str]
) -> None:
    by_label = {op.label: op for op in ops}
    print(f"   raw float32 {scenario.raw_bytes / MB:.1f} MB; median of {repeats} run(s) each")
    print(
        f"{'operation (one process each)':<50} {'median s':>9} {'MB/s':>7} {'× bare':>8} "
        f"{'min–max s':>12} {'peak RSS':>10} {'cpu s':>7}"
    )
    for op in ops:
        startup = op.label.startswith("startup")
        rate = f"{scenario.raw_bytes / MB / op.seconds:.0f}" if not startup else "–"
        ratio = f"{op.seconds / by_label[op.bare].seconds:.2f}×" if op.bare else "1.00×"
        spread = f"{min(r.seconds for r in op.runs):.2f}–{max(r.seconds for r in op.runs):.2f}"
        print(
            f"{op.label:<50} {op.seconds:>9.2f} {rate:>7} {ratio:>8} {spread:>12} "
            f"{op.peak_rss / MIB:>6.0f} MiB {op.cpu_seconds:>7.1f}"
        )
    print("   wall time from exec to exit (interpreter start and imports included); peak RSS =")
    print("   the kernel's high-water mark for the process (wait4 ru_maxrss), max over runs;")
    print("   × bare = vs the bare pyarrow script doing the same work (Lance: vs bare create;")
    print("   startup: interpreter + imports, no work: what every akisnap process pays first).")
    for note in notes:
        print(f"   note: {note}")


__all__ = [
    "GIB",
    "PROCESS_1M",
    "PROCESS_200K",
    "PROCESS_200K_ONE_GROUP",
    "ScaleResult",
    "run_scale",
]
