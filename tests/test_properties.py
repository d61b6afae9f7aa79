"""Property-based round trips: whatever valid documents go in come out bit for bit."""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from handlers.catalog import Catalog
from handlers.create import SnapshotCreator
from handlers.job import InlineSource, SnapshotJob
from handlers.migrate import Migrator
from handlers.model import DocumentBatch, vectors_bit_equal
from handlers.restore import restore_snapshot
from tests.support import open_test_store, s3_options

finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
metadata_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
metadata_objects = st.none() | st.dictionaries(st.text(max_size=6), metadata_values, max_size=4)


@st.composite
def documents(draw: st.DrawFn) -> list[dict[str, Any]]:
    dimension = draw(st.integers(1, 300))
    count = draw(st.integers(1, 40))
    matrix = draw(arrays(np.float32, (count, dimension), elements=finite_float32))
    metadata = draw(st.lists(metadata_objects, min_size=count, max_size=count))
    external = draw(st.lists(st.none() | st.text(max_size=10), min_size=count, max_size=count))
    return [
        {
            "id": str(uuid.UUID(int=i + 1)),
            "vector": [float(v) for v in matrix[i]],
            "external_id": external[i],
            "metadata": metadata[i],
            "inserted_at": "2026-11-24T10:00:00.123456Z",
        }
        for i in range(count)
    ]


FORMATS = ["parquet", "akidb-parquet", "akidb-json"]
COLLECTION = "019a9000-0000-7000-8000-0000000f00d5"  # AkiDB formats need a UUID


async def round_trip(
    kind: str, docs: list[dict[str, Any]], fmt: str, workdir: Path, *, migrate: bool
) -> pa.Table:
    """create → restore; with ``migrate``, create (AkiDB format) → migrate → restore."""
    store = open_test_store(kind, workdir / "a")
    native = open_test_store(kind, workdir / "b")
    migrator = Migrator(native, s3=s3_options() if kind == "s3" else None)
    try:
        creator = SnapshotCreator(store, source_roots=[store.root_uri], part_size_bytes=4096)
        job = SnapshotJob(COLLECTION, str(uuid.uuid4()), InlineSource(docs), format=fmt)  # type: ignore[arg-type]
        meta = (await creator(job)).metadata
        if migrate:
            [outcome] = await migrator.migrate(store.root_uri)
            assert outcome.status == "migrated", outcome.reason
            meta = await Catalog(native).get(str(outcome.snapshot_id))
        out = workdir / "out.parquet"
        await restore_snapshot(native if migrate else store, meta, out)
        return pq.read_table(out)
    finally:
        await migrator.close()
        await store.close()
        await native.close()


def check(kind: str, docs: list[dict[str, Any]], fmt: str, *, migrate: bool = False) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        restored = asyncio.run(round_trip(kind, docs, fmt, Path(workdir), migrate=migrate))
    expected = DocumentBatch.from_documents(docs)
    got = DocumentBatch(restored.combine_chunks().to_batches()[0])
    assert vectors_bit_equal(got.vectors, expected.vectors)
    assert [str(i) for i in got.document_ids] == [d["id"] for d in docs]
    assert restored.column("external_id").to_pylist() == [d["external_id"] for d in docs]
    decoded = [
        None if m is None else json.loads(m) for m in restored.column("metadata").to_pylist()
    ]
    assert decoded == [d["metadata"] for d in docs]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents(), fmt=st.sampled_from(FORMATS))
def test_round_trip_on_local_store(docs: list[dict[str, Any]], fmt: str) -> None:
    """Any valid documents survive create → restore on the local store, in every format."""
    check("local", docs, fmt)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents(), fmt=st.sampled_from(FORMATS))
def test_round_trip_on_s3(docs: list[dict[str, Any]], fmt: str) -> None:
    """Any valid documents survive create → restore on the real S3 server, in every format."""
    check("s3", docs, fmt)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents(), fmt=st.sampled_from(FORMATS[1:]), kind=st.sampled_from(["local", "s3"]))
def test_native_to_akidb_to_native(docs: list[dict[str, Any]], fmt: str, kind: str) -> None:
    """native documents → an AkiDB-format snapshot → migrate → native: nothing changes."""
    check(kind, docs, fmt, migrate=True)


@settings(max_examples=60, deadline=None)
@given(matrix=arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 50))))
def test_any_non_finite_value_is_refused(matrix: np.ndarray[Any, Any]) -> None:
    """A matrix is accepted exactly when every value is finite."""
    try:
        DocumentBatch.from_arrays(matrix)
        accepted = True
    except Exception:
        accepted = False
    assert accepted == bool(np.isfinite(matrix).all())
