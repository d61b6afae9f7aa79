"""The snapshot's documents as one validated, columnar batch.

A :class:`DocumentBatch` wraps an Arrow record batch with the snapshot schema. It is checked
once, when built: not empty, one dimension, every vector value finite, UUID ids without
duplicates, metadata a JSON object. Everything downstream (encode, verify, restore) can then
trust it. The vectors are a zero-copy NumPy view of the Arrow buffer.

It is longer than most modules on purpose: every rule a document must meet, for inline JSON
and for Arrow columns alike, is here and nowhere else (one validation path).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from handlers.errors import InvalidDocumentsError

MAX_DIMENSION = 65536

ID_TYPE = pa.binary(16)
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

FloatMatrix = npt.NDArray[np.float32]


def bytes_per_row_estimate(dimension: int) -> int:
    """A row's in-memory size (vector, id, some text), for sizing batches and parts."""
    return 4 * dimension + 80


def snapshot_schema(dimension: int) -> pa.Schema:
    """The Arrow schema of every snapshot of that dimension (DESIGN: 'The snapshot')."""
    return pa.schema(
        [
            pa.field("document_id", ID_TYPE, nullable=False),
            pa.field("external_id", pa.string(), nullable=True),
            pa.field("vector", pa.list_(pa.field("item", pa.float32()), dimension), nullable=False),
            pa.field("metadata", pa.string(), nullable=True),
            pa.field("inserted_at", TIMESTAMP_TYPE, nullable=False),
        ]
    )


@dataclass(frozen=True)
class DocumentBatch:
    """A validated batch of documents of one dimension."""

    record_batch: pa.RecordBatch

    @property
    def dimension(self) -> int:
        return int(self.record_batch.schema.field("vector").type.list_size)

    @property
    def num_rows(self) -> int:
        return int(self.record_batch.num_rows)

    @property
    def nbytes(self) -> int:
        return int(self.record_batch.nbytes)

    @property
    def vectors(self) -> FloatMatrix:
        """The (rows, dimension) float32 matrix, without copying."""
        return fixed_size_list_to_matrix(self.record_batch.column("vector"))

    def slice(self, start: int, length: int) -> DocumentBatch:
        """Rows [start, start+length) without copying (already validated)."""
        return DocumentBatch(self.record_batch.slice(start, length))

    @property
    def document_ids(self) -> list[uuid.UUID]:
        return [uuid.UUID(bytes=raw) for raw in self.record_batch.column("document_id").to_pylist()]

    @classmethod
    def from_arrow(
        cls, batch: pa.RecordBatch, *, default_inserted_at: datetime, unique_ids: bool = True
    ) -> DocumentBatch:
        """Normalise an export's batch to the snapshot schema, then validate it.

        ``document_id`` may be 16-byte binary or UUID text; ``external_id``, ``metadata`` and
        ``inserted_at`` may be missing (nulls, or ``default_inserted_at``). ``unique_ids=False``
        leaves the duplicate check to a caller that checks across all batches at once.
        """
        return cls.validated(_normalise(batch, default_inserted_at), unique_ids=unique_ids)

    @classmethod
    def from_arrays(
        cls,
        vectors: npt.ArrayLike,
        *,
        document_ids: Sequence[bytes] | None = None,
        external_ids: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        inserted_at: datetime | None = None,
        id_seed: str = "",
        first_position: int = 0,
    ) -> DocumentBatch:
        """Build a batch from plain arrays; ids are derived from positions when not given."""
        matrix = _as_float32_matrix(vectors)
        rows = matrix.shape[0]
        ids = (
            pa.array(document_ids, type=ID_TYPE)
            if document_ids is not None
            else positional_ids(id_seed, first_position, rows)
        )
        meta_text = (
            None if metadata is None else [_metadata_text(m, i) for i, m in enumerate(metadata)]
        )
        stamp = inserted_at or datetime.now(UTC)
        arrays = [
            ids,
            pa.array(external_ids if external_ids is not None else [None] * rows, type=pa.string()),
            matrix_to_fixed_size_list(matrix),
            pa.array(meta_text if meta_text is not None else [None] * rows, type=pa.string()),
            pa.array(np.full(rows, to_micros(stamp), dtype="int64"), type=pa.int64()).cast(
                TIMESTAMP_TYPE
            ),
        ]
        schema = snapshot_schema(matrix.shape[1] if matrix.ndim == 2 else 0)
        return cls.validated(pa.RecordBatch.from_arrays(arrays, schema=schema))

    @classmethod
    def from_documents(cls, documents: Sequence[Mapping[str, Any]]) -> DocumentBatch:
        """Build a batch from inline JSON documents (the request's ``source.documents``)."""
        if not documents:
            raise InvalidDocumentsError("source.documents is empty: a snapshot needs documents")
        ids = [_document_uuid(doc, i) for i, doc in enumerate(documents)]
        vectors = inline_vectors(documents)
        external = [_optional_text(doc, "external_id", i) for i, doc in enumerate(documents)]
        meta = [_metadata_text(doc.get("metadata"), i) for i, doc in enumerate(documents)]
        stamps = [_inline_timestamp(doc, i) for i, doc in enumerate(documents)]
        arrays = [
            pa.array(ids, type=ID_TYPE),
            pa.array(external, type=pa.string()),
            matrix_to_fixed_size_list(vectors),
            pa.array(meta, type=pa.string()),
            pa.array(stamps, type=pa.int64()).cast(TIMESTAMP_TYPE),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=snapshot_schema(vectors.shape[1]))
        return cls.validated(batch)

    @classmethod
    def validated(cls, batch: pa.RecordBatch, *, unique_ids: bool = True) -> DocumentBatch:
        """Check every invariant of the model; raise InvalidDocumentsError naming the culprit."""
        _check_shape(batch)
        ids = batch.column("document_id")
        if unique_ids:
            check_unique_ids(id_keys(ids))
        _check_finite(fixed_size_list_to_matrix(batch.column("vector")), ids)
        _check_metadata(batch.column("metadata"), ids)
        if batch.column("inserted_at").null_count:
            raise InvalidDocumentsError("inserted_at has nulls")
        return cls(batch)


