"""The scale targets (issue 7), met or not, with figures."""

from __future__ import annotations

from collections.abc import Callable

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
# issue 14's targets for the daemon
SMALL_VS_BARE_TARGET = 0.8
SMALL_RATE_TARGET = 36.0  # 2× the 18 req/s measured before issue 14
SMALL_CPU_TARGET_MS = 15.0
LARGE_VS_PIPELINE_TARGET = 0.8


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
        elif result.scenario.one_row_group:
            ratio = result.ratio(AKISNAP_CREATE)
            line(f"{name}: create ≤ 1.0× bare pyarrow (process)", f"{ratio:.2f}×", ratio <= 1.0)
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
        print_daemon_targets(daemon, line, info)
    if not scale and daemon is None:
        print("   (no scale scenario ran)")
    return all_met, checked


def print_daemon_targets(
    daemon: DaemonResult,
    line: Callable[[str, str, bool], None],
    info: Callable[[str, str], None],
) -> None:
    small = daemon.small_ratio
    line(f"daemon small ≥ {SMALL_VS_BARE_TARGET}× bare (same 3 S3 calls)", f"{small:.2f}×",
         small >= SMALL_VS_BARE_TARGET)  # fmt: skip
    rate = daemon.small_per_second
    line(f"daemon small ≥ {SMALL_RATE_TARGET:.0f} req/s (2× before)", f"{rate:.1f}/s",
         rate >= SMALL_RATE_TARGET)  # fmt: skip
    cpu = daemon.small.cpu_per_request * 1000
    line(f"daemon CPU per small request ≤ {SMALL_CPU_TARGET_MS:.0f} ms", f"{cpu:.1f} ms",
         cpu <= SMALL_CPU_TARGET_MS)  # fmt: skip
    large = daemon.pipeline_ratio
    line(f"daemon large ≥ {LARGE_VS_PIPELINE_TARGET}× bare encode+upload pipeline",
         f"{large:.2f}×", large >= LARGE_VS_PIPELINE_TARGET)  # fmt: skip
    info("  (daemon vs bare pipeline, raw MB/s)",
         f"{daemon.large_mb_per_second:.0f} vs {daemon.pipeline_mb_per_second:.0f}")  # fmt: skip
    rss = daemon.daemon_peak_rss
    line("daemon peak RSS ≤ 1 GiB (5 large queued)", f"{rss / MIB:.0f} MiB", rss <= RSS_TARGET)
