"""Readable tables: timings per scenario, sizes per scenario, and the targets block."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.ops import READ, WRITE, Operation
from bench.scenarios import Scenario
from bench.sizes import Sizes

MB = 1_000_000
CREATE_TARGET = 1.3
RESTORE_TARGET = 1.2
SIZE_TARGET = 0.02
JSON_TARGET = 2.0
BARE_WRITE = "pq.write_table zstd+BSS (akisnap settings)"
BARE_READ = "pq.read_table (zstd+BSS file)"


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    medians: dict[str, float]
    sizes: Sizes

    def ratio(self, label: str) -> float:
        bare = BARE_WRITE if label.startswith("akisnap create") else BARE_READ
        return self.medians[label] / self.medians[bare]


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_timings(
    scenario: Scenario,
    operations: list[Operation],
    stage_seconds: dict[str, list[float]],
    repeats: int,
    notes: list[str],
) -> dict[str, float]:
    medians = {op.label: median(op.seconds) for op in operations}
    bare = {WRITE: medians[BARE_WRITE], READ: medians[BARE_READ]}
    print()
    print(f"== {scenario.name}: {scenario.description} ==")
    print(f"   raw float32 {scenario.raw_bytes / MB:.1f} MB; median of {repeats} run(s)")
    print(f"{'operation':<50} {'median s':>9} {'MB/s':>8} {'× bare pq':>10} {'min–max s':>14}")
    for op in operations:
        seconds = medians[op.label]
        rate = scenario.raw_bytes / MB / seconds
        ratio = seconds / bare[op.kind]
        spread = f"{min(op.seconds):.3f}–{max(op.seconds):.3f}"
        print(f"{op.label:<50} {seconds:>9.3f} {rate:>8.0f} {ratio:>9.2f}× {spread:>14}")
        if op.label.startswith("akisnap create") and stage_seconds:
            stages = " · ".join(
                f"{stage} {median(values):.3f}" for stage, values in stage_seconds.items()
            )
            print(f"    stages (median s): {stages}")
    print("   MB/s = raw float32 MB per second; × bare pq = vs pq.write_table with akisnap's")
    print("   settings (writes) or pq.read_table (reads).")
    for note in notes:
        print(f"   note: {note}")
    return medians


def print_sizes(sizes: Sizes) -> None:
    json_label = "legacy JSON format" + ("" if sizes.json_exact else " (est. from sample)")
    rows = [
        ("akisnap snapshot", sizes.akisnap),
        ("raw float32 (rows×dim×4)", sizes.raw),
        (json_label, sizes.json),
        ("np.save .npy", sizes.npy),
        ("Lance dataset", sizes.lance),
        ("pyarrow zstd+BSS (akisnap settings)", sizes.pq_akisnap_settings),
        ("pyarrow zstd only", sizes.pq_zstd_only),
        ("pyarrow defaults (snappy)", sizes.pq_snappy),
        (f"best pyarrow setting ({sizes.best_name})", sizes.best),
    ]
    print(f"{'size':<50} {'bytes':>13} {'MB':>8} {'size/raw':>9} {'JSON/size':>10}")
    for label, size in rows:
        print(
            f"{label:<50} {size:>13,} {size / MB:>8.2f} {size / sizes.raw:>9.3f} "
            f"{sizes.json / size:>9.2f}×"
        )
    sweep = ", ".join(f"{name} {size / MB:.3f}" for name, size in sizes.sweep.items())
    print(f"   pyarrow sweep (MB): {sweep}")


def print_targets(results: list[ScenarioResult]) -> bool:
    """The issue's targets, met or not, with figures. True when every one is met."""
    width = max(24, *(len(r.scenario.name) + 2 for r in results))
    print()
    print("== targets ==")
    print(f"{'target':<44}" + "".join(f"{r.scenario.name:>{width}}" for r in results))
    all_met = True

    def line(title: str, cells: list[tuple[str, bool]]) -> None:
        nonlocal all_met
        text = "".join(f"{value + (' met' if ok else ' NOT MET'):>{width}}" for value, ok in cells)
        print(f"{title:<44}{text}")
        all_met = all_met and all(ok for _, ok in cells)

    create = next(label for label in results[0].medians if label.startswith("akisnap create"))
    line(
        f"create ≤ {CREATE_TARGET}× pq.write_table (same settings)",
        [(f"{r.ratio(create):.2f}×", r.ratio(create) <= CREATE_TARGET) for r in results],
    )
    for label in ("akisnap restore → .npy", "akisnap restore → .parquet"):
        line(
            f"{label[8:]} ≤ {RESTORE_TARGET}× pq.read_table",
            [(f"{r.ratio(label):.2f}×", r.ratio(label) <= RESTORE_TARGET) for r in results],
        )
    line(
        f"size within {SIZE_TARGET:.0%} of best pyarrow",
        [
            (
                f"{(r.sizes.akisnap / r.sizes.best - 1) * 100:+.2f}%",
                r.sizes.akisnap <= r.sizes.best * (1 + SIZE_TARGET),
            )
            for r in results
        ],
    )
    line(
        f"≥ {JSON_TARGET:.0f}× smaller than JSON",
        [
            (
                f"{r.sizes.json / r.sizes.akisnap:.2f}×",
                r.sizes.json >= JSON_TARGET * r.sizes.akisnap,
            )
            for r in results
        ],
    )
    print("   restore → .parquet re-encodes a zstd+BSS file, so it costs a read plus a write;")
    print("   restore → .npy is the like-for-like of pq.read_table (decode + a raw write).")
    return all_met