# -- Arrow <-> NumPy ------------------------------------------------------------------------


def fixed_size_list_to_matrix(column: pa.Array) -> FloatMatrix:
    """A (rows, dim) view of a fixed_size_list<float32> array (no copy when unsliced)."""
    dim = int(column.type.list_size)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(column), dim)


def matrix_to_fixed_size_list(matrix: FloatMatrix) -> pa.FixedSizeListArray:
    dim = int(matrix.shape[1]) if matrix.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def positional_ids(seed: str, first_position: int, rows: int) -> pa.Array:
    """Deterministic UUIDs (version 8) from a seed and the row position.

    The first 8 bytes come from a UUIDv5 of the seed, the last 8 are the position; the same
    export therefore always gets the same ids, and positions never collide.
    """
    prefix = np.frombuffer(uuid.uuid5(uuid.NAMESPACE_URL, seed).bytes[:8], dtype=np.uint8).copy()
    prefix[6] = (prefix[6] & 0x0F) | 0x80
    positions = np.arange(first_position, first_position + rows, dtype=">u8")
    raw = np.empty((rows, 16), dtype=np.uint8)
    raw[:, :8] = prefix
    raw[:, 8:] = positions.view(np.uint8).reshape(rows, 8)
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return pa.FixedSizeBinaryArray.from_buffers(ID_TYPE, rows, [None, pa.py_buffer(raw.tobytes())])


# -- validation -----------------------------------------------------------------------------


def _check_shape(batch: pa.RecordBatch) -> None:
    if batch.num_rows == 0:
        raise InvalidDocumentsError("no documents: a snapshot needs at least one")
    dim = batch.schema.field("vector").type.list_size
    if not 1 <= dim <= MAX_DIMENSION:
        raise InvalidDocumentsError(f"dimension {dim} is outside 1..{MAX_DIMENSION}")
    if batch.column("vector").null_count or batch.column("document_id").null_count:
        raise InvalidDocumentsError("vector and document_id must not be null")


