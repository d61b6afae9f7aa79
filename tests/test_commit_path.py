"""The write path of a new snapshot: few S3 calls, a commit that never overwrites, no read-back
where the server vouched for the bytes. Against the real S3 server (and the local store)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from handlers.create import SnapshotCreator
from handlers.errors import WriteNotVerifiedError
from handlers.job import InlineSource, SnapshotJob
from handlers.layout import metadata_key
from handlers.metadata import SnapshotMetadata
from handlers.model import DocumentBatch, bytes_per_row_estimate
from handlers.sources import OpenedSource
from handlers.stages import StageClock
from handlers.stores import ObjectStore, open_store
from handlers.stores import conditional as conditional_module
from handlers.stores.local import LocalStore
from handlers.stores.s3 import S3Store
from handlers.verify import verify_snapshot
from tests.support import open_test_store, s3_options, s3_root, unit_vectors


def small_job(rows: int = 1000, dim: int = 384, request_id: str | None = None) -> SnapshotJob:
    vectors = unit_vectors(rows, dim, seed=3)
    documents = [{"id": str(uuid.uuid4()), "vector": vectors[i].tolist()} for i in range(rows)]
    return SnapshotJob("calls", request_id or str(uuid.uuid4()), InlineSource(documents))


class CallLog:
    """Every S3 operation a client sends, by name (botocore's own event hook)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, model: Any, **_: Any) -> None:
        self.calls.append(model.name)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
async def s3_store() -> AsyncIterator[S3Store]:
    store = open_store(s3_root(f"tests/{uuid.uuid4().hex}"), s3_options())
    assert isinstance(store, S3Store)
    yield store
    async for info in store.list(""):
        await store.delete(info.key)
    await store.close()


async def call_log(store: S3Store) -> CallLog:
    log = CallLog()
    client = await store._s3()
    client.meta.events.register("before-call.s3", log)
    return log


@pytest.fixture
def ignored_condition(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Play a server that ignores If-None-Match: the probe's second PUT goes without it, so
    the real server answers 200 (an overwrite), exactly what such a server answers."""
    monkeypatch.setattr(conditional_module, "PROBE_SECOND_CONDITION", None)
    yield


async def test_small_new_snapshot_takes_three_calls(s3_store: S3Store) -> None:
    """Existence check, part PUT (server checks its SHA-256), conditional metadata PUT."""
    creator = SnapshotCreator(s3_store, source_roots=[])
    await creator(small_job())  # the first commit probes the server once
    log = await call_log(s3_store)
    job = small_job()
    assert await creator.existing(job) is None
    outcome = await creator(job)
    assert not outcome.duplicate
    assert log.take() == ["GetObject", "PutObject", "PutObject"]
    assert s3_store.conditional_writes is True
    assert s3_store.sends_checksum is True


async def test_conditional_commit_refusal_is_a_duplicate(s3_store: S3Store) -> None:
    """A redo past the existence check (other settings, too) finds the commit refused: the
    first snapshot stays as it was, every byte, and the redo reports it as a duplicate."""
    creator = SnapshotCreator(s3_store, source_roots=[])
    job = small_job()
    first = (await creator(job)).metadata
    before = await s3_store.get_bytes(metadata_key(job.collection_id, job.snapshot_id))
    redo = await creator(replace(job, compression="snappy"))
    assert redo.duplicate
    assert redo.metadata == first
    assert await s3_store.get_bytes(metadata_key(job.collection_id, job.snapshot_id)) == before
    report = await verify_snapshot(s3_store, first, full=True)
    assert report.ok, report.problems


async def test_server_ignoring_the_condition_takes_the_fallback(
    s3_store: S3Store, ignored_condition: None
) -> None:
    """Detected once by the probe; commits then HEAD first, and still never overwrite."""
    seen: list[tuple[str, bool]] = []
    s3_store.watch_features(lambda feature, supported: seen.append((feature, supported)))
    creator = SnapshotCreator(s3_store, source_roots=[])
    job = small_job()
    first = (await creator(job)).metadata
    assert s3_store.conditional_writes is False
    assert ("conditional_writes", False) in seen
    log = await call_log(s3_store)
    redo = await creator(replace(job, compression="snappy"))
    assert redo.duplicate and redo.metadata == first
    calls = log.take()
    assert calls[-2:] == ["HeadObject", "GetObject"]  # the check, then the committed one
    assert "PutObject" in calls and calls.count("PutObject") == 1  # the part, never metadata


async def test_conditional_writes_off_by_setting(tmp_path: Path) -> None:
    """``conditional_writes="off"``: no probe at all, HEAD then PUT."""
    store = open_store(
        s3_root(f"tests/{uuid.uuid4().hex}"), replace(s3_options(), conditional_writes="off")
    )
    assert isinstance(store, S3Store)
    try:
        log = await call_log(store)
        assert await store.put_if_absent("a.json", b"1") is True
        assert await store.put_if_absent("a.json", b"2") is False
        assert await store.get_bytes("a.json") == b"1"
        assert log.take() == ["HeadObject", "PutObject", "HeadObject", "GetObject"]
    finally:
        await store.delete("a.json")
        await store.close()


async def test_quick_verify_trusts_the_server_checksum(s3_store: S3Store) -> None:
    """HEAD (with the server's SHA-256) per part, no GET; --full reads every byte."""
    creator = SnapshotCreator(s3_store, source_roots=[])
    meta = (await creator(small_job())).metadata
    log = await call_log(s3_store)
    assert (await verify_snapshot(s3_store, meta)).ok
    assert log.take() == ["HeadObject"] * len(meta.parts)
    assert (await verify_snapshot(s3_store, meta, full=True)).ok
    assert log.take().count("GetObject") == len(meta.parts)


async def test_quick_verify_catches_a_wrong_digest_without_reading(s3_store: S3Store) -> None:
    """A metadata file whose SHA-256 does not match what the server checked fails verify."""
    creator = SnapshotCreator(s3_store, source_roots=[])
    meta = (await creator(small_job())).metadata
    wrong = replace(meta, parts=(replace(meta.parts[0], sha256="0" * 64),))
    report = await verify_snapshot(s3_store, wrong)
    assert report.problems == [f"part {meta.parts[0].key} fails its SHA-256 check"]


async def test_local_commit_never_overwrites(tmp_path: Path) -> None:
    store: ObjectStore = open_test_store("local", tmp_path)
    assert await store.put_if_absent("snapshots/c/x.metadata.json", b"first") is True
    assert await store.put_if_absent("snapshots/c/x.metadata.json", b"second") is False
    assert await store.get_bytes("snapshots/c/x.metadata.json") == b"first"
    assert [i.key async for i in store.list("snapshots/")] == ["snapshots/c/x.metadata.json"]


async def test_local_store_vouches_by_hash_of_what_it_wrote(tmp_path: Path) -> None:
    """No read-back on a directory: a copied file is hashed on the way in and refused when it
    does not match; nothing lands at the key then."""
    store = LocalStore(tmp_path / "store")
    outside = tmp_path / "part.bin"
    outside.write_bytes(b"part bytes")
    right = hashlib.sha256(b"part bytes").hexdigest()
    assert await store.put_file("parts/a.bin", outside, sha256_hex=right) is True
    assert await store.get_bytes("parts/a.bin") == b"part bytes"
    with pytest.raises(WriteNotVerifiedError):
        await store.put_file("parts/b.bin", outside, sha256_hex="0" * 64)
    assert await store.head("parts/b.bin") is None
    assert [i.key async for i in store.list("parts/")] == ["parts/a.bin"]


async def test_part_keys_name_their_content(tmp_path: Path) -> None:
    """Other settings, other bytes, other keys: a redo cannot overwrite a committed part."""
    store = open_test_store("local", tmp_path)
    creator = SnapshotCreator(store, source_roots=[])
    job = small_job(rows=50, dim=8)
    first: SnapshotMetadata = (await creator(job)).metadata
    await store.delete(metadata_key(job.collection_id, job.snapshot_id))
    second = (await creator(replace(job, compression="snappy"))).metadata
    assert {p.key for p in first.parts}.isdisjoint(p.key for p in second.parts)
    assert all(p.sha256[:32] in p.key for p in first.parts + second.parts)


class _FirstPutSignals(LocalStore):
    """Tells, through a thread event, when the first part is being put."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.first_put = threading.Event()

    async def put_file(self, key: str, path: Path, *, sha256_hex: str) -> bool:
        self.first_put.set()
        return await super().put_file(key, path, sha256_hex=sha256_hex)


def test_a_part_uploads_while_the_next_is_encoded(tmp_path: Path) -> None:
    """The source stops after part 0 is finished and waits for its upload to begin: without
    the overlap the encoder would wait on the source, and the source on the upload."""
    store = _FirstPutSignals(tmp_path / "store")
    dim, rows = 16, 1000
    creator = SnapshotCreator(
        store, source_roots=[], part_size_bytes=2 * rows * bytes_per_row_estimate(dim)
    )
    waited: list[bool] = []

    def batches() -> Iterator[DocumentBatch]:
        for i in range(6):
            if i == 5:  # parts 0 and 1 are full and part 2 begun: part 0 is finished
                waited.append(store.first_put.wait(timeout=60))
            yield DocumentBatch.from_arrays(
                unit_vectors(rows, dim, seed=i), id_seed="o", first_position=i * rows
            )

    async def run() -> SnapshotMetadata:
        source = OpenedSource(batches(), "test", expected_rows=6 * rows)
        job = small_job(rows=1, dim=dim)
        return (await creator._create(job, source, StageClock())).metadata

    meta = asyncio.run(run())
    assert waited == [True]
    assert [p.rows for p in meta.parts] == [2000, 2000, 2000]
