"""AkiDB 2.0's JSON snapshot: one compact JSON array of documents (docs/akidb-2.0.md).

Read: every field is understood (``doc_id``, ``external_id``, ``vector``, ``metadata`` as any
JSON value, ``inserted_at`` in RFC 3339 with nanoseconds); a field it does not know is refused
by name. Snapshots keep microseconds: sub-microsecond digits of ``inserted_at`` are dropped
(said in the docs and in the CLI's output).

Write: byte for byte what AkiDB's serde_json prints: keys in AkiDB's order, f32 values in
their shortest round-trip form spelled as Rust's ``ryu`` spells them, metadata with sorted keys.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from handlers.akidb.sidecar import format_rfc3339_nanos, parse_rfc3339_nanos
from handlers.errors import CorruptSnapshotError, InvalidDocumentsError
from handlers.hashing import HashedOutput, HashingFile
from handlers.model import (
    ID_TYPE,
    TIMESTAMP_TYPE,
    DocumentBatch,
    inline_vectors,
    matrix_to_fixed_size_list,
    snapshot_schema,
)

DOCUMENT_FIELDS = ("doc_id", "external_id", "vector", "metadata", "inserted_at")
PRECISION_NOTE = (
    "inserted_at: AkiDB JSON holds nanoseconds, akisnap keeps microseconds "
    "(sub-microsecond digits dropped)"
)


def parse_documents(raw: bytes) -> list[Any]:
    """The bare array of an AkiDB JSON snapshot."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidDocumentsError(f"AkiDB JSON snapshot is not valid JSON: {exc}") from None
    if not isinstance(body, list):
        raise InvalidDocumentsError(
            f"AkiDB JSON snapshot must be a JSON array of documents, not {type(body).__name__}"
        )
    return body


def documents_to_batch(documents: Sequence[Any]) -> DocumentBatch:
    """AkiDB documents as one validated batch (refusing, by name, what cannot be kept)."""
    if not documents:
        raise InvalidDocumentsError("the AkiDB JSON snapshot holds no documents")
    for position, document in enumerate(documents):
        _check_fields(document, position)
    vectors = inline_vectors([{"vector": doc["vector"]} for doc in documents])
    arrays = [
        pa.array([_doc_id(doc, i) for i, doc in enumerate(documents)], type=ID_TYPE),
        pa.array([_external_id(doc, i) for i, doc in enumerate(documents)], type=pa.string()),
        matrix_to_fixed_size_list(vectors),
        pa.array([_metadata(doc, i) for i, doc in enumerate(documents)], type=pa.string()),
        pa.array([_micros(doc, i) for i, doc in enumerate(documents)], type=pa.int64()).cast(
            TIMESTAMP_TYPE
        ),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=snapshot_schema(vectors.shape[1]))
    return DocumentBatch.validated(batch)


def read_akidb_json(path: Path, dimension: int) -> Iterator[pa.RecordBatch]:
    """Decode a stored AkiDB JSON snapshot, checking the dimension its sidecar states."""
    try:
        batch = documents_to_batch(parse_documents(path.read_bytes()))
    except InvalidDocumentsError as exc:
        raise CorruptSnapshotError(f"AkiDB JSON snapshot is unreadable: {exc.message}") from None
    except RecursionError:
        raise CorruptSnapshotError("AkiDB JSON snapshot is nested too deeply") from None
    if batch.dimension != dimension:
        raise CorruptSnapshotError(
            f"AkiDB JSON snapshot has dimension {batch.dimension}, its sidecar says {dimension}"
        )
    yield batch.record_batch


