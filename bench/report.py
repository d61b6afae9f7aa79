"""Readable tables: timings per scenario, sizes per scenario, and the targets block."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.ops import READ, READ_WRITE_SHA, WRITE, Operation
from bench.scenarios import Scenario
from bench.sizes import Sizes

MB = 1_000_000
CREATE_TARGET = 1.3
RESTORE_TARGET = 1.2
SIZE_TARGET = 0.02
JSON_TARGET = 2.0
CREATE_VS_READ_WRITE_SHA = 1.2  # issue 14
BARE_WRITE = "pq.write_table zstd+BSS (akisnap settings)"
BARE_READ = "pq.read_table (zstd+BSS file)"


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    medians: dict[str, float]
    cpu_medians: dict[str, float]
    sizes: Sizes

    def ratio(self, label: str) -> float:
        return self.medians[label] / self.medians[_bare_for(label)]

    def cpu_ratio(self, label: str) -> float:
        return self.cpu_medians[label] / self.cpu_medians[_bare_for(label)]


def _bare_for(label: str) -> str:
    return BARE_WRITE if label.startswith("akisnap create") else BARE_READ


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_timings(
    scenario: Scenario,
    operations: list[Operation],
    stage_seconds: dict[str, list[float]],
    repeats: int,
    notes: list[str],
) -> tuple[dict[str, float], dict[str, float]]:
    medians = {op.label: median(op.seconds) for op in operations}
    cpu = {op.label: median(op.cpu_seconds) for op in operations}
    bare = {WRITE: medians[BARE_WRITE], READ: medians[BARE_READ]}
    print()
    print(f"== {scenario.name}: {scenario.description} ==")
    print(f"   raw float32 {scenario.raw_bytes / MB:.1f} MB; median of {repeats} run(s)")
    print(
        f"{'operation':<50} {'median s':>9} {'MB/s':>7} {'× bare pq':>10} "
        f"{'min–max s':>12} {'cpu s':>7}"
    )
    for op in operations:
        seconds = medians[op.label]
        rate = scenario.raw_bytes / MB / seconds
        ratio = seconds / bare[op.kind]
        spread = f"{min(op.seconds):.2f}–{max(op.seconds):.2f}"
        print(
            f"{op.label:<50} {seconds:>9.3f} {rate:>7.0f} {ratio:>9.2f}× "
            f"{spread:>12} {cpu[op.label]:>7.3f}"
        )
        if op.label.startswith("akisnap create") and stage_seconds:
            stages = " · ".join(
                f"{stage} {median(values):.3f}" for stage, values in stage_seconds.items()
            )
            print(f"    stages (median s): {stages}")
    print("   MB/s = raw float32 MB per second; × bare pq = vs pq.write_table with akisnap's")
    print("   settings (writes) or pq.read_table (reads); cpu s = process CPU, all threads.")
    for note in notes:
        print(f"   note: {note}")
    return medians, cpu


def print_sizes(sizes: Sizes) -> None:
    json_label = "AkiDB 2.0 JSON format" + ("" if sizes.json_exact else " (est. from sample)")
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

    def info(title: str, cells: list[str]) -> None:
        print(f"{title:<44}" + "".join(f"{value:>{width}}" for value in cells))

    create = next(label for label in results[0].medians if label.startswith("akisnap create"))
    line(
        f"create ≤ {CREATE_TARGET}× pq.write_table (same settings)",
        [(f"{r.ratio(create):.2f}×", r.ratio(create) <= CREATE_TARGET) for r in results],
    )
    info("  (cpu-time ratio, for reference)", [f"{r.cpu_ratio(create):.2f}×" for r in results])
    for label in ("akisnap restore → .npy", "akisnap restore → .parquet"):
        line(
            f"{label[8:]} ≤ {RESTORE_TARGET}× pq.read_table",
            [(f"{r.ratio(label):.2f}×", r.ratio(label) <= RESTORE_TARGET) for r in results],
        )
        info("  (cpu-time ratio, for reference)", [f"{r.cpu_ratio(label):.2f}×" for r in results])
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
    yardstick = [r.medians[create] / r.medians[READ_WRITE_SHA] for r in results]
    line(
        f"create ≤ {CREATE_VS_READ_WRITE_SHA}× bare read export + write + SHA-256",
        [(f"{ratio:.2f}×", ratio <= CREATE_VS_READ_WRITE_SHA) for ratio in yardstick],
    )
    like_create = "pq read export + write zstd+BSS (create's like)"
    like_restore = "pq.read_table + np.save (restore→.npy's like)"
    info(
        "info: create ÷ (pq read export + write)",
        [f"{r.medians[create] / r.medians[like_create]:.2f}×" for r in results],
    )
    info(
        "info: restore→.npy ÷ (pq.read_table+np.save)",
        [f"{r.medians['akisnap restore → .npy'] / r.medians[like_restore]:.2f}×" for r in results],
    )
    print("   create also reads and decodes the export, which bare pq.write_table does not;")
    print("   restore → .parquet re-encodes (a read plus a write), restore → .npy writes raw.")
    return all_met
