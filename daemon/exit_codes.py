"""How the CLI ends: one exit code per kind of failure, and one line (or one JSON object) per
problem on stderr. The table below is the only place an error becomes an exit code; it is
documented in docs/DESIGN.md ("Exit codes") and keyed on exception classes.

Kept light on purpose (no pydantic, aiokafka or pyarrow): ``akisnap --help`` imports it.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from daemon.settings_error import SettingsError
from handlers import errors

OK = 0
FAILURE = 1  # unexpected: a bug, reported with the exception's type
USAGE = 2  # wrong options, arguments or settings (--config file, AKISNAP_*)
NOT_FOUND = 3  # no such snapshot, collection, store or file
CORRUPT = 4  # stored bytes do not match their metadata
BAD_INPUT = 5  # the export, request or legacy file is refused
ENVIRONMENT = 6  # store or broker unreachable, permission denied, disk full, read-only
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
BROKEN_PIPE = 141  # the reader closed our output (128 + SIGPIPE)

KINDS = {
    FAILURE: "failure",
    USAGE: "usage",
    NOT_FOUND: "not_found",
    CORRUPT: "corrupt",
    BAD_INPUT: "bad_input",
    ENVIRONMENT: "environment",
    INTERRUPTED: "interrupted",
    BROKEN_PIPE: "broken_pipe",
}

# First match wins: subclasses before their bases.
BY_CLASS: tuple[tuple[type[BaseException], int], ...] = (
    (SettingsError, USAGE),
    (errors.SnapshotNotFoundError, NOT_FOUND),
    (errors.StoreNotFoundError, NOT_FOUND),
    (errors.AmbiguousSnapshotIdError, USAGE),
    (errors.SelectionError, USAGE),
    (errors.IdsNotFoundError, NOT_FOUND),
    (errors.CorruptSnapshotError, CORRUPT),
    (errors.ObjectMissingError, CORRUPT),
    (errors.WriteNotVerifiedError, CORRUPT),
    (errors.StoreConfigError, USAGE),
    (errors.EnvironmentFaultError, ENVIRONMENT),
    (errors.TransientError, ENVIRONMENT),
    (errors.PermanentError, BAD_INPUT),
    (KeyboardInterrupt, INTERRUPTED),
    (BrokenPipeError, BROKEN_PIPE),
    (FileNotFoundError, NOT_FOUND),
    (OSError, ENVIRONMENT),
)


class CommandFailedError(Exception):
    """A verb that ran but did not succeed (a corrupt snapshot found, files refused)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class UsageError(Exception):
    """The command line asks for something impossible (argparse's errors, and later checks)."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Failure:
    """What to print and return for an error."""

    code: int
    lines: list[str]
    type: str
    problems: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "exit_code": self.code,
            "kind": KINDS.get(self.code, "failure"),
            "type": self.type,
            "message": "; ".join(self.lines),
        }
        if self.problems:
            body["problems"] = self.problems
        return {"error": body}


def code_for(exc: BaseException) -> int:
    if isinstance(exc, CommandFailedError):
        return exc.code
    if isinstance(exc, UsageError):
        return USAGE
    for cls, code in BY_CLASS:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, errors.AkisnapError) and exc.retryable:
        return ENVIRONMENT  # any other kind the daemon would wait out or retry
    return FAILURE


def describe(exc: BaseException) -> Failure:
    exc = root_cause(exc)
    code = code_for(exc)
    kind = type(exc).__name__
    if isinstance(exc, SettingsError):
        problems = [{"field": f, "reason": r} for f, r in exc.problems]
        lines = [f"{f}: {r}" for f, r in exc.problems] or ["invalid settings"]
        return Failure(code, lines, kind, problems)
    if isinstance(exc, errors.AkisnapError):
        return Failure(code, [exc.message], kind)
    if code == INTERRUPTED:
        return Failure(code, ["interrupted"], kind)
    if code == BROKEN_PIPE:
        return Failure(code, ["output closed before it was all written (broken pipe)"], kind)
    if isinstance(exc, OSError):
        return Failure(code, [os_error_text(exc)], kind)
    if isinstance(exc, CommandFailedError | UsageError):
        return Failure(code, [str(exc)], kind)
    return Failure(code, [f"unexpected {kind}: {exc}"], kind)


def os_error_text(exc: OSError) -> str:
    """``what: where`` without a traceback, e.g. 'read-only file system: /srv/snaps/x'."""
    reason = exc.strerror or (errno.errorcode.get(exc.errno or 0)) or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    where = exc.filename if exc.filename is not None else ""
    return f"{reason}: {where}" if where else reason


def root_cause(exc: BaseException) -> BaseException:
    """The first real error inside a task group's exception group."""
    return errors.first_cause(exc) if isinstance(exc, BaseExceptionGroup) else exc


def report(exc: BaseException, *, as_json: bool) -> int:
    """Print the error (one line per problem, or one JSON object) on stderr; the exit code."""
    failure = describe(exc)
    if failure.code == BROKEN_PIPE:
        _silence_stdout()
    write_failure(failure, as_json=as_json)
    return failure.code


def write_failure(failure: Failure, *, as_json: bool) -> None:
    try:
        if as_json:
            print(json.dumps(failure.to_dict(), sort_keys=True), file=sys.stderr)
        else:
            for line in failure.lines:
                print(f"akisnap: error: {_one_line(line)}", file=sys.stderr)
        sys.stderr.flush()
    except OSError:  # stderr is gone too: the exit code is all that is left
        pass


def _one_line(text: str) -> str:
    return " ".join(text.split()) if text else "failed"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
