"""`akisnap migrate`: AkiDB 2.0 snapshots (written by AkiDB's own code) → verified native ones."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from handlers.catalog import Catalog
from handlers.errors import SourceError
from handlers.migrate import Migrator, migration_request_id, split_source
from handlers.restore import restore_snapshot
from handlers.stores import ObjectStore
from tests.support import (
    AKIDB_COLLECTION,
    AKIDB_DATA,
    AKIDB_JSON_ID,
    AKIDB_JSON_ROWS,
    AKIDB_PARQUET_ID,
    akidb_expected,
    open_test_store,
    put_akidb_store,
    restored_columns,
    run_cli,
    s3_options,
)


@pytest.fixture(params=["local", "s3"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ObjectStore, ObjectStore]]:
    """(an AkiDB store root holding both fixture snapshots, an empty native store)."""
    source = open_test_store(request.param, tmp_path / "source")
    target = open_test_store(request.param, tmp_path / "target")
    await put_akidb_store(source)
    yield source, target
    await source.close()
    await target.close()


async def assert_restores_like_akidb(
    store: ObjectStore, snapshot_id: str, rows: int | None, tmp_path: Path
) -> None:
    vectors, ids, facts = akidb_expected(rows)
    meta = await Catalog(store).get(snapshot_id)
    out = tmp_path / f"{uuid.uuid4().hex}.parquet"
    await restore_snapshot(store, meta, out)
    got = restored_columns(out)
    assert np.array_equal(got["vectors"].view(np.uint32), vectors.view(np.uint32))
    assert got["ids"] == ids
    assert got["external"] == [fact["external_id"] for fact in facts]
    assert got["metadata"] == [fact["metadata"] for fact in facts]
    if rows is None:  # the AkiDB Parquet snapshot: milliseconds
        assert got["micros"] == [fact["inserted_at_ms"] * 1000 for fact in facts]
    else:  # the AkiDB JSON snapshot: nanoseconds, kept to the microsecond
        assert got["micros"] == [fact["inserted_at_ns"] // 1000 for fact in facts]
    npy = tmp_path / f"{uuid.uuid4().hex}.npy"
    await restore_snapshot(store, meta, npy)
    assert np.array_equal(np.load(npy).view(np.uint32), vectors.view(np.uint32))


async def test_store_root_migrates_both_then_nothing(
    stores: tuple[ObjectStore, ObjectStore], tmp_path: Path
) -> None:
    """Both AkiDB snapshots become native snapshots of the same collection, bit for bit,
    with AkiDB's id and created_at kept as labels; a second run migrates nothing."""
    source, target = stores
    migrator = Migrator(target, s3=s3_options() if source.root_uri.startswith("s3") else None)
    try:
        outcomes = await migrator.migrate(source.root_uri)
        assert [o.status for o in outcomes] == ["migrated", "migrated"], outcomes
        by_akidb = {o.akidb_snapshot_id: o for o in outcomes}
        assert set(by_akidb) == {AKIDB_PARQUET_ID, AKIDB_JSON_ID}
        parquet, json_one = by_akidb[AKIDB_PARQUET_ID], by_akidb[AKIDB_JSON_ID]
        assert (
            parquet.bytes_before
            == (
                AKIDB_DATA
                / "parquet-store"
                / "snapshots"
                / AKIDB_COLLECTION
                / f"{AKIDB_PARQUET_ID}.parquet"
            )
            .stat()
            .st_size
        )
        assert parquet.bytes_after > 0 and (parquet.vectors, parquet.dimension) == (1000, 256)
        assert json_one.notes and "nanoseconds" in json_one.notes[0] and not parquet.notes
        listed = await Catalog(target).list()
        assert {meta.collection_id for meta in listed} == {AKIDB_COLLECTION}
        assert {meta.format for meta in listed} == {"parquet"}
        for meta in listed:
            akidb_id = meta.labels["akidb_snapshot_id"]
            assert meta.request_id == migration_request_id(akidb_id)
            assert meta.labels["akidb_created_at"] == "2025-11-15T02:43:24.111111110Z"
            assert meta.labels["migrated_from"].endswith(
                f"{akidb_id}.json" if akidb_id == AKIDB_JSON_ID else f"{akidb_id}.parquet"
            )
        await assert_restores_like_akidb(target, str(parquet.snapshot_id), None, tmp_path)
        await assert_restores_like_akidb(
            target, str(json_one.snapshot_id), AKIDB_JSON_ROWS, tmp_path
        )
        again = await migrator.migrate(source.root_uri)
        assert [o.status for o in again] == ["already_migrated"] * 2
        assert len(await Catalog(target).list()) == 2
        [one] = await migrator.migrate(f"{source.root_uri}/snapshots/{AKIDB_JSON_ID}.meta.json")
        assert (one.status, one.snapshot_id) == ("already_migrated", json_one.snapshot_id)
    finally:
        await migrator.close()