class AkidbJsonWriter(HashedOutput):
    """Streams documents into one AkiDB JSON array, hashed as it is written."""

    extension = "json"

    def __init__(self, path: Path, dimension: int, compression: str = "none") -> None:
        self._sink = HashingFile(path)
        self._sink.write(b"[")
        self._first = True
        self.rows = 0

    def write(self, batch: DocumentBatch) -> None:
        text = ",".join(document_texts(batch))
        self._sink.write((text if self._first else "," + text).encode("utf-8"))
        self._first = False
        self.rows += batch.num_rows

    def close(self) -> None:
        try:
            self._sink.write(b"]")
        finally:
            self._sink.close()


def document_texts(batch: DocumentBatch) -> Iterator[str]:
    """Each document exactly as AkiDB's serde_json prints it."""
    record = batch.record_batch
    ids = record.column("document_id").to_pylist()
    external = record.column("external_id").to_pylist()
    metadata = record.column("metadata").to_pylist()
    micros = record.column("inserted_at").cast(pa.int64()).to_pylist()
    vectors = batch.vectors
    for row, raw_id in enumerate(ids):
        yield (
            f'{{"doc_id":"{uuid.UUID(bytes=raw_id)}",'
            f'"external_id":{_json_text(external[row])},'
            f'"vector":[{",".join(format_f32(value) for value in vectors[row])}],'
            f'"metadata":{_metadata_out(metadata[row])},'
            f'"inserted_at":"{format_rfc3339_nanos(micros[row] * 1000)}"}}'
        )


def format_f32(value: np.float32) -> str:
    """A float32 as Rust's ``ryu`` prints it: the shortest digits that round-trip."""
    if value == 0:
        return "-0.0" if np.signbit(value) else "0.0"
    text = np.format_float_scientific(value, unique=True, trim="-")
    sign = "-" if text.startswith("-") else ""
    mantissa, exponent = text.lstrip("-").split("e")
    digits = mantissa.replace(".", "")
    point = int(exponent) + 1  # where the decimal point goes, counted in digits
    if len(digits) <= point <= 13:
        return f"{sign}{digits}{'0' * (point - len(digits))}.0"
    if 0 < point <= 13:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    tail = f".{digits[1:]}" if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{tail}e{point - 1}"


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _metadata_out(text: str | None) -> str:
    # serde_json keeps object keys sorted (a BTreeMap): print them the same way.
    if text is None:
        return "null"
    try:
        value = json.loads(text)
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
        )
    except ValueError as exc:
        raise InvalidDocumentsError(f"metadata that AkiDB's JSON cannot hold: {exc}") from None


def _check_fields(document: object, position: int) -> None:
    if not isinstance(document, dict):
        raise InvalidDocumentsError(f"document #{position} is not a JSON object")
    unknown = sorted(set(document) - set(DOCUMENT_FIELDS))
    if unknown:
        raise InvalidDocumentsError(
            f"document #{position} has field(s) {', '.join(unknown)} that a snapshot cannot "
            "hold: refused rather than dropped"
        )
    for required in ("doc_id", "vector", "inserted_at"):
        if required not in document:
            raise InvalidDocumentsError(f"document #{position} has no {required!r}")


def _doc_id(document: dict[str, Any], position: int) -> bytes:
    value = document["doc_id"]
    try:
        if isinstance(value, str):
            return uuid.UUID(value).bytes
    except ValueError:
        pass
    raise InvalidDocumentsError(f"document #{position} has doc_id {value!r}, not a UUID")


def _external_id(document: dict[str, Any], position: int) -> str | None:
    value = document.get("external_id")
    if value is not None and not isinstance(value, str):
        raise InvalidDocumentsError(f"document #{position} has an external_id that is not text")
    return value


def _metadata(document: dict[str, Any], position: int) -> str | None:
    value = document.get("metadata")
    return None if value is None else _json_text(value)


def _micros(document: dict[str, Any], position: int) -> int:
    value = document["inserted_at"]
    try:
        if isinstance(value, str):
            return parse_rfc3339_nanos(value) // 1000
    except ValueError:
        pass
    raise InvalidDocumentsError(
        f"document #{position} has inserted_at {value!r}, not an RFC 3339 time"
    )
