"""The legacy JSON snapshot format: readable forever, written only on request.

One JSON object per part::

    {"format": "akidb.snapshot.json", "version": 1, "dimension": 3,
     "documents": [{"id": "<uuid>", "external_id": "sku-1", "vector": [0.1, ...],
                    "metadata": {...}, "inserted_at": "2026-11-24T10:00:00.000000Z"}]}

Vector values are written as the shortest decimal of their float64 widening, which parses
back to the identical float32: the round trip is bit for bit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from handlers.errors import CorruptSnapshotError, InvalidDocumentsError
from handlers.hashing import HashingFile
from handlers.model import DocumentBatch

LEGACY_FORMAT = "akidb.snapshot.json"
LEGACY_VERSION = 1


def batch_to_documents(batch: DocumentBatch) -> Iterator[dict[str, Any]]:
    """The documents of a batch as plain JSON-ready dicts."""
    record = batch.record_batch
    ids = record.column("document_id").to_pylist()
    external = record.column("external_id").to_pylist()
    metadata = record.column("metadata").to_pylist()
    stamps = record.column("inserted_at").cast(pa.int64()).to_pylist()
    vectors = batch.vectors.tolist()
    for i, raw_id in enumerate(ids):
        yield {
            "id": str(uuid.UUID(bytes=raw_id)),
            "external_id": external[i],
            "vector": vectors[i],
            "metadata": None if metadata[i] is None else json.loads(metadata[i]),
            "inserted_at": format_micros(stamps[i]),
        }


def format_micros(micros: int) -> str:
    stamp = datetime.fromtimestamp(micros // 1_000_000, tz=UTC).replace(
        microsecond=micros % 1_000_000
    )
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonPartWriter:
    """Streams documents into one legacy JSON part without holding them all."""

    extension = "json"

    def __init__(self, path: Path, dimension: int, compression: str = "none") -> None:
        self._sink = HashingFile(path)
        self._write(
            f'{{"format": "{LEGACY_FORMAT}", "version": {LEGACY_VERSION}, '
            f'"dimension": {dimension}, "documents": ['
        )
        self._first = True
        self.rows = 0

    def write(self, batch: DocumentBatch) -> None:
        texts = [
            json.dumps(document, ensure_ascii=False, allow_nan=False)
            for document in batch_to_documents(batch)
        ]
        self._write(("" if self._first else ",\n") + ",\n".join(texts))
        self._first = False
        self.rows += batch.num_rows

    def close(self) -> None:
        try:
            self._write("]}\n")
        finally:
            self._sink.close()

    @property
    def sha256(self) -> str:
        return self._sink.sha256

    @property
    def size(self) -> int:
        return self._sink.size

    def _write(self, text: str) -> None:
        self._sink.write(text.encode("utf-8"))


def documents_json_bytes(batch: DocumentBatch) -> int:
    """What these documents would take in the JSON format (for honest size ratios)."""
    return sum(
        len(json.dumps(doc, ensure_ascii=False).encode()) + 2 for doc in batch_to_documents(batch)
    )


def parse_legacy(raw: bytes) -> tuple[int | None, Sequence[Mapping[str, Any]]]:
    """(dimension or None, documents) of a legacy snapshot: the object, or a bare list."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidDocumentsError(f"legacy JSON snapshot is not valid JSON: {exc}") from None
    if isinstance(body, list):
        return None, body
    if not isinstance(body, dict) or not isinstance(body.get("documents"), list):
        raise InvalidDocumentsError("legacy JSON snapshot has no 'documents' list")
    dimension = body.get("dimension")
    return (dimension if isinstance(dimension, int) else None), body["documents"]


def read_json_part(path: Path, dimension: int) -> Iterator[pa.RecordBatch]:
    """Decode one JSON part of a snapshot, checking it holds what the metadata says."""
    try:
        declared, documents = parse_legacy(path.read_bytes())
        batch = DocumentBatch.from_documents(documents)
    except InvalidDocumentsError as exc:
        raise CorruptSnapshotError(f"JSON part is unreadable: {exc.message}") from None
    if batch.dimension != dimension or (declared is not None and declared != dimension):
        raise CorruptSnapshotError(
            f"JSON part has dimension {batch.dimension}, metadata says {dimension}"
        )
    yield batch.record_batch
