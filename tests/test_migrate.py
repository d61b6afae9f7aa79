"""`akisnap migrate`: legacy JSON snapshots (written by the legacy codec) → verified Parquet."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from handlers.catalog import Catalog
from handlers.codecs.json_legacy import JsonPartWriter
from handlers.errors import SourceError
from handlers.migrate import Migrator, migration_request_id
from handlers.model import DocumentBatch, vectors_bit_equal
from handlers.restore import restore_snapshot
from handlers.stores import ObjectStore
from tests.support import open_test_store, run_cli, s3_options, s3_root, unit_vectors


def tricky_batch(rows: int, dim: int, seed: int) -> DocumentBatch:
    """Unit vectors plus the float32 values a decimal round trip most easily gets wrong."""
    vectors = unit_vectors(rows, dim, seed)
    specials = np.array(
        [-0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 0.1, 1 / 3],
        dtype=np.float32,
    )
    vectors[0, : min(dim, len(specials))] = specials[:dim]
    return DocumentBatch.from_arrays(
        vectors,
        document_ids=[uuid.UUID(int=seed * 1_000_000 + i + 1).bytes for i in range(rows)],
        external_ids=[f"doc-{i}" if i % 3 else None for i in range(rows)],
        metadata=[{"i": i, "text": "ünïcode ✓"} if i % 2 else None for i in range(rows)],
    )


def write_legacy(path: Path, batch: DocumentBatch) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = JsonPartWriter(path, batch.dimension)
    writer.write(batch)
    writer.close()
    return path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_test_store("local", tmp_path)
    yield opened
    await opened.close()


async def restored(store: ObjectStore, snapshot_id: str, tmp_path: Path) -> DocumentBatch:
    meta = await Catalog(store).get(snapshot_id)
    out = tmp_path / f"{uuid.uuid4().hex}.parquet"
    await restore_snapshot(store, meta, out)
    return DocumentBatch(pq.read_table(out).combine_chunks().to_batches()[0])


def assert_same(left: DocumentBatch, right: DocumentBatch) -> None:
    assert vectors_bit_equal(left.vectors, right.vectors)
    for column in ("document_id", "external_id", "metadata", "inserted_at"):
        assert left.record_batch.column(column).equals(right.record_batch.column(column)), column


async def test_round_trip_bit_for_bit(store: ObjectStore, tmp_path: Path) -> None:
    """A legacy JSON file becomes a Parquet snapshot whose restore equals the source exactly."""
    batch = tricky_batch(300, 48, seed=1)
    legacy = write_legacy(tmp_path / "legacy" / "products.json", batch)
    migrator = Migrator(store)
    [outcome] = await migrator.migrate(str(legacy))
    assert outcome.status == "migrated", outcome.reason
    assert outcome.collection_id == "products"
    assert (outcome.vectors, outcome.dimension) == (300, 48)
    assert outcome.bytes_before == legacy.stat().st_size
    assert 0 < outcome.bytes_after < outcome.bytes_before
    meta = await Catalog(store).get(str(outcome.snapshot_id))
    assert (meta.format, meta.request_id) == ("parquet", migration_request_id(legacy.as_uri()))
    assert_same(await restored(store, meta.snapshot_id, tmp_path), batch)
    again = await migrator.migrate(legacy.as_uri())
    assert [o.status for o in again] == ["already_migrated"]
    assert again[0].snapshot_id == outcome.snapshot_id
    await migrator.close()


async def test_folder_idempotent_and_corrupt_refused(store: ObjectStore, tmp_path: Path) -> None:
    """A folder migrates file by file; a rerun migrates nothing; broken files are refused."""
    folder = tmp_path / "legacy"
    batches = [tricky_batch(50, 16, seed=s) for s in range(3)]
    write_legacy(folder / "a.json", batches[0])
    write_legacy(folder / "b.json", batches[1])
    write_legacy(folder / "nested" / "c.json", batches[2])
    (folder / "d.json").write_text('{"format": "akidb.snapshot.json", "documents": [{"id": ')
    nan = '{"documents": [{"id": "%s", "vector": [1.0, NaN]}]}' % uuid.uuid4()  # noqa: UP031
    (folder / "e.json").write_text(nan)
    (folder / "notes.txt").write_text("not a snapshot")
    migrator = Migrator(store, collection_id="legacy")
    first = await migrator.migrate(folder.as_uri())
    status = {Path(o.source).name: o.status for o in first}
    assert status == {
        "a.json": "migrated",
        "b.json": "migrated",
        "c.json": "migrated",
        "d.json": "refused",
        "e.json": "refused",
    }
    reasons = {Path(o.source).name: o.reason for o in first if o.status == "refused"}
    assert "not valid JSON" in reasons["d.json"]
    assert "not finite" in reasons["e.json"]
    snapshots = await Catalog(store).list("legacy")
    assert len(snapshots) == 3
    by_source = {Path(o.source).name: o.snapshot_id for o in first if o.status == "migrated"}
    for name, batch in zip(("a.json", "b.json", "c.json"), batches, strict=True):
        assert_same(await restored(store, str(by_source[name]), tmp_path), batch)
    second = await migrator.migrate(str(folder))
    assert sorted(o.status for o in second) == ["already_migrated"] * 3 + ["refused"] * 2
    assert len(await Catalog(store).list("legacy")) == 3
    with pytest.raises(SourceError):
        await migrator.migrate(str(tmp_path / "nothing-here"))
    await migrator.close()


async def test_from_s3_prefix_to_s3_store(tmp_path: Path) -> None:
    """Legacy files under an S3 prefix migrate into an S3 store, bit for bit."""
    store = open_test_store("s3", tmp_path)
    uploads = open_test_store("s3", tmp_path)
    batch = tricky_batch(120, 24, seed=7)
    legacy = write_legacy(tmp_path / "orders.json", batch)
    await uploads.put_bytes("legacy/orders.json", legacy.read_bytes())
    source = uploads.root_uri.rstrip("/") + "/legacy/"
    migrator = Migrator(store, s3=s3_options())
    try:
        [outcome] = await migrator.migrate(source)
        assert outcome.status == "migrated", outcome.reason
        assert outcome.collection_id == "orders"
        assert_same(await restored(store, str(outcome.snapshot_id), tmp_path), batch)
        [again] = await migrator.migrate(source + "orders.json")
        assert again.status == "already_migrated"
    finally:
        await migrator.close()
        await store.close()
        await uploads.close()
    assert s3_root("x").startswith("s3://")


def test_migrate_cli(tmp_path: Path) -> None:
    """One line per file with sizes before/after; --json lists outcomes; refusals exit 1."""
    folder = tmp_path / "legacy"
    write_legacy(folder / "p.json", tricky_batch(20, 8, seed=3))
    root = (tmp_path / "store").as_uri()
    code, out, err = run_cli(["migrate", "--from", str(folder), "--store", root])
    assert code == 0, err
    assert out.startswith("migrated ") and "p.json -> p/" in out and "1 migrated" in out
    code, out, _ = run_cli(["migrate", "--from", folder.as_uri(), "--store", root, "--json"])
    assert code == 0 and [o["status"] for o in json.loads(out)] == ["already_migrated"]
    (folder / "q.json").write_text("[]")
    code, out, err = run_cli(["migrate", "--from", str(folder), "--store", root])
    assert code == 5 and "refused" in out and "1 of 2 legacy file(s) refused" in err
