"""`--format akidb-parquet | akidb-json`: exactly the keys, file and sidecar AkiDB 2.0
restores, values equal to the input, and akisnap's own SHA-256 beside them."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handlers.akidb.json_codec import read_akidb_json
from handlers.akidb.parquet_codec import akidb_schema, read_akidb_parquet
from handlers.akidb.sidecar import SIDECAR_FIELDS
from handlers.catalog import Catalog
from handlers.create import SnapshotCreator
from handlers.errors import InvalidRequestError
from handlers.job import SnapshotJob, UriSource, check_job
from handlers.metadata import SnapshotMetadata
from handlers.model import DocumentBatch
from handlers.stores import ObjectStore
from handlers.verify import verify_snapshot
from tests.support import (
    AKIDB_COLLECTION,
    AKIDB_DATA,
    AKIDB_JSON_ID,
    documents_table,
    open_test_store,
    run_cli,
    unit_vectors,
    write_export,
)

COLLECTION = "019a9000-0000-7000-8000-00000000c0de"


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_test_store(request.param, tmp_path)
    yield opened
    await opened.close()


def ms_table(rows: int, dim: int, seed: int = 0) -> pa.Table:
    """Documents whose inserted_at is whole milliseconds (AkiDB Parquet's precision)."""
    table = documents_table(rows, dim, seed)
    micros = np.arange(rows, dtype=np.int64) * 1000 + 1_763_173_543_123_000
    stamps = pa.array(micros, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return table.set_column(4, "inserted_at", stamps)


async def create(
    store: ObjectStore, tmp_path: Path, table: pa.Table, fmt: str, collection: str = COLLECTION
) -> SnapshotMetadata:
    uri = write_export(table, tmp_path / "exports", f"{uuid.uuid4().hex}.parquet")
    creator = SnapshotCreator(store, source_roots=[uri])
    job = SnapshotJob(collection, "req-" + fmt, UriSource(uri, "parquet"), format=fmt)  # type: ignore[arg-type]
    return (await creator(job)).metadata


async def fetch(store: ObjectStore, key: str, tmp_path: Path) -> Path:
    path = tmp_path / key.replace("/", "_")
    path.write_bytes(await store.get_bytes(key))
    return path


def assert_values_equal(back: pa.Table, table: pa.Table) -> None:
    for name in ("document_id", "external_id", "metadata", "inserted_at"):
        assert back.column(name).to_pylist() == table.column(name).to_pylist(), name
    got = np.asarray(back.column("vector").combine_chunks().flatten(), dtype=np.float32)
    want = np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


async def test_akidb_parquet_layout_schema_row_groups(store: ObjectStore, tmp_path: Path) -> None:
    """25,000 rows: one file at AkiDB's key, six columns by position and type, SNAPPY, row
    groups of 10,000; the sidecar's eight fields; akisnap's record first; values equal."""
    table = ms_table(25_000, 4, seed=2)
    meta = await create(store, tmp_path, table, "akidb-parquet")
    base = f"snapshots/{COLLECTION}/{meta.snapshot_id}"
    keys = sorted([info.key async for info in store.list("snapshots/")])
    assert keys == [f"{base}.akisnap-sha256", f"{base}.metadata.json", f"{base}.parquet"]
    sidecar_raw = await store.get_bytes(f"{base}.metadata.json")
    sidecar = json.loads(sidecar_raw)
    assert list(sidecar) == list(SIDECAR_FIELDS)
    assert b" " not in sidecar_raw  # compact, as serde_json prints it
    path = await fetch(store, f"{base}.parquet", tmp_path)
    assert sidecar == {
        "snapshot_id": meta.snapshot_id,
        "collection_id": COLLECTION,
        "vector_count": 25_000,
        "dimension": 4,
        "created_at": sidecar["created_at"],
        "size_bytes": path.stat().st_size,
        "compression": "Snappy",
        "format": "Parquet",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", sidecar["created_at"])
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow.equals(akidb_schema(4))
    for position, field in enumerate(akidb_schema(4)):
        assert parquet.schema_arrow.field(position).name == field.name
    groups = [parquet.metadata.row_group(i) for i in range(parquet.metadata.num_row_groups)]
    assert [group.num_rows for group in groups] == [10_000, 10_000, 5_000]
    assert {group.column(c).compression for group in groups for c in range(6)} == {"SNAPPY"}
    assert set(parquet.metadata.metadata) == {b"ARROW:schema"}
    assert_values_equal(pa.Table.from_batches(list(read_akidb_parquet(path, 4))), table)
    record = json.loads(await store.get_bytes(f"{base}.akisnap-sha256"))
    assert record["sha256"] == meta.parts[0].sha256 and record["request_id"] == "req-akidb-parquet"
    assert (await Catalog(store).get(meta.snapshot_id)).format == "akidb-parquet"


async def test_akidb_json_is_byte_for_byte_what_akidb_wrote(
    store: ObjectStore, tmp_path: Path
) -> None:
    """The AkiDB-written JSON fixture read and written again gives AkiDB's bytes back, but
    for the sub-microsecond digits of inserted_at (akisnap keeps microseconds)."""
    source = AKIDB_DATA / "json-store" / "snapshots" / f"{AKIDB_JSON_ID}.json"
    creator = SnapshotCreator(store, source_roots=[source.as_uri()])
    job = SnapshotJob(
        AKIDB_COLLECTION, "req-json", UriSource(source.as_uri(), "akidb-json"), format="akidb-json"
    )
    meta = (await creator(job)).metadata
    keys = sorted([info.key async for info in store.list("snapshots/")])
    base = f"snapshots/{meta.snapshot_id}"
    assert keys == [f"{base}.akisnap-sha256", f"{base}.json", f"{base}.meta.json"]
    written = await store.get_bytes(f"{base}.json")
    expected = re.sub(rb'(\.\d{6})\d{3}Z"', rb'\g<1>000Z"', source.read_bytes())
    assert written == expected
    sidecar = json.loads(await store.get_bytes(f"{base}.meta.json"))
    assert list(sidecar) == list(SIDECAR_FIELDS)
    assert (sidecar["compression"], sidecar["format"]) == ("None", "Json")
    assert (sidecar["vector_count"], sidecar["size_bytes"]) == (100, len(written))


async def test_akidb_json_values_equal_input(store: ObjectStore, tmp_path: Path) -> None:
    """Native documents written as AkiDB JSON decode back to the same values, µs intact."""
    table = documents_table(300, 16, seed=4)
    meta = await create(store, tmp_path, table, "akidb-json")
    path = await fetch(store, meta.parts[0].key, tmp_path)
    body = json.loads(path.read_bytes())
    assert isinstance(body, list) and list(body[0]) == [
        "doc_id",
        "external_id",
        "vector",
        "metadata",
        "inserted_at",
    ]
    assert_values_equal(pa.Table.from_batches(list(read_akidb_json(path, 16))), table)


async def test_verify_uses_the_recorded_sha256(store: ObjectStore, tmp_path: Path) -> None:
    """A same-size change to an akisnap-written AkiDB file fails its SHA-256 check."""
    meta = await create(store, tmp_path, documents_table(50, 8), "akidb-json")
    report = await verify_snapshot(store, await Catalog(store).get(meta.snapshot_id))
    assert report.ok and not report.notes
    body = bytearray(await store.get_bytes(meta.parts[0].key))
    at = body.index(b"0.", 100)
    body[at + 2] = ord("9") if body[at + 2] != ord("9") else ord("8")
    await store.put_bytes(meta.parts[0].key, bytes(body))
    report = await verify_snapshot(store, await Catalog(store).get(meta.snapshot_id))
    assert report.problems == [f"part {meta.parts[0].key} fails its SHA-256 check"]


async def test_collection_must_be_a_uuid(tmp_path: Path) -> None:
    """AkiDB names collections by UUID: any other id is refused before anything is read."""
    with pytest.raises(InvalidRequestError, match="needs a UUID collection id"):
        check_job(
            SnapshotJob(
                "products", "r", UriSource("file:///x.parquet", "parquet"), format="akidb-json"
            )
        )
    uri = write_export(documents_table(5, 4), tmp_path / "exports")
    store = (tmp_path / "s").as_uri()
    args = ["snapshots", "create", "--collection", "products", "--from", uri, "--store", store]
    code, _, err = await asyncio.to_thread(run_cli, [*args, "--format", "akidb-parquet"])
    assert code != 0 and "needs a UUID collection id" in err
    ok = ["snapshots", "create", "--collection", COLLECTION, "--from", uri, "--store", store]
    code, out, err = await asyncio.to_thread(run_cli, [*ok, "--format", "akidb-parquet"])
    assert code == 0 and "akidb-parquet" in out, err
    assert "note: inserted_at: AkiDB Parquet holds milliseconds" in out
    code, out, _ = await asyncio.to_thread(run_cli, ["snapshots", "list", "--store", store])
    assert "akidb-parquet" in out


def test_edge_values_survive_the_akidb_writers(tmp_path: Path) -> None:
    """-0.0, subnormals, ±f32::MAX through both AkiDB writers and readers, to the bit."""
    from handlers.codecs import open_part_writer, read_part

    vectors = unit_vectors(3, 10)
    vectors[0] = np.array(
        [-0.0, 1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38, 0.1, 1 / 3, 2**24, 1e-38, -1e-45],
        dtype=np.float32,
    )
    batch = DocumentBatch.from_arrays(vectors, id_seed="edges")
    for fmt in ("akidb-parquet", "akidb-json"):
        path = tmp_path / f"edges-{fmt}"
        writer = open_part_writer(path, fmt, 10, "zstd")
        writer.write(batch)
        writer.close()
        back = DocumentBatch(next(iter(read_part(path, fmt, 10))))
        assert np.array_equal(back.vectors.view(np.uint32), vectors.view(np.uint32)), fmt
