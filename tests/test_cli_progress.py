"""Progress bars by rows on a terminal for create, verify --full and restore; nothing on
stderr when it is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import akisnap_on_terminal, akisnap_process, real_embeddings, write_export


def test_bars_on_a_terminal_and_quiet_elsewhere(tmp_path: Path) -> None:
    """On a terminal each verb draws a bar counting rows to the total; piped: stderr empty."""
    uri = write_export(real_embeddings(2000), tmp_path / "exports")
    store = str(tmp_path / "store")
    code, shown = akisnap_on_terminal(
        "snapshots", "create", "--collection", "c", "--from", uri, "--store", store
    )
    assert code == 0, shown
    assert "create:   0%" in shown and "/2000" in shown and "rows" in shown
    listed = akisnap_process("snapshots", "list", "--store", store, "--json")
    snapshot_id = json.loads(listed.stdout)[0]["snapshot_id"]
    code, shown = akisnap_on_terminal(
        "snapshots", "verify", snapshot_id[:8], "--full", "--store", store
    )
    assert code == 0 and "verify:" in shown and "/2000" in shown, shown
    out = str(tmp_path / "r.npy")
    code, shown = akisnap_on_terminal(
        "snapshots", "restore", snapshot_id[:8], "--out", out, "--store", store
    )
    assert code == 0 and "restore:" in shown and "/2000" in shown, shown
    piped = akisnap_process(
        "snapshots", "create", "--collection", "d", "--from", uri, "--store", store
    )
    assert piped.returncode == 0 and piped.stderr == ""
    assert "created: snapshot" in piped.stdout
