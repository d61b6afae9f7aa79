"""AkiDB 2.0's sidecar and key layout, and akisnap's integrity record kept beside them.

AkiDB 2.0 records no checksum. When akisnap writes an AkiDB snapshot it adds one object of its
own, ``…{snapshot_id}.akisnap-sha256`` (a name AkiDB never lists nor looks up), written before
the sidecar, which stays the commit marker. Snapshots AkiDB wrote itself have no such record.
"""

from __future__ import annotations

import calendar
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.errors import CorruptSnapshotError
from handlers.job import SnapshotJob
from handlers.layout import SNAPSHOTS_PREFIX
from handlers.metadata import PartInfo, SnapshotMetadata

SIDECAR_FIELDS = (
    "snapshot_id",
    "collection_id",
    "vector_count",
    "dimension",
    "created_at",
    "size_bytes",
    "compression",
    "format",
)
FORMAT_NAMES = {"Parquet": "akidb-parquet", "Json": "akidb-json"}
COMPRESSION_NAMES = ("None", "Snappy", "Zstd", "Lz4")
PARQUET_SIDECAR_SUFFIX = ".metadata.json"
JSON_SIDECAR_SUFFIX = ".meta.json"
INTEGRITY_SUFFIX = ".akisnap-sha256"
INTEGRITY_SCHEMA = "akisnap.akidb-integrity/v1"
RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$"
)


@dataclass(frozen=True)
class Sidecar:
    """AkiDB's sidecar: exactly eight fields, spelled as AkiDB spells them."""

    snapshot_id: str
    collection_id: str
    vector_count: int
    dimension: int
    created_at: str
    size_bytes: int
    compression: str
    format: str

    @property
    def snapshot_format(self) -> str:
        return FORMAT_NAMES[self.format]

    def to_json(self) -> bytes:
        body = {name: getattr(self, name) for name in SIDECAR_FIELDS}
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class IntegrityRecord:
    """What akisnap wrote for an AkiDB-format snapshot: its data file's size and SHA-256."""

    key: str
    size: int
    sha256: str
    rows: int
    request_id: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {
            "schema": INTEGRITY_SCHEMA,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "rows": self.rows,
            "request_id": self.request_id,
            "labels": dict(self.labels),
        }
        return json.dumps(body, indent=2, sort_keys=True).encode()


def is_akidb_format(fmt: str) -> bool:
    return fmt in FORMAT_NAMES.values()


def sidecar_key(fmt: str, collection_id: str, snapshot_id: str) -> str:
    if fmt == "akidb-json":
        return f"{SNAPSHOTS_PREFIX}{snapshot_id}{JSON_SIDECAR_SUFFIX}"
    return f"{SNAPSHOTS_PREFIX}{collection_id}/{snapshot_id}{PARQUET_SIDECAR_SUFFIX}"


def data_key(fmt: str, collection_id: str, snapshot_id: str) -> str:
    if fmt == "akidb-json":
        return f"{SNAPSHOTS_PREFIX}{snapshot_id}.json"
    return f"{SNAPSHOTS_PREFIX}{collection_id}/{snapshot_id}.parquet"


def integrity_key(fmt: str, collection_id: str, snapshot_id: str) -> str:
    return sidecar_key(fmt, collection_id, snapshot_id).rsplit(".", 2)[0] + INTEGRITY_SUFFIX


