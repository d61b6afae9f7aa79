"""What every CLI verb shares when it runs: settings, output, labels, confirmation."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from daemon.exit_codes import USAGE, CommandFailedError, UsageError
from daemon.logging import configure_logging
from daemon.settings import Settings
from handlers.errors import InvalidRequestError


def load_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "store", None):
        overrides["store"] = args.store
    settings = Settings.load(getattr(args, "config", None), **overrides)
    verbose = bool(getattr(args, "verbose", False))
    configure_logging("console", "info" if verbose else "warning", secrets=settings.secret_values())
    if not verbose:
        hide_kafka_client_logs()
    return settings


def hide_kafka_client_logs() -> None:
    """Drop aiokafka's own log lines (below CRITICAL) from this run's output: a verb reports a
    broker failure itself, in one line naming the address. A filter on the handler, not a
    logger level, so the next configure_logging() starts clean."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "akisnap":
            handler.addFilter(_not_from_kafka_client)


def _not_from_kafka_client(record: logging.LogRecord) -> bool:
    if record.name.startswith("aiokafka"):
        return record.levelno >= logging.CRITICAL
    # A TLS connection to the broker that the peer closes first leaves asyncio a future with
    # this error and nobody to read it, after the verb is done: noise, not a failure.
    error = record.exc_info[1] if record.exc_info else None
    return not (
        record.name == "asyncio"
        and getattr(error, "reason", None) == "APPLICATION_DATA_AFTER_CLOSE_NOTIFY"
    )


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    """Print JSON with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True))
    elif human:
        print(human)


def labels_from(pairs: Sequence[str]) -> dict[str, str]:
    """``--label K=V`` options as a dict."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--label wants K=V, not {pair!r}")
        labels[key] = value
    return labels


def deleted_ids(path: Path | None) -> tuple[str, ...] | None:
    """A --deletes file: one document id a line (blank lines skipped)."""
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidRequestError(f"--deletes {path}: {exc.strerror}") from None
    return tuple(line.strip() for line in lines if line.strip())


def will_ask(args: argparse.Namespace) -> bool:
    return not getattr(args, "yes", False) and sys.stdin.isatty()


def confirm(args: argparse.Namespace, question: str) -> None:
    """On a terminal, ask before removing anything unless --yes; scripts (stdin not a
    terminal) are not asked. Anything but y/yes removes nothing."""
    if not will_ask(args):
        return
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandFailedError("not confirmed: nothing was removed", USAGE)


def fail(reason: str, code: int) -> NoReturn:
    """End the verb with a failure that is not an exception of its own (see exit_codes)."""
    raise CommandFailedError(reason, code)


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def table(rows: Sequence[Mapping[str, str]], indent: str = "") -> str:
    """Rows of equal keys as aligned columns under a header of the keys (no trailing blanks)."""
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}
    lines = [dict(zip(widths, widths, strict=True)), *rows]
    return "\n".join(
        (indent + "  ".join(line[key].ljust(width) for key, width in widths.items())).rstrip()
        for line in lines
    )
