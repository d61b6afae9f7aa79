"""The documents that describe settings and metadata match the code: DESIGN.md's settings
table, the example YAML config, and the metadata file's JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from daemon.settings import Settings, env_name
from daemon.settings_doc import DESCRIPTIONS, example_yaml, table
from tests.support import REPO, create_snapshot


def test_design_holds_the_whole_settings_table() -> None:
    """DESIGN.md's table is the generated one: every field, its variable, its default."""
    assert set(DESCRIPTIONS) == set(Settings.model_fields)
    design = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert table() in design


def test_every_variable_the_code_names_is_a_setting() -> None:
    """Each AKISNAP_* named in daemon/, handlers/, the chart or the Dockerfile is in the table."""
    known = {env_name(name) for name in Settings.model_fields}
    named: set[str] = set()
    for root in ("daemon", "handlers", "helm"):
        for path in (REPO / root).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".yaml", ".tpl", ".txt"}:
                named |= set(re.findall(r"AKISNAP_[A-Z0-9_]+", path.read_text("utf-8")))
    named |= set(re.findall(r"AKISNAP_[A-Z0-9_]+", (REPO / "Dockerfile").read_text("utf-8")))
    constants = set()  # Python names such as AKISNAP_HEADER_PREFIX, not variables
    for path in [*(REPO / "daemon").rglob("*.py"), *(REPO / "handlers").rglob("*.py")]:
        constants |= set(re.findall(r"^(AKISNAP_[A-Z0-9_]+)\s*[:=]", path.read_text("utf-8"), re.M))
    assert named - known - constants == set()


def test_example_config_is_current_and_loads_to_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/akisnap.example.yaml is what the generator writes and loads to the defaults."""
    example = REPO / "docs" / "akisnap.example.yaml"
    assert example.read_text(encoding="utf-8") == example_yaml()
    assert Settings.load(example) == Settings.load()


@pytest.mark.usefixtures("clean_env")
def test_metadata_files_match_their_schema(tmp_path: Path) -> None:
    """Metadata written by create (with and without source_dtype) validates against
    daemon/schemas/snapshot-metadata.v1.json, which names every field the code writes."""
    schema = json.loads((REPO / "daemon" / "schemas" / "snapshot-metadata.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    np.save(tmp_path / "f32.npy", np.ones((5, 3), dtype=np.float32))
    np.save(tmp_path / "f64.npy", np.ones((5, 3), dtype=np.float64))
    store = tmp_path / "store"
    for name in ("f32.npy", "f64.npy"):
        code, _, err = create_snapshot(tmp_path / name, store, "--label", "k=v")
        assert code == 0, err
    (tmp_path / "no-deletes.txt").write_text("")
    delta = ["--base", "latest", "--deletes", str(tmp_path / "no-deletes.txt")]
    code, _, err = create_snapshot(tmp_path / "f32.npy", store, *delta)
    assert code == 0, err
    bodies = [json.loads(p.read_text()) for p in store.glob("snapshots/c/*.metadata.json")]
    assert len(bodies) == 3 and sum("source_dtype" in body for body in bodies) == 1
    assert sum("delta" in body for body in bodies) == 1
    for body in bodies:
        jsonschema.validate(body, schema)
    written = set().union(*(body.keys() for body in bodies))
    assert written == set(schema["properties"])
