"""Readers lose nothing: AkiDB's Parquet columns and JSON documents understood wherever an
export is read, every finite float32 accepted however printed, unknown columns refused."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon.events import parse_request
from handlers.akidb.json_codec import documents_to_batch, format_f32, parse_documents
from handlers.catalog import Catalog
from handlers.create import SnapshotCreator
from handlers.errors import InvalidDocumentsError, InvalidRequestError
from handlers.job import SnapshotJob, UriSource, source_format_from_uri
from handlers.model import DocumentBatch
from handlers.restore import restore_snapshot
from tests.support import (
    AKIDB_COLLECTION,
    AKIDB_DATA,
    AKIDB_PARQUET_ID,
    akidb_expected,
    open_test_store,
)

AKIDB_PARQUET = (
    AKIDB_DATA / "parquet-store" / "snapshots" / AKIDB_COLLECTION / f"{AKIDB_PARQUET_ID}.parquet"
)


def akidb_doc(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "doc_id": str(uuid.uuid4()),
        "external_id": None,
        "vector": [0.5, -0.25],
        "metadata": None,
        "inserted_at": "2025-11-15T02:25:43.123456789Z",
    }
    return {**base, **fields}


async def test_create_from_akidb_parquet_keeps_metadata(tmp_path: Path) -> None:
    """`create --from` an AkiDB Parquet file: metadata_json, binary ids, timestamp[ms],
    dimension — every document comes back with its metadata (it used to be dropped)."""
    store = open_test_store("local", tmp_path)
    creator = SnapshotCreator(store, source_roots=[AKIDB_PARQUET.as_uri()])
    job = SnapshotJob("kept", "r1", UriSource(AKIDB_PARQUET.as_uri(), "parquet"))
    meta = (await creator(job)).metadata
    out = tmp_path / "out.parquet"
    await restore_snapshot(store, (await Catalog(store).get(meta.snapshot_id)), out)
    await store.close()
    table = pq.read_table(out)
    _, ids, facts = akidb_expected()
    assert table.column("document_id").to_pylist() == ids
    metadata = [None if m is None else json.loads(m) for m in table.column("metadata").to_pylist()]
    assert metadata == [fact["metadata"] for fact in facts]
    micros = table.column("inserted_at").cast(pa.int64()).to_pylist()
    assert micros == [fact["inserted_at_ms"] * 1000 for fact in facts]


def test_unknown_export_column_is_refused_by_name(tmp_path: Path) -> None:
    """A column no snapshot can hold is refused, named, never dropped."""
    table = pq.read_table(AKIDB_PARQUET).slice(0, 5)
    with_extra = table.append_column("tenant", pa.array(["a"] * 5))
    with pytest.raises(InvalidDocumentsError, match="column\\(s\\) tenant"):
        DocumentBatch.from_arrow(with_extra.to_batches()[0], default_inserted_at=_now())
    wrong_dim = table.set_column(2, "dimension", pa.array([7] * 5, type=pa.uint32()))
    with pytest.raises(InvalidDocumentsError, match="has dimension 7"):
        DocumentBatch.from_arrow(wrong_dim.to_batches()[0], default_inserted_at=_now())


def test_akidb_json_documents_any_metadata_and_nanoseconds() -> None:
    """Any JSON value or null as metadata; nanoseconds kept to the microsecond."""
    docs = [
        akidb_doc(metadata=[1, "two", None]),
        akidb_doc(metadata="text", external_id="文档"),
        akidb_doc(metadata=3.5),
        akidb_doc(metadata={"b": {"x": [True]}, "a": '"q" \\ \n'}),
        akidb_doc(inserted_at="2025-11-15T02:25:43Z"),
    ]
    batch = documents_to_batch(docs)
    metadata = [
        None if m is None else json.loads(m)
        for m in batch.record_batch.column("metadata").to_pylist()
    ]
    assert metadata == [doc["metadata"] for doc in docs]
    micros = batch.record_batch.column("inserted_at").cast(pa.int64()).to_pylist()
    assert micros[0] == 1_763_173_543_123_456 and micros[4] == 1_763_173_543_000_000


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (akidb_doc(tenant="x"), "field(s) tenant"),
        (akidb_doc(doc_id="nope"), "not a UUID"),
        (akidb_doc(inserted_at="yesterday"), "not an RFC 3339 time"),
        (akidb_doc(vector=[3.5e38, 0.0]), "overflows float32"),
        (akidb_doc(vector=[1e400, 0.0]), "not finite"),
        ({"vector": [1.0]}, "no 'doc_id'"),
    ],
)
def test_akidb_json_refusals_name_the_problem(doc: dict[str, object], message: str) -> None:
    raw = json.dumps([doc]).replace("Infinity", "1e400").encode()
    with pytest.raises(
        InvalidDocumentsError, match=message.replace("(", "\\(").replace(")", "\\)")
    ):
        documents_to_batch(parse_documents(raw))


@pytest.mark.parametrize(
    "text",
    ["3.4028235e38", "-3.4028235e38", "3.40282347e+38", "340282346638528859811704183484516925440"],
)
def test_every_finite_float32_is_accepted_however_printed(text: str) -> None:
    """f32::MAX printed shortest (a float64 just above it) still rounds to it: accepted."""
    raw = f'[{{"doc_id":"{uuid.uuid4()}","vector":[{text}],"inserted_at":"2025-01-01T00:00:00Z"}}]'
    batch = documents_to_batch(parse_documents(raw.encode()))
    assert abs(batch.vectors[0, 0]) == np.finfo(np.float32).max
    inline = DocumentBatch.from_documents([{"id": str(uuid.uuid4()), "vector": [float(text)]}])
    assert abs(inline.vectors[0, 0]) == np.finfo(np.float32).max


def test_format_f32_matches_akidb_spelling() -> None:
    """Rust's shortest f32 spelling, as seen in the AkiDB-written fixture."""
    values = np.array(
        [-0.0, 1e-45, 1.1754944e-38, 3.4028235e38, 0.1, 16777216.0, -0.00090003014, 1e-38],
        dtype=np.float32,
    )
    assert [format_f32(v) for v in values] == [
        "-0.0",
        "1e-45",
        "1.1754944e-38",
        "3.4028235e38",
        "0.1",
        "16777216.0",
        "-0.00090003014",
        "1e-38",
    ]


def test_unknown_inline_field_is_refused_by_name() -> None:
    """A request's inline document with a field no snapshot holds is refused, not trimmed."""
    doc = {"id": str(uuid.uuid4()), "vector": [1.0], "tenant": "x"}
    with pytest.raises(InvalidDocumentsError, match=r"field\(s\) tenant"):
        DocumentBatch.from_documents([doc])


def test_json_extension_means_akidb_json() -> None:
    assert source_format_from_uri("s3://b/snapshots/x.json") == "akidb-json"


def _now() -> datetime:
    return datetime.now(UTC)


def test_request_for_an_akidb_format_needs_a_uuid_collection() -> None:
    """A daemon request in an AkiDB format for a named collection is refused at the door."""
    body = {
        "schema": "akisnap.snapshot-request/v1",
        "request_id": "r-1",
        "collection_id": "products",
        "source": {"documents": [{"id": str(uuid.uuid4()), "vector": [1.0]}]},
        "format": "akidb-parquet",
    }
    with pytest.raises(InvalidRequestError, match="needs a UUID collection id"):
        parse_request(json.dumps(body).encode(), max_bytes=1 << 20)
    body["collection_id"] = AKIDB_COLLECTION
    assert parse_request(json.dumps(body).encode(), max_bytes=1 << 20).format == "akidb-parquet"
