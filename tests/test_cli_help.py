"""`akisnap … --help` for every verb: exit 0, every option has help; and starting the CLI
imports only what the verb needs (the speed itself is measured in bench/startup.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import build_parser
from tests.support import REPO, run_cli

HEAVY = ("aiokafka", "aiohttp", "aiobotocore", "pyarrow", "numpy", "pydantic", "structlog")


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += leaves(sub, (*path, name))
    return found or [(path, parser)]


VERBS = leaves(build_parser())


def test_every_verb_is_reached() -> None:
    """The walk finds every verb of DESIGN.md's CLI."""
    names = {" ".join(path) for path, _ in VERBS}
    assert {"run", "request", "demo", "migrate", "dlq list", "dlq replay"} <= names
    snapshot_verbs = {"create", "list", "show", "verify", "delete", "restore", "prune"}
    assert {f"snapshots {verb}" for verb in snapshot_verbs} <= names


@pytest.mark.parametrize(("path", "parser"), VERBS, ids=[" ".join(p) for p, _ in VERBS])
def test_help_explains_every_option(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    """`akisnap VERB --help` exits 0, lists every option, and each option has a help text."""
    with pytest.raises(SystemExit) as exited:
        run_cli([*path, "--help"])
    assert exited.value.code == 0
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{' '.join(path)} {name}"


def loaded_after(argv: list[str]) -> list[str]:
    """The heavy top-level packages imported by running `akisnap ARGV` in a fresh process."""
    code = (
        "import json, sys\nfrom daemon import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    names: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return names


def test_help_and_version_import_nothing_heavy() -> None:
    """--help and --version import none of aiokafka, pyarrow, numpy, pydantic, …"""
    assert loaded_after(["--help"]) == []
    assert loaded_after(["--version"]) == []
    assert loaded_after(["snapshots", "create", "--help"]) == []


def test_store_verbs_import_no_kafka_and_no_arrow(tmp_path: Path) -> None:
    """`snapshots list` and `prune` load settings and the store, never aiokafka or pyarrow."""
    for argv in (
        ["snapshots", "list", "--store", str(tmp_path)],
        ["snapshots", "prune", "--orphans", "--yes", "--store", str(tmp_path)],
    ):
        assert set(loaded_after(argv)) <= {"pydantic", "structlog"}, argv