def id_keys(ids: pa.Array) -> npt.NDArray[np.void]:
    """The 16-byte ids as one NumPy array of opaque 16-byte items (a view when possible)."""
    raw = np.frombuffer(ids.buffers()[1], dtype=np.uint8, count=16 * (len(ids) + ids.offset))
    return raw[16 * ids.offset :].view("V16")


def check_unique_ids(keys: npt.NDArray[np.void]) -> None:
    """Refuse duplicate ids, naming the first one and the position it repeats at."""
    # Sorting 16-byte items is slow: sort a 64-bit mix of both halves, then compare whole
    # ids only where the mixes collide (ids sharing a prefix, like positional ones, still mix
    # apart).
    halves = np.ascontiguousarray(keys).view(np.uint64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        mixed = halves[:, 0] ^ (halves[:, 1] * np.uint64(0x9E3779B97F4A7C15))
    order = np.argsort(mixed)
    leading = mixed[order]
    ties = np.flatnonzero(leading[1:] == leading[:-1])
    if len(ties) == 0:
        return
    tied = np.unique(np.concatenate([order[ties], order[ties + 1]]))
    subset = keys[tied]
    sub_order = np.argsort(subset, kind="stable")
    ordered = subset[sub_order]
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(repeats):
        position = int(tied[sub_order[repeats[0] + 1]])
        duplicate = uuid.UUID(bytes=keys[position].tobytes())
        raise InvalidDocumentsError(
            f"document #{position} ({duplicate}) has an id that appears more than once"
        )


def _check_finite(matrix: FloatMatrix, ids: pa.Array) -> None:
    finite_rows = np.isfinite(matrix).all(axis=1)
    if not finite_rows.all():
        row = int(np.argmin(finite_rows))
        bad = matrix[row][~np.isfinite(matrix[row])][0]
        raise InvalidDocumentsError(
            f"document {_describe(ids, row)} has a non-finite vector value ({bad}); "
            "NaN and ±Inf are refused"
        )


def _check_metadata(column: pa.Array, ids: pa.Array) -> None:
    if column.null_count == len(column):
        return
    for position, text in enumerate(column.to_pylist()):
        if text is None:
            continue
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise InvalidDocumentsError(
                f"document {_describe(ids, position)} has metadata that is not JSON: {exc}"
            ) from None
        if parsed is None:
            raise InvalidDocumentsError(
                f"document {_describe(ids, position)} has metadata text 'null': "
                "no metadata is a null, not the JSON text null"
            )


def _describe(ids: pa.Array, position: int) -> str:
    raw = ids[position].as_py()
    return f"#{position} ({uuid.UUID(bytes=raw)})" if raw and len(raw) == 16 else f"#{position}"


# -- normalising exports --------------------------------------------------------------------


SNAPSHOT_COLUMNS = ("document_id", "external_id", "vector", "metadata", "inserted_at")
AKIDB_COLUMNS = ("dimension", "metadata_json")
"""AkiDB 2.0's own Parquet columns (docs/akidb-2.0.md), understood wherever Parquet is read."""


def _normalise(batch: pa.RecordBatch, default_inserted_at: datetime) -> pa.RecordBatch:
    names = set(batch.schema.names)
    _check_columns(names)
    vector = _vector_column(batch.column("vector"))
    rows = batch.num_rows
    if "dimension" in names:
        _check_dimension_column(batch.column("dimension"), vector.type.list_size)
    metadata_name = "metadata_json" if "metadata_json" in names else "metadata"
    arrays = [
        _id_column(batch.column("document_id")),
        _cast(batch, "external_id", pa.string(), rows),
        vector,
        _cast(batch, metadata_name, pa.string(), rows),
        _timestamps(batch, rows, default_inserted_at),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=snapshot_schema(vector.type.list_size))


def _check_columns(names: set[str]) -> None:
    """A column akisnap does not know is refused by name: dropping it would lose data."""
    for required in ("vector", "document_id"):
        if required not in names:
            raise InvalidDocumentsError(f"the export has no {required!r} column")
    unknown = sorted(names - set(SNAPSHOT_COLUMNS) - set(AKIDB_COLUMNS))
    if unknown:
        raise InvalidDocumentsError(
            f"the export has column(s) {', '.join(unknown)} that a snapshot cannot hold: "
            "refused rather than dropped (remove them from the export first)"
        )
    if {"metadata", "metadata_json"} <= names:
        raise InvalidDocumentsError("the export has both 'metadata' and 'metadata_json'")


def _check_dimension_column(column: pa.Array, dimension: int) -> None:
    """AkiDB's per-row ``dimension`` must agree with the vectors it describes."""
    if not pa.types.is_integer(column.type) or column.null_count:
        raise InvalidDocumentsError(f"dimension column has type {column.type} or nulls")
    values = np.asarray(column.to_numpy(zero_copy_only=False))
    wrong = np.flatnonzero(values != dimension)
    if len(wrong):
        raise InvalidDocumentsError(
            f"document #{int(wrong[0])} has dimension {int(values[wrong[0]])}, "
            f"its vector has {dimension} values"
        )


def _vector_column(column: pa.Array) -> pa.Array:
    kind = column.type
    if pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32():
        return column
    if pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type):
        return _checked_narrowing(column.flatten(), kind.list_size, len(column))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(column)
        if len(column) == 0 or column.null_count:
            raise InvalidDocumentsError("vector column is empty or has nulls")
        low, high = pc.min_max(lengths).values()
        if low.as_py() != high.as_py():
            raise InvalidDocumentsError(
                f"mixed vector dimensions in one export ({low.as_py()} and {high.as_py()})"
            )
        if not pa.types.is_floating(kind.value_type) and not pa.types.is_integer(kind.value_type):
            raise InvalidDocumentsError(f"vector values must be numbers, not {kind.value_type}")
        return _checked_narrowing(column.flatten(), int(low.as_py()), len(column))
    raise InvalidDocumentsError(f"vector column has type {kind}; expected a list of float32")