def parse_sidecar(raw: bytes, key: str) -> Sidecar:
    """The sidecar at ``key``, checked field by field and against where it sits."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptSnapshotError(f"{key} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CorruptSnapshotError(f"{key} is not a JSON object")
    _check_field_names(body, key)
    sidecar = Sidecar(
        snapshot_id=_uuid_text(body, "snapshot_id", key),
        collection_id=_uuid_text(body, "collection_id", key),
        vector_count=_count(body, "vector_count", key),
        dimension=_count(body, "dimension", key),
        created_at=_timestamp_text(body, "created_at", key),
        size_bytes=_count(body, "size_bytes", key),
        compression=_choice(body, "compression", COMPRESSION_NAMES, key),
        format=_choice(body, "format", tuple(FORMAT_NAMES), key),
    )
    _check_location(sidecar, key)
    return sidecar


def parse_integrity(raw: bytes, key: str) -> IntegrityRecord:
    try:
        body = json.loads(raw)
        if body.get("schema") != INTEGRITY_SCHEMA:
            raise ValueError(f"unknown schema {body.get('schema')!r}")
        return IntegrityRecord(
            key=str(body["key"]),
            size=int(body["size"]),
            sha256=str(body["sha256"]),
            rows=int(body["rows"]),
            request_id=str(body["request_id"]),
            labels={str(k): str(v) for k, v in dict(body.get("labels") or {}).items()},
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptSnapshotError(f"integrity record {key} is unreadable: {exc}") from None


def to_metadata(sidecar: Sidecar, integrity: IntegrityRecord | None) -> SnapshotMetadata:
    """The catalog's view of an AkiDB snapshot: one part, the data file; a SHA-256 only
    when akisnap wrote it (an empty ``sha256`` means none was ever recorded)."""
    fmt = sidecar.snapshot_format
    part = PartInfo(
        key=data_key(fmt, sidecar.collection_id, sidecar.snapshot_id),
        size=sidecar.size_bytes,
        rows=sidecar.vector_count,
        sha256=integrity.sha256 if integrity is not None else "",
    )
    return SnapshotMetadata(
        snapshot_id=sidecar.snapshot_id,
        collection_id=sidecar.collection_id,
        request_id=integrity.request_id if integrity is not None else "",
        format=fmt,
        compression=sidecar.compression.lower(),
        dimension=sidecar.dimension,
        vector_count=sidecar.vector_count,
        created_at=sidecar.created_at,
        parts=(part,),
        labels=dict(integrity.labels) if integrity is not None else {},
    )


def akidb_records(
    job: SnapshotJob, part: PartInfo, dimension: int
) -> tuple[Sidecar, IntegrityRecord]:
    """The sidecar AkiDB 2.0 restores from, and akisnap's SHA-256 record of the data file."""
    fmt = job.format
    sidecar = Sidecar(
        snapshot_id=job.snapshot_id,
        collection_id=job.collection_id,
        vector_count=part.rows,
        dimension=dimension,
        created_at=format_rfc3339_nanos(time.time_ns()),
        size_bytes=part.size,
        compression="None" if fmt == "akidb-json" else "Snappy",
        format="Json" if fmt == "akidb-json" else "Parquet",
    )
    record = IntegrityRecord(
        key=part.key,
        size=part.size,
        sha256=part.sha256,
        rows=part.rows,
        request_id=job.request_id,
        labels=dict(job.labels),
    )
    return sidecar, record


def parse_rfc3339_nanos(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to nine fractional digits."""
    match = RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    seconds = calendar.timegm(
        (int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0)
    )
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def format_rfc3339_nanos(nanos: int) -> str:
    """AkiDB's spelling: UTC, nine fractional digits, ``Z``."""
    seconds, fraction = divmod(nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _check_field_names(body: dict[str, Any], key: str) -> None:
    missing = [name for name in SIDECAR_FIELDS if name not in body]
    unknown = sorted(set(body) - set(SIDECAR_FIELDS))
    if missing or unknown:
        detail = "; ".join(
            text
            for text in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unknown field(s) {', '.join(unknown)}" if unknown else "",
            )
            if text
        )
        raise CorruptSnapshotError(f"{key} is not an AkiDB 2.0 sidecar: {detail}")


def _uuid_text(body: dict[str, Any], name: str, key: str) -> str:
    value = body[name]
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else _bad(name, value, key)
    except ValueError:
        return _bad(name, value, key)


def _count(body: dict[str, Any], name: str, key: str) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _bad(name, value, key)
    return int(value)


def _timestamp_text(body: dict[str, Any], name: str, key: str) -> str:
    value = body[name]
    if not isinstance(value, str) or RFC3339.fullmatch(value) is None:
        _bad(name, value, key)
    return str(value)


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], key: str) -> str:
    value = body[name]
    if value not in allowed:
        raise CorruptSnapshotError(f"{key}: {name} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _bad(name: str, value: object, key: str) -> str:
    raise CorruptSnapshotError(f"{key}: {name} {value!r} is not valid")


def _check_location(sidecar: Sidecar, key: str) -> None:
    fmt = sidecar.snapshot_format
    expected = sidecar_key(fmt, sidecar.collection_id, sidecar.snapshot_id)
    if key != expected:
        raise CorruptSnapshotError(
            f"{key} is an AkiDB {sidecar.format} sidecar of snapshot {sidecar.snapshot_id} "
            f"that belongs at {expected}"
        )
    if fmt == "akidb-json" and sidecar.compression != "None":
        raise CorruptSnapshotError(
            f"{key}: {sidecar.compression}-compressed JSON snapshots are not supported "
            "(AkiDB 2.0 itself neither writes nor reads them)"
        )
