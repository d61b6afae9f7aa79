"""The scale targets (issue 7), met or not, with figures."""

from __future__ import annotations

from bench.daemon_e2e import DaemonResult
from bench.procs import GIB, MIB
from bench.scale import (
    AKISNAP_CREATE,
    AKISNAP_RESTORE_NPY,
    AKISNAP_RESTORE_PARQUET,
    LANCE_WRITE,
    ScaleResult,
)

PROCESS_TARGET = 1.3
RSS_TARGET = GIB
DAEMON_PUT_TARGET = 0.7
SMALL_RATE_TARGET = 200.0


def print_scale_targets(scale: list[ScaleResult], daemon: DaemonResult | None) -> tuple[bool, int]:
    """Prints the block; (all met, how many targets were checked)."""
    print()
    print("== targets: scale (issue 7) ==")
    checked = 0
    all_met = True

    def line(title: str, value: str, ok: bool) -> None:
        nonlocal checked, all_met
        checked += 1
        all_met = all_met and ok
        print(f"{title:<68} {value:>14} {'met' if ok else 'NOT MET':>8}")

    def info(title: str, value: str) -> None:
        print(f"{title:<68} {value:>14}")

    for result in scale:
        name = result.scenario.name
        ops = result.ops
        if AKISNAP_RESTORE_NPY in ops:
            for label in (AKISNAP_CREATE, AKISNAP_RESTORE_PARQUET, AKISNAP_RESTORE_NPY):
                ratio = result.ratio(label)
                verb = label.removeprefix("akisnap snapshots ")
                line(
                    f"{name}: {verb} ≤ {PROCESS_TARGET}× bare pyarrow (process)",
                    f"{ratio:.2f}×",
                    ratio <= PROCESS_TARGET,
                )
            lance = result.ratio(AKISNAP_CREATE, LANCE_WRITE)
            line(f"{name}: create faster than Lance write (process)", f"{lance:.2f}×", lance < 1)
        else:
            ratio = result.ratio(AKISNAP_CREATE)
            info(f"{name}: create ÷ bare pyarrow (process; no target)", f"{ratio:.2f}×")
        rss = ops[AKISNAP_CREATE].peak_rss
        line(f"{name}: create peak RSS < 1 GiB", f"{rss / MIB:.0f} MiB", rss < RSS_TARGET)
        for label in (AKISNAP_RESTORE_PARQUET, AKISNAP_RESTORE_NPY):
            if label in ops:
                verb = label.removeprefix("akisnap snapshots ")
                info(f"  info: {verb} peak RSS", f"{ops[label].peak_rss / MIB:.0f} MiB")
        bare = ops[ops[AKISNAP_CREATE].bare]
        info("  info: bare pyarrow create peak RSS", f"{bare.peak_rss / MIB:.0f} MiB")
    if daemon is not None:
        line(
            f"daemon: large snapshots ≥ {DAEMON_PUT_TARGET}× bare PUT MB/s",
            f"{daemon.large_ratio:.2f}×",
            daemon.large_ratio >= DAEMON_PUT_TARGET,
        )
        info(
            "  (daemon MB/s raw vs bare PUT MB/s)",
            f"{daemon.large_mb_per_second:.0f} vs {daemon.bare_mb_per_second:.0f}",
        )
        rate = daemon.small_per_second
        line(
            f"daemon: ≥ {SMALL_RATE_TARGET:.0f} small requests per second",
            f"{rate:.1f}/s",
            rate >= SMALL_RATE_TARGET,
        )
        info("  (this S3 server's ceiling: bare S3 calls)", f"{daemon.bare_small_per_second:.0f}/s")
    if not scale and daemon is None:
        print("   (no scale scenario ran)")
    return all_met, checked
