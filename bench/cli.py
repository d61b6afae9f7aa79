"""``python -m bench``: every scenario, every operation, N rounds, medians and targets."""

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

from bench.ops import ScenarioBench
from bench.report import ScenarioResult, print_sizes, print_targets, print_timings
from bench.scenarios import SCENARIOS, Scenario, check_real_data, prepare
from bench.sizes import measure_sizes

DEFAULT_REPEATS = 5


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
        choices=[s.name for s in SCENARIOS],
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument(
        "--repeat", type=int, help=f"timed rounds per operation (default {DEFAULT_REPEATS})"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where temporary files go (default: the system temp dir)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeat or (1 if args.quick else DEFAULT_REPEATS)
    if repeats < 1:
        raise SystemExit("bench: --repeat must be at least 1")
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    if any(s.real for s in chosen):
        check_real_data()
    import lance

    started = time.perf_counter()
    print(
        f"akisnap bench — python {sys.version.split()[0]}, pyarrow {pa.__version__}, "
        f"numpy {np.__version__}, lance {lance.__version__}, {os.cpu_count()} CPUs"
    )
    warmup = 0 if args.quick else 1
    print(f"load average at start: {os.getloadavg()[0]:.1f} (others' work inflates wall times)")
    print(
        f"mode: {'quick' if args.quick else 'full'}; {warmup} warm-up + {repeats} timed "
        "round(s) per operation, operations interleaved; files on local disk"
    )
    print(
        "exports: random scenarios are written once with akisnap's writer settings; the real "
        "embeddings file is read as-is"
    )
    results = [run_scenario(s, repeats, warmup, args.workdir, quick=args.quick) for s in chosen]
    met = print_targets(results)
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
