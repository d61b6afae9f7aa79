"""The two events of DESIGN.md, v1: snapshot requests (in) and snapshot results (out).

Requests are parsed strictly: a message that is not UTF-8 JSON raises
:class:`~handlers.errors.DecodeError`, one that breaks the contract raises
:class:`~handlers.errors.InvalidRequestError` naming the field (``source.uri: field
required``). Both are permanent: the message goes to the dead letters at once. The documents
of an inline source are only checked to be a non-empty list of objects here; the snapshot
model checks them in the source stage (a change set that only deletes may have none).

The JSON Schema files in ``daemon/schemas/`` are generated from the models below
(:func:`write_schemas`), and a test keeps them equal. The module is longer than most on
purpose: it is the wire contract, both events' models and the only code that reads or writes
them, so a change to an event is a change to this one file (and its generated schemas).
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from daemon.field_errors import json_type, reason
from handlers.catalog import commit_marker_key
from handlers.create import CreateOutcome
from handlers.errors import DecodeError, InvalidRequestError
from handlers.job import (
    COLLECTION_ID,
    MAX_REQUEST_ID_CHARS,
    Compression,
    InlineSource,
    SnapshotFormat,
    SnapshotJob,
    SourceFormat,
    SourceSpec,
    UriSource,
    check_rules,
    new_request_id,
)
from handlers.metadata import SnapshotMetadata
from handlers.model import DocumentBatch

REQUEST_SCHEMA: Final = "akisnap.snapshot-request/v1"
RESULT_SCHEMA: Final = "akisnap.snapshot-result/v1"
SCHEMAS_DIR = Path(__file__).parent / "schemas"
REQUEST_SCHEMA_FILE = SCHEMAS_DIR / "snapshot-request.v1.json"
RESULT_SCHEMA_FILE = SCHEMAS_DIR / "snapshot-result.v1.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

MAX_PEEK_CHARS = 200
# Bigger messages are not parsed to peek at their ids (a log nicety must not cost memory).
MAX_PEEK_PARSE_BYTES = 1024 * 1024
# A JSON \\u escape of a UTF-16 surrogate: fine in a pair, not Unicode text when alone.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_INLINE_TAG = "source=documents"
_URI_TAG = "source=uri"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- the request ------------------------------------------------------------------------------


class InlineSourceV1(_Strict):
    """Documents carried in the request (small collections)."""

    documents: list[dict[str, Any]] = Field(
        description="id, external_id, vector, metadata, inserted_at per document; "
        "checked by the snapshot model, not by this schema; empty only in a change set "
        "that just deletes",
    )


class UriSourceV1(_Strict):
    """A reference to an export (``file://`` or ``s3://``)."""

    uri: str = Field(min_length=1, max_length=4096)
    format: SourceFormat


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "documents" in value:
            return _INLINE_TAG
        if "uri" in value:
            return _URI_TAG
    return None


SourceV1 = Annotated[
    Annotated[InlineSourceV1, Tag(_INLINE_TAG)] | Annotated[UriSourceV1, Tag(_URI_TAG)],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message="must be an object with either documents or uri",
    ),
]


class OptionsV1(_Strict):
    compression: Compression = "zstd"


class SnapshotRequestV1(_Strict):
    """``akisnap.snapshot-request/v1``: topic ``akidb.snapshot.requests``, key = collection."""

    model_config = ConfigDict(
        title="akisnap snapshot request v1",
        # Empty inline documents only in a change set that just deletes (to_job checks it).
        json_schema_extra={
            "if": {
                "properties": {
                    "source": {
                        "properties": {"documents": {"maxItems": 0}},
                        "required": ["documents"],
                    }
                },
                "required": ["source"],
            },
            "then": {"required": ["deletes"], "properties": {"deletes": {"type": "array"}}},
        },
    )

    schema_: Literal["akisnap.snapshot-request/v1"] = Field(alias="schema")
    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS)
    collection_id: str = Field(pattern=COLLECTION_ID.pattern)
    source: SourceV1
    format: SnapshotFormat = "parquet"
    options: OptionsV1 = Field(default_factory=OptionsV1)
    labels: dict[str, str] = Field(default_factory=dict)
    base: str | None = Field(
        default=None,
        min_length=1,
        description="make a delta against this snapshot id, or 'latest' (the newest)",
    )
    deletes: list[str] | None = Field(
        default=None,
        description="with base: the source is a change set (upserts) and these ids are deleted",
    )

    def to_job(self) -> SnapshotJob:
        """The job asked for: the fields are valid by now, the rules across them are not."""
        source: SourceSpec
        if isinstance(self.source, InlineSourceV1):
            if not self.source.documents and self.deletes is None:
                raise InvalidRequestError("source.documents is empty: a snapshot needs documents")
            source = InlineSource(documents=self.source.documents)
        else:
            source = UriSource(uri=self.source.uri, format=self.source.format)
        job = SnapshotJob(
            collection_id=self.collection_id,
            request_id=self.request_id,
            source=source,
            format=self.format,
            compression=self.options.compression,
            labels=self.labels,
            base=self.base,
            deletes=None if self.deletes is None else tuple(self.deletes),
        )
        check_rules(job)
        return job