def _checked_narrowing(values: pa.Array, dim: int, rows: int) -> pa.Array:
    wide = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return matrix_to_fixed_size_list(narrow_to_float32(wide.reshape(rows, dim)))


def _id_column(column: pa.Array) -> pa.Array:
    if column.type == ID_TYPE:
        return column
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        try:
            return column.cast(ID_TYPE)
        except pa.ArrowInvalid:
            raise InvalidDocumentsError("document_id must be 16 bytes (a UUID)") from None
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pa.array(
            [_parse_uuid(text, i) for i, text in enumerate(column.to_pylist())], type=ID_TYPE
        )
    raise InvalidDocumentsError(f"document_id has type {column.type}; expected UUID bytes or text")


def _cast(batch: pa.RecordBatch, name: str, kind: pa.DataType, rows: int) -> pa.Array:
    if name not in batch.schema.names:
        return pa.nulls(rows, type=kind)
    column = batch.column(name)
    if name.startswith("metadata") and pa.types.is_struct(column.type):
        return pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()])
    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InvalidDocumentsError(f"{name} has type {column.type}; expected {kind}") from None


def _timestamps(batch: pa.RecordBatch, rows: int, default: datetime) -> pa.Array:
    if "inserted_at" not in batch.schema.names:
        return pa.array(np.full(rows, to_micros(default), dtype="int64")).cast(TIMESTAMP_TYPE)
    column = batch.column("inserted_at")
    if not pa.types.is_timestamp(column.type):
        raise InvalidDocumentsError(f"inserted_at has type {column.type}; expected a timestamp")
    if column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    return column.cast(TIMESTAMP_TYPE).fill_null(pa.scalar(default, type=TIMESTAMP_TYPE))


# -- inline documents -----------------------------------------------------------------------


def _as_float32_matrix(vectors: npt.ArrayLike) -> FloatMatrix:
    try:
        array = np.asarray(vectors)
    except ValueError:
        raise InvalidDocumentsError("vectors do not all have the same dimension") from None
    if array.ndim != 2:
        raise InvalidDocumentsError(f"vectors must be a 2-D array, got {array.ndim} dimension(s)")
    if not 1 <= array.shape[1] <= MAX_DIMENSION:
        raise InvalidDocumentsError(f"dimension {array.shape[1]} is outside 1..{MAX_DIMENSION}")
    if array.dtype == np.float32:
        return array
    if array.dtype.kind not in "fiu":
        raise InvalidDocumentsError(f"vector values must be numbers, not {array.dtype}")
    return narrow_to_float32(array.astype(np.float64))


