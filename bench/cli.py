"""``python -m bench``: every scenario, every operation, N rounds, medians and targets.

Three groups, all run by default (``make bench``), or picked with selectors (combinable):
``--seed`` (the seed's in-process scenarios), ``--scale`` (whole-process create/restore of
200k × 768 and create of 1M × 768, with peak RSS), ``--daemon`` (`akisnap run` end to end with
the real broker and S3 server), ``--delta`` (delta snapshots against full ones, 1M × 768),
``--partial`` (restore of 1,000 ids against a full restore, 1M × 768);
``--scenario NAME`` picks single scenarios of any group.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.daemon_e2e import DaemonPlan, DaemonResult, run_daemon_bench
from bench.delta import DEFAULT_DIM as DELTA_DIM
from bench.delta import DEFAULT_ROUNDS as DELTA_ROUNDS
from bench.delta import DEFAULT_ROWS as DELTA_ROWS
from bench.delta import run_delta_bench
from bench.ops import ScenarioBench
from bench.partial_restore import DEFAULT_DIM as PARTIAL_DIM
from bench.partial_restore import DEFAULT_ROUNDS as PARTIAL_ROUNDS
from bench.partial_restore import DEFAULT_ROWS as PARTIAL_ROWS
from bench.partial_restore import run_partial_bench
from bench.procs import REPO_ROOT
from bench.report import ScenarioResult, print_sizes, print_targets, print_timings
from bench.report_scale import print_scale_targets
from bench.scale import PROCESS_1M, PROCESS_200K, PROCESS_200K_ONE_GROUP, ScaleResult, run_scale
from bench.scenarios import (
    REAL_DATA,
    SCENARIOS,
    Scenario,
    check_real_data,
    prepare,
    real_data_note,
)
from bench.sizes import measure_sizes

DEFAULT_REPEATS = 5
SCALE_REPEATS = 3
HUGE_REPEATS = 1
DAEMON = "daemon-e2e"
DELTA = "delta"
DELTA_QUICK_ROWS = 20_000
PARTIAL = "partial-restore"
SEED_NAMES = [s.name for s in SCENARIOS]
SCALE_NAMES = [PROCESS_200K.name, PROCESS_200K_ONE_GROUP.name, PROCESS_1M.name]
ALL_NAMES = [*SEED_NAMES, *SCALE_NAMES, DAEMON, DELTA, PARTIAL]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="akisnap create/restore vs bare pyarrow, NumPy and Lance (medians).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, no warm-up, JSON size estimated"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=ALL_NAMES,
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument("--seed", action="store_true", help="the seed's in-process scenarios")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="whole-process akisnap vs bare pyarrow: 200k×768 create/restore, 1M×768 create",
    )
    parser.add_argument(
        "--daemon", action="store_true", help="`akisnap run` end to end (needs `make services`)"
    )
    parser.add_argument(
        "--delta",
        action="store_true",
        help=f"delta snapshots vs full ones, {DELTA_ROWS:,} × {DELTA_DIM} (bench/delta.py)",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help=f"restore of 1,000 ids vs a full one, {PARTIAL_ROWS:,} × {PARTIAL_DIM} "
        "(bench/partial_restore.py)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"timed rounds per operation (default {DEFAULT_REPEATS} for the seed scenarios, "
        f"{SCALE_REPEATS} for 200k×768, {HUGE_REPEATS} for 1M×768; the daemon runs once)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where temporary files go (default: the system temp dir)"
    )
    return parser.parse_args(argv)


def code_state() -> str:
    """The commit measured, and whether handlers/ or daemon/ differ from it."""
    import subprocess

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                check=False,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "handlers", "daemon").splitlines()
    return f"git {commit}" + (
        f" + {len(changed)} uncommitted file(s) in handlers/ daemon/" if changed else ""
    )


def chosen_names(args: argparse.Namespace) -> list[str]:
    names = set(args.scenario or [])
    if args.seed:
        names.update(SEED_NAMES)
    if args.scale:
        names.update(SCALE_NAMES)
    if args.daemon:
        names.add(DAEMON)
    if args.delta:
        names.add(DELTA)
    if args.partial:
        names.add(PARTIAL)
    return [name for name in ALL_NAMES if not names or name in names]


def run_snapshot_kinds(names: list[str], args: argparse.Namespace) -> bool:
    """Issue 16's benches (delta snapshots, partial restore); True when their targets are met."""
    met = True
    if DELTA in names:
        rows = DELTA_QUICK_ROWS if args.quick else DELTA_ROWS
        rounds = args.repeat or (1 if args.quick else DELTA_ROUNDS)
        met = run_delta_bench(rows, DELTA_DIM, rounds, args.workdir) and met
    if PARTIAL in names:
        rows = DELTA_QUICK_ROWS if args.quick else PARTIAL_ROWS
        rounds = args.repeat or (1 if args.quick else PARTIAL_ROUNDS)
        met = run_partial_bench(rows, PARTIAL_DIM, rounds, args.workdir) and met
    return met


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        raise SystemExit("bench: --repeat must be at least 1")
    repeats = args.repeat or (1 if args.quick else DEFAULT_REPEATS)
    names = chosen_names(args)
    chosen = [s for s in SCENARIOS if s.name in names]
    if any(s.real for s in chosen):
        note = real_data_note()
        if note is None and args.scenario:
            check_real_data()  # asked for by name: refuse rather than skip
        if note is None:
            skipped = {s.name for s in chosen if s.real}
            chosen = [s for s in chosen if not s.real]
            names = [name for name in names if name not in skipped]
            note = f"skipped {', '.join(sorted(skipped))}: {REAL_DATA.resolve()} is not present"
        print(f"bench: {note}")
    import lance

    started = time.perf_counter()
    print(
        f"akisnap bench — python {sys.version.split()[0]}, pyarrow {pa.__version__}, "
        f"numpy {np.__version__}, lance {lance.__version__}, {os.cpu_count()} CPUs"
    )
    warmup = 0 if args.quick else 1
    print(f"load average at start: {os.getloadavg()[0]:.1f} (others' work inflates wall times)")
    print(f"code: {code_state()}")
    print(f"scenarios: {', '.join(names)}")
    met = True
    if chosen:
        print(
            f"mode: {'quick' if args.quick else 'full'}; {warmup} warm-up + {repeats} timed "
            "round(s) per operation, operations interleaved; files on local disk"
        )
        print(
            "exports: random scenarios are written once with akisnap's writer settings; the "
            "real embeddings file is read as-is"
        )
        results = [run_scenario(s, repeats, warmup, args.workdir, quick=args.quick) for s in chosen]
        met = print_targets(results)
    scale: list[ScaleResult] = []
    for scenario, default in (
        (PROCESS_200K, SCALE_REPEATS),
        (PROCESS_200K_ONE_GROUP, SCALE_REPEATS),
        (PROCESS_1M, HUGE_REPEATS),
    ):
        if scenario.name in names:
            rounds = args.repeat or (1 if args.quick else default)
            result = run_scale(scenario, rounds, args.workdir, quick=args.quick)
            if result is not None:
                scale.append(result)
    daemon: DaemonResult | None = None
    if DAEMON in names:
        plan = DaemonPlan.quick() if args.quick else DaemonPlan()
        daemon = run_daemon_bench(plan, args.workdir)
    if scale or daemon is not None:
        scale_met, _ = print_scale_targets(scale, daemon)
        met = met and scale_met
    met = run_snapshot_kinds(names, args) and met
    took = time.perf_counter() - started
    print(
        f"\nall targets met: {'yes' if met else 'no'}; bench took {took:.0f} s; "
        f"load average at end: {os.getloadavg()[0]:.1f}"
    )
    return 0


