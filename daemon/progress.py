"""Progress bars for the CLI: on stderr, only on a terminal and without --json."""

from __future__ import annotations

import argparse
import sys
from typing import Any


class Progress:
    """A tqdm bar on stderr when it is a terminal and --json is off; lines go above it."""

    def __init__(self, args: argparse.Namespace, *, unit: str, desc: str) -> None:
        self._quiet = bool(getattr(args, "json", False))
        self._enabled = not self._quiet and sys.stderr.isatty()
        self._unit = unit
        self._desc = desc
        self._bar: Any = None

    def start(self, total: int | None) -> None:
        if self._enabled and self._bar is None:
            try:
                from tqdm import tqdm  # noqa: PLC0415 (only on a terminal)
            except ImportError:  # a bar is a nicety: go on without one
                self._enabled = False
                return
            scale = self._unit == "B"
            self._bar = tqdm(
                total=total,
                unit=self._unit,
                unit_scale=scale,
                desc=self._desc,
                file=sys.stderr,
                leave=False,
            )

    def update(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def line(self, text: str) -> None:
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
