"""How fast `akisnap` answers: `--help`, `--version` and a store verb, as whole processes.

    python -m bench.startup [--runs N]

Target (issue 12): `akisnap --help` under 0.3 s on the CI machine. Prints the median and the
slowest of N runs of each command, then the ten slowest imports of `--help` from
`python -X importtime` (cumulative microseconds), so a regression names its culprit.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_HELP_SECONDS = 0.3
AKISNAP = [sys.executable, "-m", "daemon.cli"]


def timed(argv: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*AKISNAP, *argv], capture_output=True, check=False)
        seconds.append(time.perf_counter() - started)
    return seconds


def slowest_imports(argv: list[str], count: int = 10) -> list[tuple[int, str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "daemon.cli", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    found = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        found.append((int(cumulative), name))
    return sorted(found, reverse=True)[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as store:
        Path(store, "snapshots").mkdir()
        commands = {
            "akisnap --help": ["--help"],
            "akisnap --version": ["--version"],
            "akisnap snapshots list (empty local store)": ["snapshots", "list", "--store", store],
        }
        medians = {}
        for name, command in commands.items():
            seconds = timed(command, args.runs)
            medians[name] = statistics.median(seconds)
            print(f"{name:<45} median {medians[name]:.3f} s, slowest {max(seconds):.3f} s")
    verdict = "met" if medians["akisnap --help"] < TARGET_HELP_SECONDS else "NOT met"
    print(f"target: --help under {TARGET_HELP_SECONDS} s: {verdict}")
    print("slowest imports of --help (cumulative µs):")
    for cumulative, name in slowest_imports(["--help"]):
        print(f"  {cumulative:>8}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
