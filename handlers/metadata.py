"""The metadata file: a snapshot's commit marker and the truth its parts are checked against."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from handlers.errors import CorruptSnapshotError

METADATA_SCHEMA = "akisnap.snapshot-metadata/v1"


@dataclass(frozen=True)
class PartInfo:
    key: str
    size: int
    rows: int
    sha256: str


@dataclass(frozen=True)
class RowIndexInfo:
    """Where a snapshot's row index (its own rows' id → content hash) is: inline in the
    metadata (base64 of its Parquet bytes) while small, so a small snapshot costs no extra
    object, else a side object beside the parts."""

    rows: int
    sha256: str
    inline: str | None = None
    object: PartInfo | None = None


@dataclass(frozen=True)
class DeltaInfo:
    """What a delta snapshot holds besides its parts: the snapshot it applies to, the ids it
    deletes (a small object of its own) and the counts of the whole collection it gives."""

    base_snapshot_id: str
    deletes: PartInfo | None
    rows_added: int
    rows_changed: int
    rows_deleted: int
    collection_rows: int
    chain_deltas: int
    """Deltas from the full snapshot up to this one (1: built on a full snapshot)."""
    full_equivalent_bytes: int = 0
    """What a full snapshot of the collection would take, at its chain's full snapshot's bytes
    per row: the bytes this delta saved are that minus what it wrote."""


@dataclass(frozen=True)
class SnapshotMetadata:
    snapshot_id: str
    collection_id: str
    request_id: str
    format: str
    compression: str
    dimension: int
    vector_count: int
    created_at: str
    parts: tuple[PartInfo, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    json_equivalent_bytes: int = 0
    # Set only when the export's vectors were not float32 and were converted to it.
    source_dtype: str | None = None
    delta: DeltaInfo | None = None
    row_index: RowIndexInfo | None = None

    @property
    def total_bytes(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def kind(self) -> str:
        return "full" if self.delta is None else "delta"

    @property
    def collection_rows(self) -> int:
        """Rows of the collection as of this snapshot (a delta's parts hold only changes)."""
        return self.vector_count if self.delta is None else self.delta.collection_rows

    @property
    def written_bytes(self) -> int:
        """Parts and side objects: what making this snapshot stored."""
        return self.total_bytes + sum(side.size for side in self.side_objects)

    @property
    def bytes_saved(self) -> int:
        """A delta's saving over a full snapshot of the same collection (0 for a full one)."""
        if self.delta is None:
            return 0
        return max(0, self.delta.full_equivalent_bytes - self.written_bytes)

    @property
    def side_objects(self) -> tuple[PartInfo, ...]:
        """Checked objects beside the parts: a large row index and a delta's deleted ids."""
        found = [self.row_index.object] if self.row_index and self.row_index.object else []
        if self.delta is not None and self.delta.deletes is not None:
            found.append(self.delta.deletes)
        return tuple(found)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["parts"] = [asdict(part) for part in self.parts]
        body["labels"] = dict(self.labels)
        body["total_bytes"] = self.total_bytes
        if self.source_dtype is None:
            del body["source_dtype"]
        # Snapshots from before deltas keep their exact metadata: the new keys only when set.
        for optional in ("delta", "row_index"):
            if body[optional] is None:
                del body[optional]
        if "row_index" in body:  # inline or object, never both
            body["row_index"] = {k: v for k, v in body["row_index"].items() if v is not None}
        return {"schema": METADATA_SCHEMA, **body}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, key: str = "") -> SnapshotMetadata:
        try:
            body = json.loads(raw)
            if body.get("schema") != METADATA_SCHEMA:
                raise ValueError(f"unknown metadata schema {body.get('schema')!r}")
            parts = tuple(PartInfo(**part) for part in body["parts"])
            return cls(
                snapshot_id=str(body["snapshot_id"]),
                collection_id=str(body["collection_id"]),
                request_id=str(body["request_id"]),
                format=str(body["format"]),
                compression=str(body["compression"]),
                dimension=int(body["dimension"]),
                vector_count=int(body["vector_count"]),
                created_at=str(body["created_at"]),
                parts=parts,
                labels=dict(body.get("labels") or {}),
                json_equivalent_bytes=int(body.get("json_equivalent_bytes", 0)),
                source_dtype=_optional_str(body.get("source_dtype")),
                delta=_delta(body.get("delta")),
                row_index=_row_index(body.get("row_index")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptSnapshotError(f"metadata file {key or '?'} is unreadable: {exc}") from None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _row_index(body: Mapping[str, Any] | None) -> RowIndexInfo | None:
    if body is None:
        return None
    stored = body.get("object")
    return RowIndexInfo(
        rows=int(body["rows"]),
        sha256=str(body["sha256"]),
        inline=_optional_str(body.get("inline")),
        object=PartInfo(**stored) if stored else None,
    )


def _delta(body: Mapping[str, Any] | None) -> DeltaInfo | None:
    if body is None:
        return None
    deletes = body.get("deletes")
    return DeltaInfo(
        base_snapshot_id=str(body["base_snapshot_id"]),
        deletes=PartInfo(**deletes) if deletes else None,
        rows_added=int(body["rows_added"]),
        rows_changed=int(body["rows_changed"]),
        rows_deleted=int(body["rows_deleted"]),
        collection_rows=int(body["collection_rows"]),
        chain_deltas=int(body["chain_deltas"]),
        full_equivalent_bytes=int(body.get("full_equivalent_bytes", 0)),
    )
