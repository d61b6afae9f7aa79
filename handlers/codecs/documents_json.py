"""Documents as plain JSON objects: the ``.jsonl`` restore output and the size estimate
that compression ratios are measured against."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from handlers.model import DocumentBatch


def batch_to_documents(batch: DocumentBatch) -> Iterator[dict[str, Any]]:
    """The documents of a batch as plain JSON-ready dicts (metadata as its JSON value)."""
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


def table_to_documents(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Like :func:`batch_to_documents`, for any subset of the columns (a partial restore)."""
    columns = {name: _json_values(name, table.column(name)) for name in table.column_names}
    for i in range(table.num_rows):
        yield {JSON_KEYS.get(name, name): values[i] for name, values in columns.items()}


JSON_KEYS = {"document_id": "id"}


def _json_values(name: str, column: pa.ChunkedArray) -> list[Any]:
    if name == "document_id":
        return [str(uuid.UUID(bytes=raw)) for raw in column.to_pylist()]
    if name == "metadata":
        return [None if text is None else json.loads(text) for text in column.to_pylist()]
    if name == "inserted_at":
        return [format_micros(micros) for micros in column.cast(pa.int64()).to_pylist()]
    return list(column.to_pylist())


def format_micros(micros: int) -> str:
    stamp = datetime.fromtimestamp(micros // 1_000_000, tz=UTC).replace(
        microsecond=micros % 1_000_000
    )
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def documents_json_bytes(batch: DocumentBatch) -> int:
    """What these documents would take as JSON (for honest size ratios)."""
    return sum(
        len(json.dumps(doc, ensure_ascii=False).encode()) + 2 for doc in batch_to_documents(batch)
    )