# -- the result -------------------------------------------------------------------------------


class ResultPartV1(_Strict):
    key: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    rows: int = Field(ge=0)


class SnapshotResultV1(_Strict):
    """``akisnap.snapshot-result/v1``: topic ``akidb.snapshot.results``, key = collection."""

    model_config = ConfigDict(title="akisnap snapshot result v1")

    schema_: Literal["akisnap.snapshot-result/v1"] = Field(alias="schema")
    request_id: str = Field(min_length=1)
    collection_id: str = Field(pattern=COLLECTION_ID.pattern)
    snapshot_id: str = Field(
        min_length=1,
        description="UUIDv5 of '{collection_id}/{request_id}' (see DESIGN.md, 'The snapshot')",
    )
    status: Literal["created", "duplicate"]
    metadata_uri: str = Field(min_length=1)
    format: str
    compression: str
    vector_count: int = Field(ge=0)
    dimension: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    parts: list[ResultPartV1]
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(description="when the snapshot was committed (ISO 8601, UTC)")
    durations_seconds: dict[str, float] = Field(
        description="seconds per pipeline stage: decode, validate, source, encode, upload, verify"
    )
    finished_at: str = Field(description="when this result was made (ISO 8601, UTC)")
    kind: Literal["full", "delta"] = "full"
    base: str | None = Field(default=None, description="a delta's base snapshot id")
    rows_added: int = Field(default=0, ge=0, description="a delta's new documents")
    rows_changed: int = Field(default=0, ge=0, description="a delta's rewritten documents")
    rows_deleted: int = Field(default=0, ge=0, description="a delta's deleted documents")
    bytes_written: int = Field(default=0, ge=0, description="parts and side objects written")


# -- requests in ------------------------------------------------------------------------------


def parse_request(value: bytes | None, *, max_bytes: int) -> SnapshotJob:
    """A request message's value → the job it asks for. Raises DecodeError (not UTF-8 JSON,
    empty, oversized) or InvalidRequestError (breaks the v1 contract), naming the field."""
    body = _decode(value, max_bytes=max_bytes)
    if not isinstance(body, dict):
        raise InvalidRequestError(f"request must be a JSON object, got {json_type(body)}")
    if "schema" not in body:
        raise InvalidRequestError(f"schema: field required (expected {REQUEST_SCHEMA!r})")
    seen = body["schema"]
    if seen != REQUEST_SCHEMA:
        shown = repr(seen)[:80] if isinstance(seen, str) else json_type(seen)
        raise InvalidRequestError(
            f"schema: unsupported version {shown} (this daemon reads {REQUEST_SCHEMA!r})"
        )
    try:
        request = SnapshotRequestV1.model_validate(body, strict=True)
    except ValidationError as exc:
        raise InvalidRequestError(describe_validation_error(exc)) from None
    return request.to_job()


def prepare_request(value: bytes | None, *, max_bytes: int) -> SnapshotJob:
    """:func:`parse_request`, and inline documents already built into their batch: both are
    CPU-bound for about a second on a 15 MB request (run it in the worker process)."""
    job = parse_request(value, max_bytes=max_bytes)
    if isinstance(job.source, InlineSource) and job.source.documents:
        batch = DocumentBatch.from_documents(job.source.documents)
        return dataclasses.replace(job, source=InlineSource((), batch))
    return job


def peek_ids(value: bytes | None, *, parse: bool = True) -> dict[str, str]:
    """Best effort ``request_id`` / ``collection_id`` of any message, even an invalid one
    (for logs and dead letters). Never raises; missing ids are left out. ``parse=False``
    only scans the bytes (a nested id may be taken for the request's): the daemon's log
    context before :func:`parse_request`, which then parses the message, once."""
    found: dict[str, str] = {}
    try:
        if not value:
            return found
        body: Any = None
        if parse and len(value) <= MAX_PEEK_PARSE_BYTES:
            try:
                body = json.loads(value)
            except (ValueError, RecursionError):
                body = None
        for name in ("request_id", "collection_id"):
            candidate: object = body.get(name) if isinstance(body, dict) else None
            if candidate is None and not isinstance(body, dict):
                match = re.search(rb'"' + name.encode() + rb'"\s*:\s*"([^"\\]{1,200})"', value)
                candidate = match.group(1).decode("utf-8", "replace") if match else None
            if isinstance(candidate, str) and candidate:
                found[name] = candidate[:MAX_PEEK_CHARS]
    except Exception:  # best effort by contract
        return found
    return found


