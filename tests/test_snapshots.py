"""Create / restore / list / verify / delete on both stores: the local directory and real S3."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handlers.catalog import Catalog
from handlers.create import CreateOutcome, SnapshotCreator, existing_or_create
from handlers.errors import (
    CorruptSnapshotError,
    InvalidDocumentsError,
    SnapshotNotFoundError,
    SourceError,
    SourceNotAllowedError,
    WriteNotVerifiedError,
)
from handlers.job import InlineSource, SnapshotJob, UriSource
from handlers.layout import metadata_key
from handlers.metadata import SnapshotMetadata
from handlers.model import DocumentBatch, vectors_bit_equal
from handlers.restore import restore_snapshot
from handlers.stores import ObjectStore
from handlers.stores.local import LocalStore
from handlers.verify import verify_snapshot
from tests.support import (
    S3_SERVERS,
    documents_table,
    open_test_store,
    real_embeddings,
    unit_vectors,
    write_export,
)


@pytest.fixture(params=["local", *S3_SERVERS])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_test_store(request.param, tmp_path)
    yield opened
    await opened.close()


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
def creator(store: ObjectStore, exports: Path) -> SnapshotCreator:
    return SnapshotCreator(
        store, source_roots=[store.root_uri, exports.as_uri()], part_size_bytes=1024 * 1024
    )


def export_job(
    exports: Path, table: pa.Table, collection: str = "products", fmt: str = "parquet"
) -> SnapshotJob:
    uri = write_export(table, exports, f"{uuid.uuid4().hex}.parquet")
    return SnapshotJob(collection, str(uuid.uuid4()), UriSource(uri, "parquet"), format=fmt)  # type: ignore[arg-type]


async def restored_table(store: ObjectStore, meta: SnapshotMetadata, tmp_path: Path) -> pa.Table:
    out = tmp_path / f"{uuid.uuid4().hex}.parquet"
    await restore_snapshot(store, meta, out)
    return pq.read_table(out)


def assert_same_documents(left: pa.Table, right: pa.Table) -> None:
    assert left.num_rows == right.num_rows
    assert vectors_bit_equal(
        DocumentBatch(left.combine_chunks().to_batches()[0]).vectors,
        DocumentBatch(right.combine_chunks().to_batches()[0]).vectors,
    )
    assert left.column("document_id").equals(right.column("document_id"))


async def test_creator_opens_on_a_store(creator: SnapshotCreator) -> None:
    """A creator can be made on each store and sees an empty catalog."""
    assert await creator.catalog.list() == []


@pytest.mark.parametrize("fmt", ["parquet", "akidb-json"])
async def test_round_trip_50x256(
    creator: SnapshotCreator, store: ObjectStore, exports: Path, tmp_path: Path, fmt: str
) -> None:
    """50×256 vectors come back bit for bit with their ids, native and as AkiDB JSON."""
    table = documents_table(50, 256, seed=1)
    collection = str(uuid.uuid4()) if fmt.startswith("akidb-") else "products"
    outcome = await creator(export_job(exports, table, collection, fmt=fmt))
    assert outcome.metadata.vector_count == 50 and outcome.metadata.dimension == 256
    assert_same_documents(await restored_table(store, outcome.metadata, tmp_path), table)


async def test_large_1000x512_and_integrity_bit_for_bit(
    creator: SnapshotCreator, store: ObjectStore, exports: Path, tmp_path: Path
) -> None:
    """1000×512 over several parts restores bit for bit; every part hash is recorded."""
    table = documents_table(1000, 512, seed=2)
    meta = (await creator(export_job(exports, table))).metadata
    assert len(meta.parts) > 1, "part size of 1 MiB should split 2 MB of vectors"
    assert sum(part.rows for part in meta.parts) == 1000
    assert all(len(part.sha256) == 64 for part in meta.parts)
    assert_same_documents(await restored_table(store, meta, tmp_path), table)


async def test_metadata_fields(creator: SnapshotCreator, exports: Path) -> None:
    """The metadata file holds ids, format, compression, dimension, count, labels, parts."""
    job = export_job(exports, documents_table(20, 8))
    job = SnapshotJob(job.collection_id, "request-42", job.source, labels={"trigger": "test"})
    meta = (await creator(job)).metadata
    body = meta.to_dict()
    assert (
        body["snapshot_id"]
        == job.snapshot_id
        == str(uuid.uuid5(uuid.UUID("6f1c2a9e-0c4b-5d7e-9a31-2b8f4e6d0a17"), "products/request-42"))
    )
    assert (body["request_id"], body["collection_id"]) == ("request-42", "products")
    assert (body["format"], body["compression"], body["dimension"]) == ("parquet", "zstd", 8)
    assert body["vector_count"] == 20 and body["labels"] == {"trigger": "test"}
    assert body["total_bytes"] == sum(part["size"] for part in body["parts"]) > 0
    assert body["created_at"].endswith("+00:00")


async def test_same_request_writes_same_snapshot(creator: SnapshotCreator, exports: Path) -> None:
    """A redo of the same request id lands on the same snapshot id, not a second snapshot."""
    job = export_job(exports, documents_table(10, 4))
    first = await creator(job)
    assert await creator.existing(job) == first.metadata
    await creator(job)
    assert [m.snapshot_id for m in await creator.catalog.list()] == [job.snapshot_id]


async def test_existing_or_create_makes_a_request_once(
    creator: SnapshotCreator, exports: Path
) -> None:
    """The first call creates; a redo finds the committed snapshot and creates nothing."""
    job = export_job(exports, documents_table(10, 4))
    calls: list[str] = []

    async def create() -> CreateOutcome:
        calls.append(job.request_id)
        return await creator(job)

    first = await existing_or_create(creator, job, create)
    again = await existing_or_create(creator, job, create)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.metadata == first.metadata and len(calls) == 1


async def test_empty_input_is_refused(creator: SnapshotCreator, exports: Path) -> None:
    """An export with no rows is refused and nothing becomes visible."""
    empty = documents_table(1, 4).slice(0, 0)
    with pytest.raises(InvalidDocumentsError, match="no documents"):
        await creator(export_job(exports, empty))
    assert await creator.catalog.list() == []


async def test_dimension_mismatch_is_refused(creator: SnapshotCreator) -> None:
    """Inline documents of two dimensions are refused."""
    documents = [
        {"id": str(uuid.uuid4()), "vector": [1.0, 2.0]},
        {"id": str(uuid.uuid4()), "vector": [1.0]},
    ]
    with pytest.raises(InvalidDocumentsError, match="dimension"):
        await creator(SnapshotJob("c", "r", InlineSource(documents)))
    assert await creator.catalog.list() == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
async def test_non_finite_export_leaves_nothing_visible(
    creator: SnapshotCreator, store: ObjectStore, exports: Path, bad: float
) -> None:
    """NaN/±Inf anywhere in an export is refused, with no snapshot and no part left."""
    vectors = unit_vectors(500, 16)
    vectors[377, 5] = bad
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16)
    table = pa.table({"document_id": [uuid.uuid4().bytes for _ in range(500)], "vector": fixed})
    with pytest.raises(InvalidDocumentsError, match="non-finite"):
        await creator(export_job(exports, table))
    assert await creator.catalog.list() == []
    assert [info.key async for info in store.list("snapshots/")] == []


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file:///tmp/../etc/passwd",
        "s3://other-bucket/x.parquet",
        "http://example.invalid/x.parquet",
    ],
)
async def test_source_outside_allow_list_is_refused(creator: SnapshotCreator, uri: str) -> None:
    """A request cannot make the service read outside the allowed roots."""
    with pytest.raises(SourceError):
        await creator(SnapshotJob("c", "r", UriSource(uri, "parquet")))


async def test_symlink_out_of_the_exports_root_is_refused(
    creator: SnapshotCreator, exports: Path
) -> None:
    """A symlink inside the exports root that points outside it is refused."""
    exports.mkdir(parents=True, exist_ok=True)
    (exports / "sneaky.parquet").symlink_to("/etc/passwd")
    with pytest.raises(SourceNotAllowedError):
        await creator(
            SnapshotJob("c", "r", UriSource((exports / "sneaky.parquet").as_uri(), "parquet"))
        )


async def test_restore_of_unknown_id_is_not_found(store: ObjectStore) -> None:
    """Asking for a snapshot that does not exist is SnapshotNotFoundError."""
    with pytest.raises(SnapshotNotFoundError):
        await Catalog(store).get(str(uuid.uuid4()))


async def test_list_across_collections_and_delete(
    creator: SnapshotCreator, store: ObjectStore, exports: Path
) -> None:
    """List sees every collection or one; delete removes metadata and parts."""
    a = (await creator(export_job(exports, documents_table(5, 4), "alpha"))).metadata
    b = (await creator(export_job(exports, documents_table(5, 4), "beta"))).metadata
    catalog = Catalog(store)
    assert {m.snapshot_id for m in await catalog.list()} == {a.snapshot_id, b.snapshot_id}
    assert [m.snapshot_id for m in await catalog.list("beta")] == [b.snapshot_id]
    await catalog.delete(a.snapshot_id)
    assert [m.snapshot_id for m in await catalog.list()] == [b.snapshot_id]
    assert [i.key async for i in store.list(f"snapshots/alpha/{a.snapshot_id}")] == []


async def test_verify_passes_on_a_good_snapshot(
    creator: SnapshotCreator, store: ObjectStore, exports: Path
) -> None:
    """Quick and full verify find nothing wrong with a fresh snapshot."""
    meta = (await creator(export_job(exports, documents_table(100, 32)))).metadata
    assert (await verify_snapshot(store, meta)).ok
    assert (await verify_snapshot(store, meta, full=True)).ok


def _flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
async def test_damaged_part_is_detected_and_refused(
    creator: SnapshotCreator, store: ObjectStore, exports: Path, tmp_path: Path, damage: str
) -> None:
    """A flipped byte, a truncated or a missing part fails verify and restore."""
    meta = (await creator(export_job(exports, documents_table(200, 32)))).metadata
    key = meta.parts[0].key
    data = await store.get_bytes(key)
    if damage == "missing":
        await store.delete(key)
    else:
        await store.put_bytes(key, _flip_byte(data) if damage == "flip" else data[:-7])
    report = await verify_snapshot(store, meta)
    assert not report.ok and key in report.problems[0]
    out = tmp_path / "out.npy"
    with pytest.raises(CorruptSnapshotError):
        await restore_snapshot(store, meta, out)
    assert not out.exists()


async def test_metadata_without_parts_is_detected(
    creator: SnapshotCreator, store: ObjectStore, exports: Path, tmp_path: Path
) -> None:
    """A metadata file whose parts are all gone fails verify and restore."""
    meta = (await creator(export_job(exports, documents_table(50, 8)))).metadata
    await creator.catalog.delete_parts(meta.collection_id, meta.snapshot_id)
    assert await store.head(metadata_key(meta.collection_id, meta.snapshot_id)) is not None
    problems = (await verify_snapshot(store, meta)).problems
    assert len(problems) == len(meta.parts) + len(meta.side_objects)
    with pytest.raises(CorruptSnapshotError, match="missing"):
        await restore_snapshot(store, meta, tmp_path / "x.parquet")


async def test_real_embeddings_restore_to_every_format(
    creator: SnapshotCreator, store: ObjectStore, exports: Path, tmp_path: Path
) -> None:
    """3000 real embeddings restore bit for bit to .parquet, .arrow, .npy and .jsonl."""
    table = real_embeddings(3000)
    meta = (await creator(export_job(exports, table))).metadata
    expected = DocumentBatch(table.combine_chunks().to_batches()[0]).vectors
    npy = tmp_path / "v.npy"
    await restore_snapshot(store, meta, npy)
    assert vectors_bit_equal(np.load(npy), expected)
    arrow = tmp_path / "v.arrow"
    await restore_snapshot(store, meta, arrow)
    with pa.memory_map(str(arrow)) as source:
        restored = pa.ipc.open_file(source).read_all()
    assert restored.column("external_id").to_pylist() == table.column("external_id").to_pylist()
    jsonl = tmp_path / "v.jsonl"
    await restore_snapshot(store, meta, jsonl)
    with jsonl.open() as lines:
        assert sum(1 for _ in lines) == 3000
    assert meta.json_equivalent_bytes > 2 * meta.total_bytes


class _CorruptingStore(LocalStore):
    """A local store whose disk flips a bit in every part it is given."""

    async def put_file(self, key: str, path: Path, *, sha256_hex: str) -> bool:
        await super().put_file(key, path, sha256_hex=sha256_hex)
        target = self.path_of(key)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x04
        target.write_bytes(bytes(data))
        return False


async def test_parts_that_do_not_read_back_are_retryable_and_not_committed(
    tmp_path: Path,
) -> None:
    """A part that reads back wrong right after upload is a transient error; nothing commits."""
    store = _CorruptingStore(tmp_path / "store")
    exports = tmp_path / "exports"
    creator = SnapshotCreator(store, source_roots=[exports.as_uri()])
    with pytest.raises(WriteNotVerifiedError) as caught:
        await creator(export_job(exports, documents_table(50, 8)))
    assert caught.value.retryable
    assert await creator.catalog.list() == []
