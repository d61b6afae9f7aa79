"""What a format change does to timestamps, said plainly wherever it happens."""

from __future__ import annotations

from handlers.akidb.json_codec import PRECISION_NOTE as JSON_READ_NOTE
from handlers.akidb.parquet_codec import PRECISION_NOTE as PARQUET_WRITE_NOTE


def precision_notes(source_format: str, target_format: str = "parquet") -> list[str]:
    """Notes for documents read from ``source_format`` and kept as ``target_format``."""
    notes = []
    if source_format == "akidb-json" and target_format != "akidb-json":
        notes.append(JSON_READ_NOTE)
    if target_format == "akidb-parquet" and source_format != "akidb-parquet":
        notes.append(PARQUET_WRITE_NOTE)
    return notes
