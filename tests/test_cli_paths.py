"""Paths: one parser for every --from, --store, --out and migrate --from; plain, relative and
~ paths; percent-decoding alike everywhere; read-only verbs never create a store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon import exit_codes
from handlers.uris import parse_location, to_uri
from tests.support import create_snapshot, run_cli


@pytest.fixture
def home(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Path:
    """A fresh HOME and working directory, no AKISNAP_* variables."""
    clean_env.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    clean_env.chdir(tmp_path / "work")
    return tmp_path / "home"


def create(source: str, store: str) -> dict[str, object]:
    code, out, err = create_snapshot(source, store, "--json")
    assert code == 0, err
    body: dict[str, object] = json.loads(out)
    return body


def test_one_parser_decodes_uris_and_takes_paths_literally(tmp_path: Path) -> None:
    """file:///a%20b is 'a b'; a plain path with % is literal; ~ and relative paths resolve."""
    assert parse_location("file:///tmp/a%20b%25c").path == "/tmp/a b%c"
    assert parse_location("/tmp/a%20b").path == "/tmp/a%20b"
    assert parse_location("s3://bkt/a%20b/x").key == "a b/x"
    assert to_uri("/tmp/a b%c") == "file:///tmp/a%20b%25c"
    assert parse_location(to_uri("/tmp/a b%c")).path == "/tmp/a b%c"
    assert parse_location("~/x").path == str(Path.home().resolve() / "x")
    assert parse_location("file://./rel").path == str(Path.cwd().resolve() / "rel")


def test_relative_home_and_percent_paths_work_for_from_store_and_out(home: Path) -> None:
    """--from ./v.npy and ~/v.npy, --store with a space and %, --out ~/…: all work, and the
    store URI with %20 names the same directory as the plain path."""
    np.save(Path("v.npy"), np.ones((10, 4), dtype=np.float32))
    np.save(home / "w.npy", np.ones((10, 4), dtype=np.float32) * 2)
    odd = home / "my snaps 100%"
    first = create("./v.npy", str(odd))
    second = create("~/w.npy", to_uri(str(odd)))  # the same directory, percent-encoded
    assert first["store"] == second["store"] == to_uri(str(odd))
    assert odd.is_dir() and not (home / "my%20snaps%20100%25").exists()
    code, out, _ = run_cli(["snapshots", "list", "--store", "~/my snaps 100%", "--json"])
    assert code == 0 and len(json.loads(out)) == 2
    code, out, err = run_cli(
        [
            "snapshots",
            "restore",
            str(first["snapshot_id"]),
            "--out",
            "~/back.npy",
            "--store",
            str(odd),
        ]
    )
    assert code == 0, err
    assert np.array_equal(np.load(home / "back.npy"), np.ones((10, 4), dtype=np.float32))
    assert str(odd) in out or to_uri(str(odd)) in out


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshots", "list"],
        ["snapshots", "show", "abc"],
        ["snapshots", "verify", "abc"],
        ["snapshots", "delete", "abc"],
        ["snapshots", "restore", "abc", "--out", "x.npy"],
        ["snapshots", "prune", "c", "--keep-last", "1"],
    ],
    ids=lambda argv: argv[1],
)
def test_read_only_verbs_refuse_a_missing_store(home: Path, argv: list[str]) -> None:
    """A mistyped store path is 'not found' (3), named, and not created."""
    missing = home / "typo"
    code, out, err = run_cli([*argv, "--store", str(missing)])
    assert code == exit_codes.NOT_FOUND and out == ""
    assert err.strip() == (
        f"akisnap: error: no store at {missing} (check --store or AKISNAP_STORE; "
        "nothing was created)"
    )
    assert not missing.exists()


def test_every_store_verb_names_its_store(home: Path) -> None:
    """create, list, show, verify, restore, delete and prune each print the store they used."""
    np.save(Path("v.npy"), np.ones((10, 4), dtype=np.float32))
    store = str(home / "s")
    snapshot = str(create("v.npy", store)["snapshot_id"])
    uri = to_uri(store)
    for argv in (
        ["snapshots", "list"],
        ["snapshots", "show", snapshot],
        ["snapshots", "verify", snapshot],
        ["snapshots", "restore", snapshot, "--out", "o.npy"],
        ["snapshots", "prune", "c", "--keep-last", "1"],
        ["snapshots", "delete", snapshot],
    ):
        code, out, err = run_cli([*argv, "--store", store])
        assert code == 0, err
        assert uri in out, (argv, out)
