"""`akisnap snapshots …` as a user runs it: a real process, real files, exit codes, --json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handlers.model import DocumentBatch, vectors_bit_equal
from tests.support import akisnap_process, real_embeddings, write_export

VERBS = ["create", "list", "show", "verify", "delete", "compact", "restore"]


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 3000×384 snapshot of real embeddings with metadata, made through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    table = real_embeddings(3000)
    uri = write_export(table, base / "exports")
    store = base / "store"
    body = ok_json(
        akisnap_process(
            "snapshots",
            "create",
            "--collection",
            "c",
            "--from",
            uri,
            "--store",
            store.as_uri(),
            "--json",
        )
    )
    return {"body": body, "store": store, "table": table, "base": base}


def test_create_prints_metadata_and_outcome(created: dict[str, Any]) -> None:
    """create --json prints one object: the metadata plus the outcome."""
    body = created["body"]
    assert body["outcome"] == "created"
    assert (body["vector_count"], body["dimension"], body["collection_id"]) == (3000, 384, "c")


def test_restore_gives_back_every_vector_with_its_id(created: dict[str, Any]) -> None:
    """restore --out x.parquet returns every vector bit for bit with its id."""
    out = created["base"] / "x.parquet"
    body = ok_json(
        akisnap_process(
            "snapshots",
            "restore",
            created["body"]["snapshot_id"],
            "--out",
            str(out),
            "--store",
            created["store"].as_uri(),
            "--json",
        )
    )
    assert body["rows"] == 3000
    restored, original = pq.read_table(out), created["table"]
    assert vectors_bit_equal(
        DocumentBatch(restored.combine_chunks().to_batches()[0]).vectors,
        DocumentBatch(original.combine_chunks().to_batches()[0]).vectors,
    )
    assert restored.column("document_id").equals(original.column("document_id"))


def test_list_show_and_verify(created: dict[str, Any]) -> None:
    """list and show find the snapshot; verify --full passes."""
    store, snapshot_id = created["store"].as_uri(), created["body"]["snapshot_id"]
    listed = ok_json(akisnap_process("snapshots", "list", "--store", store, "--json"))
    assert [entry["snapshot_id"] for entry in listed] == [snapshot_id]
    assert (
        ok_json(akisnap_process("snapshots", "show", snapshot_id, "--store", store, "--json"))[
            "vector_count"
        ]
        == 3000
    )
    verified = ok_json(
        akisnap_process("snapshots", "verify", snapshot_id, "--full", "--store", store, "--json")
    )
    assert verified["outcome"] == "ok"
    human = akisnap_process("snapshots", "list", "--store", store)
    assert snapshot_id in human.stdout and "SNAPSHOT" in human.stdout


def test_flipped_byte_fails_verify_and_restore(tmp_path: Path) -> None:
    """After one byte of a part is flipped, verify and restore exit non-zero with one line."""
    uri = write_export(real_embeddings(500), tmp_path / "exports")
    store = tmp_path / "store"
    body = ok_json(
        akisnap_process(
            "snapshots", "create", "--collection", "c", "--from", uri, "--json", store=store
        )
    )
    part = store / body["parts"][0]["key"]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x10
    part.write_bytes(bytes(data))
    verify = akisnap_process("snapshots", "verify", body["snapshot_id"], store=store)
    assert verify.returncode == 4 and "SHA-256" in verify.stderr
    assert len(verify.stderr.strip().splitlines()) == 1
    restore = akisnap_process(
        "snapshots", "restore", body["snapshot_id"], "--out", str(tmp_path / "x.npy"), store=store
    )
    assert restore.returncode == 4 and "SHA-256" in restore.stderr
    assert not (tmp_path / "x.npy").exists()


def test_export_with_nan_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    """An export holding a NaN is refused; list shows no snapshot afterwards."""
    table = real_embeddings(100)
    vectors = DocumentBatch(table.combine_chunks().to_batches()[0]).vectors.copy()
    vectors[50, 7] = np.nan
    poisoned = table.set_column(
        table.schema.get_field_index("vector"),
        "vector",
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 384),
    )
    uri = write_export(poisoned, tmp_path / "exports")
    result = akisnap_process(
        "snapshots", "create", "--collection", "c", "--from", uri, store=tmp_path
    )
    assert result.returncode == 5 and "non-finite" in result.stderr
    assert ok_json(akisnap_process("snapshots", "list", "--json", store=tmp_path)) == []


def test_unknown_snapshot_is_a_one_line_error(tmp_path: Path) -> None:
    """show/verify/restore/delete of an unknown id exit non-zero with a one-line reason."""
    for verb in (["show"], ["verify"], ["delete"], ["restore", "--out", str(tmp_path / "o.npy")]):
        result = akisnap_process("snapshots", verb[0], "0000", *verb[1:], store=tmp_path)
        assert result.returncode == 3
        assert result.stderr.startswith("akisnap: error:") and "0000" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_bad_output_extension_is_refused(created: dict[str, Any]) -> None:
    """restore to an unknown extension says which ones work."""
    result = akisnap_process(
        "snapshots",
        "restore",
        created["body"]["snapshot_id"],
        "--out",
        "x.csv",
        store=created["store"],
    )
    assert result.returncode == 5 and ".parquet" in result.stderr


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_store_and_json(verb: str) -> None:
    """--help works for every verb and lists --store and --json."""
    result = akisnap_process("snapshots", verb, "--help")
    assert result.returncode == 0
    assert "--store" in result.stdout and "--json" in result.stdout
