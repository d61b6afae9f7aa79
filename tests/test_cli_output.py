"""What create and show print: where the snapshot is, its size with ratios that read right,
request, labels, duration; list's LABELS column and --label filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.cli.snapshots import compared, plural
from tests.support import run_cli


def test_ratio_wording_reads_right_both_ways() -> None:
    """Smaller is 'N× smaller than', larger is 'N× larger than', never '0.87× smaller'."""
    assert compared(100, 112) == "1.12× smaller than"
    assert compared(115, 100) == "1.15× larger than"
    assert compared(1000, 1001) == "the same size as"
    assert (plural(1, "part"), plural(2, "part")) == ("1 part", "2 parts")


@pytest.mark.usefixtures("clean_env")
def test_create_and_show_say_where_how_big_and_from_what(tmp_path: Path) -> None:
    """create prints the metadata URI, size, ratios, request, labels and duration; show the
    same without duration; list filters by label and shows the labels."""
    np.save(tmp_path / "v.npy", np.random.default_rng(1).random((50, 8), dtype=np.float32))
    store = tmp_path / "store"
    argv = ["snapshots", "create", "--collection", "c", "--from", str(tmp_path / "v.npy"),
            "--store", str(store), "--request-id", "req-1", "--label", "team=search"]  # fmt: skip
    code, out, err = run_cli(argv)
    assert code == 0, err
    (metadata,) = (store / "snapshots" / "c").glob("*.metadata.json")
    lines = out.splitlines()
    assert lines[0].startswith("created: snapshot ") and lines[0].endswith(" of collection c")
    assert f"  where     {metadata.as_uri()} (+ 1 part)" in lines
    assert "  vectors   50 × 8" in lines
    assert any(
        line.startswith("  size      ") and "raw float32 (1.6 KiB)" in line for line in lines
    )
    assert "  request   req-1" in lines and "  labels    team=search" in lines
    assert any(line.startswith("  took      ") and line.endswith(" s") for line in lines)
    snapshot_id = metadata.name.split(".")[0]
    code, shown, _ = run_cli(["snapshots", "show", snapshot_id[:6], "--store", str(store)])
    assert code == 0 and shown.splitlines()[0] == f"found: snapshot {snapshot_id} of collection c"
    assert "took" not in shown
    run_cli([*argv[:-4], "--request-id", "req-2", "--label", "team=ads"])
    code, listed, _ = run_cli(["snapshots", "list", "--label", "team=ads", "--store", str(store)])
    assert code == 0 and "team=ads" in listed and "team=search" not in listed
    assert listed.splitlines()[0].split() == [
        "SNAPSHOT", "COLLECTION", "FORMAT", "VECTORS", "DIM", "SIZE", "CREATED", "LABELS"
    ]  # fmt: skip
    code, listed, _ = run_cli(
        ["snapshots", "list", "--label", "team=ads", "--store", str(store), "--json"]
    )
    assert [entry["labels"] for entry in json.loads(listed)] == [{"team": "ads"}]
