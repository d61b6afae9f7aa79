"""The `akisnap` command: parse, configure logging, call the same functions the daemon uses.

Every failure ends here as one line per problem on stderr (one JSON object with --json) and
the exit code of :mod:`daemon.exit_codes`.

One module per verb group, imported only when one of its verbs runs (:mod:`.parsers` names
them, and holds every option): :mod:`.service` (run, request, demo), :mod:`.snapshots`,
:mod:`.prune` (snapshots prune), :mod:`.dlq`, :mod:`.migrate`; :mod:`.common` is what they
share.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import NoReturn

from daemon import exit_codes
from daemon.cli import parsers
from handlers import __version__


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised, so main() reports them like every other."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("akisnap").strip()
        text = f"{where}: {message}" if where else message
        raise exit_codes.UsageError(text, usage=self.format_usage())


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(
        prog="akisnap",
        description="Verified, columnar snapshots of AkiDB collections, from Kafka requests.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"akisnap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers.register(commands)
    return parser


EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 unexpected failure, 2 usage or settings, 3 not found, "
    "4 corrupt snapshot,\n5 input refused, 6 environment (store/broker unreachable, "
    "permission, disk), 130 interrupted"
)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in words
    try:
        args = build_parser().parse_args(words)
    except exit_codes.UsageError as exc:
        if not as_json:
            print(exc.usage, end="", file=sys.stderr)
        return exit_codes.report(exc, as_json=as_json)
    try:
        code = run_verb(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except (Exception, KeyboardInterrupt) as exc:
        return exit_codes.report(exc, as_json=as_json)
    return code


def run_verb(args: argparse.Namespace) -> int:
    """Import the verb's module only now (see daemon.cli.parsers) and run its function."""
    module_name, _, function_name = args.run.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    if inspect.iscoroutinefunction(function):
        import asyncio  # noqa: PLC0415 (only verbs that run need an event loop)

        return int(asyncio.run(function(args)))
    return int(function(args))
