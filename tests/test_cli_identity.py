"""Identity: ids from collection and request, prefixes, and no removal or overwrite by
surprise (delete/prune ask on a terminal, restore wants --force)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from daemon import exit_codes
from handlers.job import snapshot_id_for
from tests.support import akisnap_on_terminal, create_snapshot, run_cli


@pytest.fixture
def store(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Path:
    np.save(tmp_path / "v.npy", np.ones((10, 4), dtype=np.float32))
    return tmp_path / "store"


def create(store: Path, collection: str, request_id: str) -> str:
    code, out, err = create_snapshot(
        store.parent / "v.npy", store, "--request-id", request_id, "--json", collection=collection
    )
    assert code == 0, err
    snapshot_id: str = json.loads(out)["snapshot_id"]
    return snapshot_id


def test_same_request_in_two_collections_makes_two_snapshots(store: Path) -> None:
    """--request-id r in collections a and b: two snapshots, ids from collection and request."""
    first, second = create(store, "a", "r"), create(store, "b", "r")
    assert first != second
    assert (first, second) == (snapshot_id_for("a", "r"), snapshot_id_for("b", "r"))
    assert create(store, "a", "r") == first  # a redo is the same snapshot
    code, out, _ = run_cli(["snapshots", "list", "--store", str(store), "--json"])
    assert code == 0 and len(json.loads(out)) == 2


def test_unique_prefix_resolves_and_ambiguous_one_lists_candidates(store: Path) -> None:
    """A unique prefix finds its snapshot; a shared one is refused (exit 2) naming both."""
    # Two request ids whose snapshot ids share their first two characters (pure function).
    seen: dict[str, str] = {}
    for n in itertools.count():
        rid = f"r{n}"
        head = snapshot_id_for("c", rid)[:2]
        if head in seen:
            pair = (seen[head], rid)
            break
        seen[head] = rid
    ids = [create(store, "c", rid) for rid in pair]
    for snapshot_id, other in (ids, ids[::-1]):
        unique = next(
            snapshot_id[:n] for n in range(3, 37) if not other.startswith(snapshot_id[:n])
        )
        code, out, err = run_cli(["snapshots", "show", unique, "--store", str(store), "--json"])
        assert code == 0, err
        assert json.loads(out)["snapshot_id"] == snapshot_id
    code, out, err = run_cli(["snapshots", "show", ids[0][:2], "--store", str(store)])
    assert code == exit_codes.USAGE and out == ""
    (line,) = err.strip().splitlines()
    assert f"'{ids[0][:2]}' matches 2 snapshots: " in line
    assert f"c/{ids[0]}" in line and f"c/{ids[1]}" in line
    code, _, err = run_cli(
        ["snapshots", "show", ids[0][:2], "--collection", "other", "--store", str(store)]
    )
    assert code == exit_codes.NOT_FOUND and "in collection other" in err


def test_delete_asks_on_a_terminal(store: Path) -> None:
    """On a terminal delete asks; 'n' removes nothing (exit 2), 'y' removes, --yes skips."""
    first, second = create(store, "c", "r1"), create(store, "c", "r2")
    argv = ["snapshots", "delete", first, "--store", str(store)]
    code, shown = akisnap_on_terminal(*argv, typed="n\n")
    assert code == exit_codes.USAGE, shown
    assert f"delete snapshot {first} of c" in shown and "[y/N]" in shown
    assert "not confirmed: nothing was removed" in shown
    assert (store / "snapshots" / "c" / f"{first}.metadata.json").exists()
    code, shown = akisnap_on_terminal(*argv, typed="y\n")
    assert code == 0 and f"deleted snapshot {first}" in shown, shown
    assert not (store / "snapshots" / "c" / f"{first}.metadata.json").exists()
    code, shown = akisnap_on_terminal("snapshots", "delete", second, "--yes", "--store", str(store))
    assert code == 0 and "[y/N]" not in shown, shown


def test_prune_asks_on_a_terminal_and_names_a_missing_collection(store: Path) -> None:
    """prune asks before deleting on a terminal; a collection that does not exist is named."""
    create(store, "c", "r1")
    create(store, "c", "r2")
    argv = ["snapshots", "prune", "c", "--keep-last", "1", "--store", str(store)]
    code, shown = akisnap_on_terminal(*argv, typed="no\n")
    assert code == exit_codes.USAGE and "delete 1 snapshot(s)" in shown, shown
    assert len(list((store / "snapshots" / "c").glob("*.metadata.json"))) == 2
    code, out, err = run_cli([*argv[:2], "nope", *argv[3:]])
    assert code == exit_codes.NOT_FOUND and out == ""
    assert err.strip() == f"akisnap: error: no collection 'nope' in {store.as_uri()}"
    code, out, err = run_cli(argv)  # not a terminal: scripts are not asked
    assert code == 0, err
    assert len(list((store / "snapshots" / "c").glob("*.metadata.json"))) == 1


def test_restore_refuses_to_overwrite_without_force(store: Path) -> None:
    """restore onto an existing file: refused (exit 2, file untouched) unless --force."""
    snapshot_id = create(store, "c", "r")
    out = store.parent / "out.npy"
    out.write_bytes(b"keep me")
    argv = ["snapshots", "restore", snapshot_id, "--out", str(out), "--store", str(store)]
    code, _, err = run_cli(argv)
    assert code == exit_codes.USAGE and "--force" in err and out.read_bytes() == b"keep me"
    code, _, err = run_cli([*argv, "--force"])
    assert code == 0, err
    assert np.array_equal(np.load(out), np.ones((10, 4), dtype=np.float32))
