"""The snapshot model refuses bad documents at the door and names the culprit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from handlers.errors import InvalidDocumentsError, PermanentError
from handlers.model import DocumentBatch, positional_ids, vectors_bit_equal

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def doc(vector: list[float], **extra: object) -> dict[str, object]:
    return {"id": str(uuid.uuid4()), "vector": vector, **extra}


def test_inline_documents_build_a_batch() -> None:
    """Inline JSON documents become one float32 batch with ids, metadata and times."""
    batch = DocumentBatch.from_documents(
        [
            doc(
                [0.5, -1.0],
                external_id="a",
                metadata={"lang": "en"},
                inserted_at="2026-11-24T10:00:00Z",
            ),
            doc([1.0, 2.0]),
        ]
    )
    assert batch.num_rows == 2 and batch.dimension == 2
    assert batch.vectors.dtype == np.float32
    assert batch.record_batch.column("metadata").to_pylist()[0] == '{"lang":"en"}'


@pytest.mark.parametrize(
    ("documents", "fragment"),
    [
        ([], "empty"),
        ([doc([1.0]), doc([1.0, 2.0])], "dimension 2, the first had 1"),
        ([doc([float("nan")])], "not finite"),
        ([doc([float("inf")])], "not finite"),
        ([doc([1e39])], "overflows float32"),
        ([doc(["x"])], "not a number"),
        ([doc([True])], "not a number"),
        ([doc([])], "no vector"),
        ([{"id": "not-a-uuid", "vector": [1.0]}], "not a UUID"),
        ([{"vector": [1.0]}], "no 'id'"),
        ([doc([1.0], metadata=[1, 2])], "not a JSON object"),
        ([doc([1.0], metadata="text")], "not a JSON object"),
        ([doc([1.0], inserted_at="yesterday")], "ISO-8601"),
        ([doc([1.0], external_id=5)], "external_id"),
        (["not an object"], "not a JSON object"),
    ],
)
def test_bad_inline_documents_are_refused(documents: list[object], fragment: str) -> None:
    """Each kind of bad document is a permanent error whose message says what is wrong."""
    with pytest.raises(InvalidDocumentsError, match=fragment) as caught:
        DocumentBatch.from_documents(documents)  # type: ignore[arg-type]
    assert isinstance(caught.value, PermanentError)


def test_duplicate_ids_are_refused_and_named() -> None:
    """Two documents with the same UUID are refused, naming the id."""
    same = str(uuid.uuid4())
    with pytest.raises(InvalidDocumentsError, match=same):
        DocumentBatch.from_documents([{"id": same, "vector": [1.0]}, {"id": same, "vector": [2.0]}])


def test_non_finite_values_in_arrays_name_the_document() -> None:
    """A NaN deep inside a matrix is found and its row named."""
    matrix = np.ones((100, 8), dtype=np.float32)
    matrix[42, 3] = np.nan
    with pytest.raises(InvalidDocumentsError, match="#42"):
        DocumentBatch.from_arrays(matrix)


@pytest.mark.parametrize("dimension", [0, 65537])
def test_dimension_bounds(dimension: int) -> None:
    """Dimensions outside 1..65536 are refused."""
    with pytest.raises(InvalidDocumentsError, match="dimension"):
        DocumentBatch.from_arrays(np.ones((2, dimension), dtype=np.float32))


def test_from_arrow_accepts_uuid_text_and_missing_optional_columns() -> None:
    """Exports may carry UUID text ids, list<double> vectors and no optional columns."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    table = pa.table({"document_id": ids, "vector": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]})
    batch = DocumentBatch.from_arrow(table.to_batches()[0], default_inserted_at=NOW)
    assert [str(i) for i in batch.document_ids] == ids
    assert batch.record_batch.column("external_id").null_count == 3
    assert batch.record_batch.column("inserted_at")[0].as_py() == NOW


def test_from_arrow_refuses_mixed_dimensions_in_a_list_column() -> None:
    """A variable-length vector column with two lengths is refused."""
    table = pa.table(
        {"document_id": [str(uuid.uuid4()) for _ in range(2)], "vector": [[1.0, 2.0], [3.0]]}
    )
    with pytest.raises(InvalidDocumentsError, match="mixed vector dimensions"):
        DocumentBatch.from_arrow(table.to_batches()[0], default_inserted_at=NOW)


def test_from_arrow_refuses_float64_overflow() -> None:
    """A float64 export value too big for float32 is refused, not turned into inf."""
    table = pa.table({"document_id": [str(uuid.uuid4())], "vector": [[1.0, 3.5e38]]})
    with pytest.raises(InvalidDocumentsError, match="overflows float32"):
        DocumentBatch.from_arrow(table.to_batches()[0], default_inserted_at=NOW)


def test_positional_ids_are_deterministic_unique_uuids() -> None:
    """Ids generated from positions repeat for the same seed and differ across seeds."""
    first = positional_ids("s3://b/x.npy", 0, 1000).to_pylist()
    again = positional_ids("s3://b/x.npy", 0, 1000).to_pylist()
    other = positional_ids("s3://b/y.npy", 0, 1000).to_pylist()
    assert first == again and len(set(first)) == 1000 and not set(first) & set(other)
    assert positional_ids("s3://b/x.npy", 500, 1).to_pylist() == first[500:501]
    assert all(uuid.UUID(bytes=raw).version == 8 for raw in first[:10])


def test_vectors_bit_equal_sees_sign_of_zero() -> None:
    """Bit equality tells -0.0 from 0.0, which == does not."""
    zero = np.zeros((1, 2), dtype=np.float32)
    assert vectors_bit_equal(zero, zero.copy())
    assert not vectors_bit_equal(zero, -zero)
