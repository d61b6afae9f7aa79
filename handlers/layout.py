"""Where a snapshot's objects live under the store root (DESIGN: 'Object layout')."""

from __future__ import annotations

SNAPSHOTS_PREFIX = "snapshots/"
METADATA_SUFFIX = ".metadata.json"


def snapshot_prefix(collection_id: str, snapshot_id: str) -> str:
    return f"{SNAPSHOTS_PREFIX}{collection_id}/{snapshot_id}/"


PART_DIGEST_CHARS = 32


def part_key(
    collection_id: str, snapshot_id: str, index: int, extension: str, sha256: str = ""
) -> str:
    """``part-00000-<sha256 prefix>.parquet``: a part's key names its content, so a redo with
    other settings can never overwrite a part of a committed snapshot with other bytes."""
    digest = f"-{sha256[:PART_DIGEST_CHARS]}" if sha256 else ""
    return f"{snapshot_prefix(collection_id, snapshot_id)}part-{index:05d}{digest}.{extension}"


def metadata_key(collection_id: str, snapshot_id: str) -> str:
    return f"{SNAPSHOTS_PREFIX}{collection_id}/{snapshot_id}{METADATA_SUFFIX}"


def collection_prefix(collection_id: str | None) -> str:
    return SNAPSHOTS_PREFIX if collection_id is None else f"{SNAPSHOTS_PREFIX}{collection_id}/"


def is_metadata_key(key: str) -> bool:
    """A commit marker sits directly under a collection: snapshots/C/ID.metadata.json."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "snapshots" and parts[2].endswith(METADATA_SUFFIX)


def snapshot_id_of_metadata_key(key: str) -> str:
    return key.rsplit("/", 1)[1][: -len(METADATA_SUFFIX)]
