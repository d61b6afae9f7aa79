"""The slice of real embeddings kept in the repository, for the demo and the tests.

``tests/data/pypi-summaries-minilm-2k.parquet`` (provenance in ``tests/data/README.md``) is
found beside the package when it runs from the repository; an installed wheel has no copy,
and :func:`real_embeddings` then returns ``None``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE_EMBEDDINGS = (
    Path(__file__).resolve().parents[1] / "tests" / "data" / "pypi-summaries-minilm-2k.parquet"
)


def real_embeddings(rows: int) -> pa.Table | None:
    """The first ``rows`` real embeddings; past the slice's end the rows repeat with fresh
    document ids (UUIDv5 of the original id and the round), so ids stay unique."""
    if not SAMPLE_EMBEDDINGS.is_file():
        return None
    table = pq.read_table(SAMPLE_EMBEDDINGS)
    pieces = [table.slice(0, rows)]
    taken, rounds = pieces[0].num_rows, 0
    while taken < rows:
        rounds += 1
        piece = table.slice(0, rows - taken)
        pieces.append(_renamed(piece, rounds))
        taken += piece.num_rows
    return pa.concat_tables(pieces).combine_chunks()


def _renamed(piece: pa.Table, rounds: int) -> pa.Table:
    ids = [
        uuid.uuid5(uuid.UUID(bytes=old), str(rounds)).bytes
        for old in piece.column("document_id").to_pylist()
    ]
    column = pa.array(ids, type=piece.schema.field("document_id").type)
    return piece.set_column(piece.schema.get_field_index("document_id"), "document_id", column)