async def test_sidecar_count_and_dimension_are_checked(
    stores: tuple[ObjectStore, ObjectStore],
) -> None:
    """A sidecar whose vector_count or dimension disagrees with the file is refused, and
    nothing is written; garbage beside it is refused with its reason; the rest migrates."""
    source, target = stores
    key = f"snapshots/{AKIDB_JSON_ID}.meta.json"
    sidecar = json.loads(await source.get_bytes(key))
    await source.put_bytes(key, json.dumps({**sidecar, "vector_count": 1000}).encode())
    pkey = f"snapshots/{AKIDB_COLLECTION}/{AKIDB_PARQUET_ID}.metadata.json"
    psidecar = json.loads(await source.get_bytes(pkey))
    await source.put_bytes(pkey, json.dumps({**psidecar, "dimension": 255}).encode())
    await source.put_bytes("snapshots/zz.meta.json", b"\x00garbage")
    migrator = Migrator(target, s3=s3_options() if source.root_uri.startswith("s3") else None)
    try:
        outcomes = await migrator.migrate(source.root_uri + "/snapshots/")
    finally:
        await migrator.close()
    assert [o.status for o in outcomes] == ["refused"] * 3
    reasons = " | ".join(o.reason for o in outcomes)
    assert "holds 100 documents, its sidecar says 1000" in reasons
    assert "vector" in reasons and "255" in reasons
    assert "not JSON" in reasons
    assert await Catalog(target).list() == []


async def test_one_file_and_prefix_forms(tmp_path: Path) -> None:
    """--from names one data file, a collection prefix, or nothing AkiDB: each as expected."""
    source = open_test_store("local", tmp_path / "source")
    target = open_test_store("local", tmp_path / "target")
    await put_akidb_store(source)
    migrator = Migrator(target)
    try:
        prefix = f"{source.root_uri}/snapshots/{AKIDB_COLLECTION}/"
        [only] = await migrator.migrate(prefix)
        assert (only.status, only.akidb_snapshot_id) == ("migrated", AKIDB_PARQUET_ID)
        file_path = tmp_path / "source" / "store" / "snapshots" / f"{AKIDB_JSON_ID}.json"
        [single] = await migrator.migrate(str(file_path))
        assert (single.status, single.akidb_snapshot_id) == ("migrated", AKIDB_JSON_ID)
        with pytest.raises(SourceError, match=r"no AkiDB 2\.0 snapshots"):
            await migrator.migrate(str(tmp_path / "target" / "store"))
    finally:
        await migrator.close()
        await source.close()
        await target.close()
    assert split_source("s3://b/root/snapshots/C/x.parquet") == ("s3://b/root", "C/x.parquet")
    assert split_source("s3://b/root") == ("s3://b/root", "")


async def test_migrate_cli_lines_sizes_and_exit_codes(tmp_path: Path) -> None:
    """One line per snapshot with sizes before/after; --json; a refusal exits non-zero."""
    source = open_test_store("local", tmp_path / "source")
    await put_akidb_store(source)
    await source.close()
    root, new = source.root_uri, (tmp_path / "new").as_uri()
    code, out, err = await asyncio.to_thread(run_cli, ["migrate", "--from", root, "--store", new])
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("migrated")]
    assert len(lines) == 2 and all(" -> " in line and "KiB" in line for line in lines)
    assert "2 migrated, 0 already migrated, 0 refused" in out
    assert "note: inserted_at: AkiDB JSON holds nanoseconds" in out
    code, out, _ = await asyncio.to_thread(
        run_cli, ["migrate", "--from", root, "--store", new, "--json"]
    )
    assert code == 0 and [o["status"] for o in json.loads(out)] == ["already_migrated"] * 2
    (tmp_path / "source" / "store" / "snapshots" / "junk.meta.json").write_text("{")
    code, out, err = await asyncio.to_thread(run_cli, ["migrate", "--from", root, "--store", new])
    assert code == 5 and "refused" in out and "1 of 3 AkiDB snapshot(s) refused" in err