def narrow_to_float32(wide: npt.NDArray[np.float64]) -> FloatMatrix:
    """float64 -> float32, refusing NaN/Inf and values that round to ±Inf as float32.

    The test is on the rounded value, not the float64: AkiDB prints f32::MAX as
    ``3.4028235e38``, a float64 just above f32::MAX that still rounds to it.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = wide.astype(np.float32)
        bad = ~np.isfinite(narrow)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        value = float(wide[row, col])
        reason = "is not finite" if not math.isfinite(value) else "overflows float32"
        raise InvalidDocumentsError(
            f"document #{row} has vector value {value!r} at index {col} that {reason}"
        )
    return narrow


def inline_vectors(documents: Sequence[Mapping[str, Any]]) -> FloatMatrix:
    rows: list[list[float]] = []
    dim: int | None = None
    for position, doc in enumerate(documents):
        vector = doc.get("vector")
        if not isinstance(vector, list) or not vector:
            raise InvalidDocumentsError(f"document #{position} has no vector (a list of numbers)")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in vector):
            raise InvalidDocumentsError(
                f"document #{position} has a vector value that is not a number"
            )
        if dim is None:
            dim = len(vector)
        elif len(vector) != dim:
            raise InvalidDocumentsError(
                f"document #{position} has dimension {len(vector)}, the first had {dim}: "
                "one dimension per snapshot"
            )
        rows.append(vector)
    try:
        wide = np.asarray(rows, dtype=np.float64)
    except OverflowError:
        raise InvalidDocumentsError("a vector value is too large for float32") from None
    return narrow_to_float32(wide)


INLINE_FIELDS = ("id", "external_id", "vector", "metadata", "inserted_at")


def _document_uuid(doc: Mapping[str, Any], position: int) -> bytes:
    if not isinstance(doc, Mapping):
        raise InvalidDocumentsError(f"document #{position} is not a JSON object")
    unknown = sorted(str(name) for name in doc if name not in INLINE_FIELDS)
    if unknown:
        raise InvalidDocumentsError(
            f"document #{position} has field(s) {', '.join(unknown)} that a snapshot cannot "
            "hold: refused rather than dropped"
        )
    raw = doc.get("id")
    if not isinstance(raw, str):
        raise InvalidDocumentsError(f"document #{position} has no 'id' (a UUID string)")
    return _parse_uuid(raw, position)


def _parse_uuid(text: object, position: int) -> bytes:
    try:
        return uuid.UUID(str(text)).bytes if text is not None else _missing_id(position)
    except ValueError:
        raise InvalidDocumentsError(f"document #{position} has id {text!r}, not a UUID") from None


def _missing_id(position: int) -> bytes:
    raise InvalidDocumentsError(f"document #{position} has no id")


def _optional_text(doc: Mapping[str, Any], key: str, position: int) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidDocumentsError(f"document #{position} has {key} that is not a string")
    return value


def _metadata_text(value: object, position: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidDocumentsError(f"document #{position} has metadata that is not a JSON object")
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidDocumentsError(
            f"document #{position} has metadata that JSON cannot hold: {exc}"
        ) from None


def _inline_timestamp(doc: Mapping[str, Any], position: int) -> int:
    value = doc.get("inserted_at")
    if value is None:
        return to_micros(datetime.now(UTC))
    if not isinstance(value, str):
        raise InvalidDocumentsError(f"document #{position} has inserted_at that is not a string")
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidDocumentsError(
            f"document #{position} has inserted_at {value!r}, not an ISO-8601 time"
        ) from None
    return to_micros(stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC))


def to_micros(stamp: datetime) -> int:
    aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def vectors_bit_equal(left: npt.NDArray[np.float32], right: npt.NDArray[np.float32]) -> bool:
    """Equality of float32 bit patterns (NaN-safe, -0.0 distinct from 0.0)."""
    return left.shape == right.shape and bool(
        np.array_equal(left.view(np.uint32), right.view(np.uint32))
    )
