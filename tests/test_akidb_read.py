"""AkiDB 2.0 snapshots, written by AkiDB's own code, used in place: list, show, verify,
restore (every output), delete, prune, next to native snapshots and garbage."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from handlers.catalog import Catalog
from handlers.create import SnapshotCreator
from handlers.errors import CorruptSnapshotError
from handlers.job import SnapshotJob, UriSource
from handlers.restore import restore_snapshot
from handlers.retention import prune
from handlers.stores import ObjectStore
from handlers.verify import verify_snapshot
from tests.support import (
    AKIDB_COLLECTION,
    AKIDB_JSON_ID,
    AKIDB_JSON_ROWS,
    AKIDB_PARQUET_ID,
    AKIDB_ROW0_BITS,
    akidb_expected,
    documents_table,
    open_test_store,
    put_akidb_store,
    run_cli,
    write_export,
)

GARBAGE = {
    f"snapshots/{AKIDB_COLLECTION}/0badf00d-0000-4000-8000-000000000000.metadata.json": b'{"snap',
    "snapshots/other/5e1f0000-0000-4000-8000-000000000000.metadata.json": b'{"schema": 7}',
    "snapshots/77777777-0000-4000-8000-000000000000.meta.json": json.dumps(
        {"snapshot_id": "77777777-0000-4000-8000-000000000000", "extra": 1}
    ).encode(),
    "snapshots/README.txt": b"not a snapshot",
    "snapshots/88888888-0000-4000-8000-000000000000.json": b"[]",
}


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_test_store(request.param, tmp_path)
    await put_akidb_store(opened)
    yield opened
    await opened.close()


async def add_native(store: ObjectStore, tmp_path: Path, collection: str) -> str:
    uri = write_export(documents_table(20, 8, seed=5), tmp_path / "exports")
    creator = SnapshotCreator(store, source_roots=[uri])
    job = SnapshotJob(collection, str(uuid.uuid4()), UriSource(uri, "parquet"))
    return (await creator(job)).metadata.snapshot_id


async def add_garbage(store: ObjectStore) -> None:
    for key, body in GARBAGE.items():
        await store.put_bytes(key, body)


async def test_mixed_root_lists_everything_readable_and_reports_the_rest(
    store: ObjectStore, tmp_path: Path
) -> None:
    """Native + AkiDB Parquet + AkiDB JSON + garbage: three snapshots, each garbage file
    reported with its key and reason; show/verify/delete/prune of the others still work."""
    native = await add_native(store, tmp_path, AKIDB_COLLECTION)
    await add_garbage(store)
    scan = await Catalog(store).scan()
    formats = {meta.snapshot_id: meta.format for meta in scan.snapshots}
    assert formats == {
        AKIDB_PARQUET_ID: "akidb-parquet",
        AKIDB_JSON_ID: "akidb-json",
        native: "parquet",
    }
    reasons = {entry.key: entry.reason for entry in scan.unreadable}
    assert set(reasons) == set(GARBAGE)
    assert "not JSON" in reasons[next(k for k in GARBAGE if k.endswith("0000.metadata.json"))]
    assert (
        "unknown field(s) extra"
        in reasons["snapshots/77777777-0000-4000-8000-000000000000.meta.json"]
    )
    assert "no commit marker" in reasons["snapshots/88888888-0000-4000-8000-000000000000.json"]
    assert "neither format" in reasons["snapshots/README.txt"]

    root = ["--store", store.root_uri]
    code, out, err = await asyncio.to_thread(run_cli, ["snapshots", "list", *root])
    assert code == 0, err
    assert "akidb-parquet" in out and "akidb-json" in out and "parquet" in out
    assert "unreadable snapshots/README.txt: not a snapshot file" in out
    code, out, _ = await asyncio.to_thread(run_cli, ["snapshots", "list", "--json", *root])
    listed = json.loads(out)
    assert {row["format"] for row in listed} == {
        "parquet",
        "akidb-parquet",
        "akidb-json",
        "unreadable",
    }
    assert {row["key"] for row in listed if row["format"] == "unreadable"} == set(GARBAGE)

    for snapshot_id in (AKIDB_PARQUET_ID, AKIDB_JSON_ID, native):
        code, out, err = await asyncio.to_thread(
            run_cli, ["snapshots", "show", snapshot_id, "--json", *root]
        )
        assert code == 0 and json.loads(out)["snapshot_id"] == snapshot_id, err
        code, out, err = await asyncio.to_thread(
            run_cli, ["snapshots", "verify", snapshot_id, "--full", "--json", *root]
        )
        assert code == 0 and json.loads(out)["outcome"] == "ok", err
        out_file = tmp_path / f"{snapshot_id}.npy"
        args = ["snapshots", "restore", snapshot_id, "--out", str(out_file), *root]
        code, _, err = await asyncio.to_thread(run_cli, args)
        assert code == 0 and np.load(out_file).dtype == np.float32, err

    code, out, err = await asyncio.to_thread(run_cli, ["snapshots", "delete", AKIDB_JSON_ID, *root])
    assert code == 0, err
    assert await store.head(f"snapshots/{AKIDB_JSON_ID}.json") is None
    assert await store.head(f"snapshots/{AKIDB_JSON_ID}.meta.json") is None
    result = await prune(Catalog(store), AKIDB_COLLECTION, keep_last=1)
    assert [meta.snapshot_id for meta in result.deleted] == [AKIDB_PARQUET_ID]
    assert GARBAGE.keys() - {
        "snapshots/other/5e1f0000-0000-4000-8000-000000000000.metadata.json"
    } == {entry.key for entry in result.unreadable}
    assert not [k async for k in store.list(f"snapshots/{AKIDB_COLLECTION}/{AKIDB_PARQUET_ID}")]
    after = await Catalog(store).scan()
    assert [meta.snapshot_id for meta in after.snapshots] == [native]
    assert {entry.key for entry in after.unreadable} == set(GARBAGE)


@pytest.mark.parametrize("snapshot_id", [AKIDB_PARQUET_ID, AKIDB_JSON_ID])
async def test_verify_in_place_says_no_checksum(store: ObjectStore, snapshot_id: str) -> None:
    """Verify decodes and checks rows, dimension, finiteness, and says no checksum exists."""
    meta = await Catalog(store).get(snapshot_id)
    for full in (False, True):
        report = await verify_snapshot(store, meta, full=full)
        assert report.ok, report.problems
        assert report.full and "no checksum was recorded" in report.notes[0]
    code, out, err = await asyncio.to_thread(
        run_cli, ["snapshots", "verify", snapshot_id, "--store", store.root_uri]
    )
    assert code == 0 and "no checksum was recorded" in out, err


async def test_verify_catches_what_the_sidecar_contradicts(
    store: ObjectStore, tmp_path: Path
) -> None:
    """A sidecar that overstates vector_count, or a truncated data file, is corrupt."""
    key = f"snapshots/{AKIDB_JSON_ID}.meta.json"
    sidecar = json.loads(await store.get_bytes(key))
    await store.put_bytes(
        key, json.dumps({**sidecar, "vector_count": 101}, separators=(",", ":")).encode()
    )
    report = await verify_snapshot(store, await Catalog(store).get(AKIDB_JSON_ID))
    assert any("100 rows, metadata says 101" in problem for problem in report.problems)
    data_key = f"snapshots/{AKIDB_COLLECTION}/{AKIDB_PARQUET_ID}.parquet"
    body = await store.get_bytes(data_key)
    await store.put_bytes(data_key, body[:-1000])
    report = await verify_snapshot(store, await Catalog(store).get(AKIDB_PARQUET_ID))
    assert not report.ok and "bytes" in report.problems[0]
    with pytest.raises(CorruptSnapshotError, match="its sidecar says"):
        await restore_snapshot(
            store, await Catalog(store).get(AKIDB_PARQUET_ID), tmp_path / "x.npy"
        )
    assert not (tmp_path / "x.npy").exists()
    code, _, err = await asyncio.to_thread(
        run_cli, ["snapshots", "verify", AKIDB_PARQUET_ID, "--store", store.root_uri]
    )
    assert code != 0 and "corrupt" in err


def restored_columns(path: Path) -> dict[str, Any]:
    """Vectors, ids, external ids, metadata values and inserted_at (µs) of a restored file."""
    if path.suffix == ".npy":
        return {"vectors": np.load(path)}
    if path.suffix == ".jsonl":
        docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return {
            "vectors": np.array([doc["vector"] for doc in docs], dtype=np.float32),
            "ids": [uuid.UUID(doc["id"]).bytes for doc in docs],
            "external": [doc["external_id"] for doc in docs],
            "metadata": [doc["metadata"] for doc in docs],
            "micros": [_micros(doc["inserted_at"]) for doc in docs],
        }
    if path.suffix == ".arrow":
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    else:
        table = pq.read_table(path)
    return {
        "vectors": np.asarray(table.column("vector").combine_chunks().flatten()).reshape(
            table.num_rows, -1
        ),
        "ids": table.column("document_id").to_pylist(),
        "external": table.column("external_id").to_pylist(),
        "metadata": [
            None if m is None else json.loads(m) for m in table.column("metadata").to_pylist()
        ],
        "micros": table.column("inserted_at").cast(pa.int64()).to_pylist(),
    }


def _micros(text: str) -> int:
    from handlers.akidb.sidecar import parse_rfc3339_nanos

    return parse_rfc3339_nanos(text) // 1000


@pytest.mark.parametrize("extension", [".parquet", ".arrow", ".npy", ".jsonl"])
@pytest.mark.parametrize("snapshot_id", [AKIDB_PARQUET_ID, AKIDB_JSON_ID])
async def test_restore_in_place_bit_for_bit(
    store: ObjectStore, tmp_path: Path, snapshot_id: str, extension: str
) -> None:
    """Every output: vectors to the bit (row 0's edge values named), ids, external ids,
    metadata and inserted_at (ms in AkiDB Parquet; ns → µs from AkiDB JSON)."""
    meta = await Catalog(store).get(snapshot_id)
    rows = AKIDB_JSON_ROWS if snapshot_id == AKIDB_JSON_ID else None
    vectors, ids, facts = akidb_expected(rows)
    out = tmp_path / f"restored{extension}"
    result = await restore_snapshot(store, meta, out)
    assert result.rows == len(facts)
    got = restored_columns(out)
    assert got["vectors"].dtype == np.float32
    assert np.array_equal(got["vectors"].view(np.uint32), vectors.view(np.uint32))
    assert [int(v) for v in got["vectors"][0, :10].view(np.uint32)] == AKIDB_ROW0_BITS
    if extension == ".npy":
        return
    assert got["ids"] == ids
    assert got["external"] == [fact["external_id"] for fact in facts]
    assert got["metadata"] == [fact["metadata"] for fact in facts]
    unit = "inserted_at_ms" if snapshot_id == AKIDB_PARQUET_ID else "inserted_at_ns"
    scale = {"inserted_at_ms": lambda v: v * 1000, "inserted_at_ns": lambda v: v // 1000}[unit]
    assert got["micros"] == [scale(fact[unit]) for fact in facts]


async def test_restore_cli_states_the_precision_change(store: ObjectStore, tmp_path: Path) -> None:
    """Restoring an AkiDB JSON snapshot says that nanoseconds became microseconds."""
    out = tmp_path / "j.npy"
    args = ["snapshots", "restore", AKIDB_JSON_ID, "--out", str(out), "--store", store.root_uri]
    code, text, err = await asyncio.to_thread(run_cli, args)
    assert code == 0, err
    assert "nanoseconds" in text and "microseconds" in text
    assert np.load(out).shape == (AKIDB_JSON_ROWS, 256)


async def test_compressed_json_sidecar_is_reported_not_read(store: ObjectStore) -> None:
    """AkiDB declared compressed JSON snapshots but never wrote them: reported unreadable."""
    key = f"snapshots/{AKIDB_JSON_ID}.meta.json"
    sidecar = json.loads(await store.get_bytes(key))
    await store.put_bytes(key, json.dumps({**sidecar, "compression": "Zstd"}).encode())
    scan = await Catalog(store).scan()
    assert [meta.snapshot_id for meta in scan.snapshots] == [AKIDB_PARQUET_ID]
    [entry] = [e for e in scan.unreadable if e.key == key]
    assert "Zstd-compressed JSON snapshots are not supported" in entry.reason