def _decode(value: bytes | None, *, max_bytes: int) -> Any:
    if value is None:
        raise DecodeError("message has no value (a tombstone)")
    if len(value) > max_bytes:
        raise DecodeError(f"message is {len(value)} bytes, more than the limit of {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"message is not UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"message is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # int too long, nesting too deep
        raise DecodeError(f"message is not usable JSON: {type(exc).__name__}") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_unicode(body)
    return body


def _check_unicode(body: Any) -> None:
    """Refuse lone surrogates (``"\\ud800"``): valid JSON, but no UTF-8 writer takes them."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError(
            "message holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF): not Unicode text"
        ) from None


def describe_validation_error(exc: ValidationError, *, limit: int = 3) -> str:
    """pydantic's errors as one line: ``source.uri: field required; labels.x: must be a
    string (got number)``. Input values are never quoted (they may be large or secret)."""
    errors = exc.errors(include_url=False)
    lines = [f"{_path(error['loc'])}: {reason(error)}" for error in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"and {len(errors) - limit} more")
    return "; ".join(lines)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in (_INLINE_TAG, _URI_TAG):
            out += f".{part}" if out else str(part)
    return out or "request"


# -- requests out (akisnap request) -----------------------------------------------------------


def build_request(
    collection_id: str,
    source: SourceSpec,
    *,
    request_id: str | None = None,
    format: str = "parquet",
    compression: str = "zstd",
    labels: Mapping[str, str] | None = None,
    base: str | None = None,
    deletes: Sequence[str] | None = None,
) -> tuple[bytes, bytes]:
    """(key, value) of a v1 request, checked by the same parser the daemon uses."""
    source_body: dict[str, Any]
    if isinstance(source, InlineSource):
        source_body = {"documents": list(source.documents)}
    else:
        source_body = {"uri": source.uri, "format": source.format}
    body = {
        "schema": REQUEST_SCHEMA,
        "request_id": request_id or new_request_id(),
        "collection_id": collection_id,
        "source": source_body,
        "format": format,
        "options": {"compression": compression},
        "labels": dict(labels or {}),
    }
    if base is not None:
        body["base"] = base
    if deletes is not None:
        body["deletes"] = list(deletes)
    try:
        value = json.dumps(body, separators=(",", ":"), allow_nan=False, default=_json_default)
    except ValueError as exc:
        raise InvalidRequestError(f"request is not JSON-able: {exc}") from None
    encoded = value.encode("utf-8")
    parse_request(encoded, max_bytes=len(encoded))
    return collection_id.encode("utf-8"), encoded


def _json_default(value: object) -> Any:
    """Documents built in Python: NumPy arrays and scalars, UUIDs and datetimes."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    tolist = getattr(value, "tolist", None)  # numpy.ndarray / numpy scalar
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# -- results out ------------------------------------------------------------------------------


def build_result(
    job: SnapshotJob,
    outcome: CreateOutcome,
    *,
    store_root: str,
    durations: dict[str, float],
) -> bytes:
    """The value of the result event for a finished job (key: the collection id).

    ``durations_seconds`` is ``outcome.stage_seconds`` updated with ``durations`` (the
    daemon's own decode/validate timings, or its measurement of every stage)."""
    meta = outcome.metadata
    key = commit_marker_key(meta)
    result = SnapshotResultV1(
        schema=RESULT_SCHEMA,
        request_id=job.request_id,
        collection_id=job.collection_id,
        snapshot_id=meta.snapshot_id,
        status="duplicate" if outcome.duplicate else "created",
        metadata_uri=f"{store_root.rstrip('/')}/{key}",
        format=meta.format,
        compression=meta.compression,
        vector_count=meta.vector_count,
        dimension=meta.dimension,
        total_bytes=meta.total_bytes,
        parts=[
            ResultPartV1(key=part.key, sha256=part.sha256, size=part.size, rows=part.rows)
            for part in meta.parts
        ],
        labels=dict(meta.labels or job.labels),
        created_at=meta.created_at,
        durations_seconds={
            stage: round(float(seconds), 6)
            for stage, seconds in {**outcome.stage_seconds, **durations}.items()
        },
        finished_at=utc_now_iso(),
        **_delta_fields(meta),
    )
    return result.model_dump_json(by_alias=True).encode("utf-8")


def _delta_fields(meta: SnapshotMetadata) -> dict[str, Any]:
    written = meta.written_bytes
    if meta.delta is None:
        return {"kind": "full", "bytes_written": written}
    return {
        "kind": "delta",
        "base": meta.delta.base_snapshot_id,
        "rows_added": meta.delta.rows_added,
        "rows_changed": meta.delta.rows_changed,
        "rows_deleted": meta.delta.rows_deleted,
        "bytes_written": written,
    }


def parse_result(value: bytes) -> SnapshotResultV1:
    """A result event (for the demo, `akisnap request --wait` and tests)."""
    try:
        return SnapshotResultV1.model_validate_json(value)
    except ValidationError as exc:
        raise InvalidRequestError(f"not a v1 result: {describe_validation_error(exc)}") from None


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- JSON Schema ------------------------------------------------------------------------------


def request_json_schema() -> dict[str, Any]:
    return _json_schema(SnapshotRequestV1)


def result_json_schema() -> dict[str, Any]:
    return _json_schema(SnapshotResultV1)


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema(by_alias=True)}


def write_schemas(directory: Path = SCHEMAS_DIR) -> list[Path]:
    """Regenerate the shipped schema files:
    ``python -c 'from daemon.events import write_schemas; write_schemas()'``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for path, schema in (
        (directory / REQUEST_SCHEMA_FILE.name, request_json_schema()),
        (directory / RESULT_SCHEMA_FILE.name, result_json_schema()),
    ):
        path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
