"""The `akisnap` command: parse, configure logging, call the same functions the daemon uses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemon import cli_daemon, cli_operator, cli_snapshots
from daemon.cli_common import fail
from handlers import __version__
from handlers.errors import AkisnapError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="akisnap",
        description="Verified, columnar snapshots of AkiDB collections, from Kafka requests.",
    )
    parser.add_argument("--version", action="version", version=f"akisnap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_daemon.register(commands)
    cli_snapshots.register(commands)
    cli_operator.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except AkisnapError as exc:
        return fail(f"{exc.message} ({type(exc).__name__})")
    except KeyboardInterrupt:
        return fail("interrupted", code=130)
    return code


if __name__ == "__main__":
    sys.exit(main())
