"""Events v1: strict request parsing with the field named, results, and the shipped schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from daemon.events import (
    REQUEST_SCHEMA,
    REQUEST_SCHEMA_FILE,
    RESULT_SCHEMA,
    RESULT_SCHEMA_FILE,
    build_request,
    build_result,
    parse_request,
    parse_result,
    peek_ids,
    request_json_schema,
    result_json_schema,
)
from handlers.create import CreateOutcome
from handlers.errors import DecodeError, InvalidRequestError
from handlers.job import (
    MAX_REQUEST_ID_CHARS,
    InlineSource,
    SnapshotJob,
    UriSource,
    check_job,
    snapshot_id_for,
)
from handlers.metadata import PartInfo, SnapshotMetadata

MAX = 1024 * 1024
REQUEST_ID = "b1f5c0de-5b0e-4b7c-9a57-0c1f3f1e2a10"
DOCUMENT = {
    "id": "0b7e8c1a-3f5d-4a3e-9c61-1d2f3e4a5b6c",
    "external_id": "sku-1",
    "vector": [0.12, -0.5, 0.25],
    "metadata": {"lang": "en"},
    "inserted_at": "2026-11-24T10:00:00Z",
}


def inline_request(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": REQUEST_SCHEMA,
        "request_id": REQUEST_ID,
        "collection_id": "products",
        "source": {"documents": [DOCUMENT]},
        "format": "parquet",
        "options": {"compression": "zstd"},
        "labels": {"trigger": "nightly"},
    }
    body.update(changes)
    return body


def uri_request(**changes: Any) -> dict[str, Any]:
    body = inline_request(
        source={"uri": "s3://bucket/exports/products/0001.parquet", "format": "parquet"}
    )
    body.update(changes)
    return body


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def draft_2020_12_validator(path: Path) -> Any:
    """A jsonschema validator for a shipped schema file (checked to be a valid schema)."""
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def request_validator() -> Any:
    return draft_2020_12_validator(REQUEST_SCHEMA_FILE)


@pytest.fixture(scope="module")
def result_validator() -> Any:
    return draft_2020_12_validator(RESULT_SCHEMA_FILE)


# -- valid requests ---------------------------------------------------------------------------


def test_inline_request_parses() -> None:
    """The DESIGN example with inline documents becomes a SnapshotJob with an InlineSource."""
    job = parse_request(encode(inline_request()), max_bytes=MAX)
    assert job.collection_id == "products"
    assert job.request_id == REQUEST_ID
    assert job.snapshot_id == snapshot_id_for(job.collection_id, REQUEST_ID)
    assert isinstance(job.source, InlineSource)
    assert job.source.documents == [DOCUMENT]
    assert (job.format, job.compression) == ("parquet", "zstd")
    assert dict(job.labels) == {"trigger": "nightly"}


def test_uri_request_parses_with_defaults() -> None:
    """A URI request without format/options/labels gets parquet, zstd and no labels."""
    body = without(without(without(uri_request(), "format"), "options"), "labels")
    job = parse_request(encode(body), max_bytes=MAX)
    assert job.source == UriSource(
        uri="s3://bucket/exports/products/0001.parquet", format="parquet"
    )
    assert (job.format, job.compression, dict(job.labels)) == ("parquet", "zstd", {})


# -- bad requests -----------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, bytes | None, type[Exception], str]] = [
    ("invalid utf-8", b'{"schema": "\xff\xfe"}', DecodeError, "not UTF-8"),
    ("malformed json", b'{"schema": ', DecodeError, "not JSON"),
    ("tombstone", None, DecodeError, "tombstone"),
    ("top-level array", encode([inline_request()]), InvalidRequestError, "got array"),
    ("missing schema", encode(without(inline_request(), "schema")), InvalidRequestError,
     "schema: field required"),
    ("unknown schema version", encode(inline_request(schema="akisnap.snapshot-request/v2")),
     InvalidRequestError, "schema: unsupported version 'akisnap.snapshot-request/v2'"),
    ("missing request_id", encode(without(inline_request(), "request_id")), InvalidRequestError,
     "request_id: field required"),
    ("empty request_id", encode(inline_request(request_id="")), InvalidRequestError,
     "request_id: must not be empty"),
    ("extra field", encode(inline_request(priority=1)), InvalidRequestError,
     "priority: unknown field"),
    ("request_id a number", encode(inline_request(request_id=42)), InvalidRequestError,
     "request_id: must be a string (got number)"),
    ("collection_id a list", encode(inline_request(collection_id=["a"])), InvalidRequestError,
     "collection_id: must be a string (got array)"),
    ("path-traversing collection", encode(inline_request(collection_id="../etc")),
     InvalidRequestError, "collection_id: must match"),
    ("collection with a slash", encode(inline_request(collection_id="a/b")),
     InvalidRequestError, "collection_id: must match"),
    ("collection with a newline", encode(inline_request(collection_id="abc\n")),
     InvalidRequestError, "collection_id: must match"),
    ("empty documents", encode(inline_request(source={"documents": []})), InvalidRequestError,
     "source.documents is empty: a snapshot needs documents"),
    ("document not an object", encode(inline_request(source={"documents": [DOCUMENT, 3]})),
     InvalidRequestError, "source.documents[1]: must be an object (got number)"),
    ("source neither", encode(inline_request(source={"path": "/x"})), InvalidRequestError,
     "source: must be an object with either documents or uri"),
    ("source a string", encode(inline_request(source="s3://b/k")), InvalidRequestError,
     "source: must be an object with either documents or uri (got string)"),
    ("uri without format", encode(uri_request(source={"uri": "s3://b/k.parquet"})),
     InvalidRequestError, "source.format: field required"),
    ("unknown source format", encode(uri_request(source={"uri": "s3://b/k", "format": "csv"})),
     InvalidRequestError,
     "source.format: must be one of 'parquet', 'arrow', 'npy', 'akidb-json' or 'json'"),
    ("empty uri", encode(uri_request(source={"uri": "", "format": "npy"})), InvalidRequestError,
     "source.uri: must not be empty"),
    ("both documents and uri",
     encode(inline_request(source={"documents": [DOCUMENT], "uri": "s3://b/k"})),
     InvalidRequestError, "source.uri: unknown field"),
    ("unknown snapshot format", encode(inline_request(format="orc")), InvalidRequestError,
     "format: must be one of 'parquet', 'akidb-parquet' or 'akidb-json'"),
    ("unknown compression", encode(inline_request(options={"compression": "brotli"})),
     InvalidRequestError, "options.compression: must be one of"),
    ("labels not strings", encode(inline_request(labels={"attempt": 2})), InvalidRequestError,
     "labels.attempt: must be a string (got number)"),
    ("labels a list", encode(inline_request(labels=["a"])), InvalidRequestError,
     "labels: must be an object (got array)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_names_what_is_wrong(
    value: bytes | None, error: type[Exception], message: str
) -> None:
    """Each kind of bad request raises its permanent error class, naming the field."""
    with pytest.raises(error) as exc:
        parse_request(value, max_bytes=MAX)
    assert type(exc.value) is error
    assert message in str(exc.value)


def test_oversized_request_is_a_decode_error() -> None:
    """A message over max_bytes is refused before it is parsed."""
    value = encode(inline_request())
    parse_request(value, max_bytes=len(value))
    with pytest.raises(DecodeError, match=f"{len(value)} bytes, more than the limit of 100"):
        parse_request(value, max_bytes=100)


def test_several_errors_fit_one_line() -> None:
    """Several wrong fields are reported together on one line."""
    body = inline_request(request_id=1, format="orc", extra=True)
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(encode(body), max_bytes=MAX)
    message = str(exc.value)
    assert "\n" not in message
    for field in ("request_id:", "format:", "extra:"):
        assert field in message


def test_unknown_schema_version_names_a_non_string() -> None:
    """A schema that is not even a string is reported by its JSON type."""
    with pytest.raises(InvalidRequestError, match="unsupported version number"):
        parse_request(encode(inline_request(schema=1)), max_bytes=MAX)


LIMIT_CASES = [
    {},
    {"request_id": "r" * MAX_REQUEST_ID_CHARS},
    {"request_id": "r" * (MAX_REQUEST_ID_CHARS + 1)},
    {"request_id": ""},
    {"collection_id": "../products"},
    {"format": "orc"},
    {"format": "akidb-json"},
    {"collection_id": REQUEST_ID, "format": "akidb-json"},
    {"options": {"compression": "brotli"}},
    {"base": "latest"},
    {"base": "yesterday"},
    {"base": "latest", "format": "akidb-parquet"},
    {"deletes": []},
    {"base": "latest", "deletes": ["not-a-uuid"]},
]


@pytest.mark.parametrize("changes", LIMIT_CASES, ids=repr)
def test_events_and_jobs_keep_one_set_of_limits(changes: dict[str, Any]) -> None:
    """A request the daemon refuses is refused by check_job (the CLI's path) too, and the
    reverse: the limits are stated once, in handlers.job."""
    body = inline_request(**changes)
    job = SnapshotJob(
        collection_id=body["collection_id"],
        request_id=body["request_id"],
        source=InlineSource([DOCUMENT]),
        format=body["format"],
        compression=body["options"]["compression"],
        base=body.get("base"),
        deletes=None if body.get("deletes") is None else tuple(body["deletes"]),
    )
    outcomes = []
    for check in (lambda: parse_request(encode(body), max_bytes=MAX), lambda: check_job(job)):
        try:
            check()
            outcomes.append("valid")
        except InvalidRequestError:
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1], outcomes


# -- peek_ids ---------------------------------------------------------------------------------


def test_peek_ids_best_effort() -> None:
    """Ids come out of valid, invalid and broken messages alike; nothing raises."""
    assert peek_ids(encode(inline_request(format="orc"))) == {
        "request_id": REQUEST_ID,
        "collection_id": "products",
    }
    broken = b'{"request_id": "r-1", "collection_id": "c", "source": {'
    assert peek_ids(broken) == {"request_id": "r-1", "collection_id": "c"}
    assert peek_ids(encode({"request_id": 5, "collection_id": "c"})) == {"collection_id": "c"}
    assert peek_ids(b"\xff\xfe") == {}
    assert peek_ids(None) == {}
    assert peek_ids(b"[1, 2]") == {}


def test_peek_ids_without_parsing_scans_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's log context never parses the JSON (parse_request does, once)."""

    def no_parsing(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("parsed")

    monkeypatch.setattr(json, "loads", no_parsing)
    value = encode(inline_request(format="orc"))
    assert peek_ids(value, parse=False) == {"request_id": REQUEST_ID, "collection_id": "products"}


# -- build_request ----------------------------------------------------------------------------


def test_build_request_round_trips(request_validator: Any) -> None:
    """build_request makes a valid v1 request (key = collection) that parses back the same."""
    vectors = np.ones((2, 3), dtype=np.float32)
    documents = [{**DOCUMENT, "vector": vectors[i]} for i in range(2)]
    key, value = build_request(
        "products", InlineSource(documents), request_id="r-1", labels={"by": "test"}
    )
    assert key == b"products"
    body = json.loads(value)
    request_validator.validate(body)
    assert body["source"]["documents"][1]["vector"] == [1.0, 1.0, 1.0]
    job = parse_request(value, max_bytes=MAX)
    assert (job.request_id, dict(job.labels)) == ("r-1", {"by": "test"})

    _, value = build_request("products", UriSource("file:///x/e.npy", "npy"))
    job = parse_request(value, max_bytes=MAX)
    assert isinstance(job.source, UriSource)
    assert job.request_id  # a fresh UUID


def test_build_request_refuses_bad_input() -> None:
    """build_request never produces a request the daemon would dead-letter for its shape."""
    with pytest.raises(InvalidRequestError, match="collection_id"):
        build_request("../etc", UriSource("file:///x.parquet", "parquet"))
    with pytest.raises(InvalidRequestError, match="not JSON-able"):
        build_request("c", InlineSource([{**DOCUMENT, "vector": [float("nan")]}]))


# -- results and schemas ----------------------------------------------------------------------


def make_outcome(job: SnapshotJob, *, duplicate: bool = False) -> CreateOutcome:
    parts = (
        PartInfo(key=f"snapshots/products/{job.snapshot_id}/part-00000.parquet", size=1000,
                 rows=2, sha256="a" * 64),
        PartInfo(key=f"snapshots/products/{job.snapshot_id}/part-00001.parquet", size=500,
                 rows=1, sha256="b" * 64),
    )  # fmt: skip
    metadata = SnapshotMetadata(
        snapshot_id=job.snapshot_id,
        collection_id=job.collection_id,
        request_id=job.request_id,
        format="parquet",
        compression="zstd",
        dimension=3,
        vector_count=3,
        created_at="2026-11-24T10:00:01Z",
        parts=parts,
        labels=dict(job.labels),
    )
    return CreateOutcome(
        metadata=metadata, duplicate=duplicate, stage_seconds={"source": 0.1, "upload": 0.2}
    )


def test_result_validates_against_shipped_schema(
    result_validator: Any,
) -> None:
    """A result has every DESIGN field, validates against the schema file and parses back."""
    job = parse_request(encode(inline_request()), max_bytes=MAX)
    value = build_result(
        job,
        make_outcome(job),
        store_root="s3://bucket/prefix/",
        durations={"decode": 0.001, "validate": 0.002, "upload": 0.25},
    )
    body = json.loads(value)
    result_validator.validate(body)
    assert body["schema"] == RESULT_SCHEMA
    assert body["status"] == "created"
    assert body["snapshot_id"] == job.snapshot_id
    assert body["metadata_uri"] == (
        f"s3://bucket/prefix/snapshots/products/{job.snapshot_id}.metadata.json"
    )
    assert (body["vector_count"], body["dimension"], body["total_bytes"]) == (3, 3, 1500)
    assert body["parts"][1] == {
        "key": f"snapshots/products/{job.snapshot_id}/part-00001.parquet",
        "sha256": "b" * 64,
        "size": 500,
        "rows": 1,
    }
    assert body["durations_seconds"] == {
        "source": 0.1,
        "upload": 0.25,
        "decode": 0.001,
        "validate": 0.002,
    }
    assert body["finished_at"].endswith("Z")
    assert parse_result(value).status == "created"

    duplicate = json.loads(build_result(job, make_outcome(job, duplicate=True),
                                        store_root="file:///s", durations={}))  # fmt: skip
    assert duplicate["status"] == "duplicate"
    result_validator.validate(duplicate)


def test_result_schema_rejects_invalid(result_validator: Any) -> None:
    """The result schema is not a rubber stamp: bad status, missing fields, bad hashes fail."""
    job = parse_request(encode(inline_request()), max_bytes=MAX)
    good = json.loads(build_result(job, make_outcome(job), store_root="file:///s", durations={}))
    bad_cases = [
        {**good, "status": "failed"},
        without(good, "snapshot_id"),
        {**good, "parts": [{**good["parts"][0], "sha256": "xyz"}]},
        {**good, "schema": "akisnap.snapshot-result/v2"},
    ]
    for bad in bad_cases:
        assert not result_validator.is_valid(bad), bad


def test_request_schema_agrees_with_parser(
    request_validator: Any,
) -> None:
    """The shipped request schema accepts what the parser accepts and rejects what it rejects."""
    request_validator.validate(inline_request())
    request_validator.validate(uri_request())
    for name, value, error, _ in BAD_REQUESTS:
        # Python's re (used by jsonschema) lets `$` match before a final newline; ECMA-262,
        # which JSON Schema specifies, and the parser's engine do not.
        if error is InvalidRequestError and name != "collection with a newline":
            assert not request_validator.is_valid(json.loads(value or b"null")), name


def test_shipped_schemas_match_models() -> None:
    """The files in daemon/schemas/ are what the models generate (rerun write_schemas())."""
    assert json.loads(REQUEST_SCHEMA_FILE.read_text()) == request_json_schema()
    assert json.loads(RESULT_SCHEMA_FILE.read_text()) == result_json_schema()
    assert request_json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