def run_scenario(
    scenario: Scenario, repeats: int, warmup: int, base: Path | None, *, quick: bool
) -> ScenarioResult:
    with tempfile.TemporaryDirectory(prefix="akisnap-bench-", dir=base) as temp:
        workdir = Path(temp)
        prepared = prepare(scenario, workdir)
        bench = ScenarioBench(prepared, workdir)
        try:
            bench.check_round_trip()
            operations = bench.operations()
            for round_number in range(warmup + repeats):
                for op in operations:
                    gc.collect()
                    began, cpu_began = time.perf_counter(), time.process_time()
                    op.run()
                    elapsed = time.perf_counter() - began
                    cpu_used = time.process_time() - cpu_began
                    op.cleanup()
                    if round_number >= warmup:
                        op.seconds.append(elapsed)
                        op.cpu_seconds.append(cpu_used)
            if warmup:
                for values in bench.stage_seconds.values():
                    del values[:warmup]
            notes = [bench.lance_note] if bench.lance_note else []
            medians, cpu = print_timings(scenario, operations, bench.stage_seconds, repeats, notes)
            sizes = measure_sizes(bench, exact_json=not quick)
            print_sizes(sizes)
        finally:
            bench.close()
    return ScenarioResult(scenario, medians, cpu, sizes)
