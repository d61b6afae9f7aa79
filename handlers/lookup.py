"""Find a snapshot from what a person types: a whole id, or a unique prefix of one."""

from __future__ import annotations

from handlers.catalog import Catalog
from handlers.errors import AmbiguousSnapshotIdError, SnapshotNotFoundError
from handlers.metadata import SnapshotMetadata

MAX_CANDIDATES_SHOWN = 10


async def resolve_snapshot(
    catalog: Catalog, text: str, collection_id: str | None = None
) -> SnapshotMetadata:
    """The one snapshot whose id is ``text`` or starts with it (in ``collection_id`` when
    given). A whole id found in two collections is as ambiguous as a short prefix."""
    wanted = text.strip().lower()
    snapshots = await catalog.list(collection_id) if wanted else []
    matches = [meta for meta in snapshots if meta.snapshot_id == wanted] or [
        meta for meta in snapshots if meta.snapshot_id.startswith(wanted)
    ]
    if len(matches) == 1:
        return matches[0]
    where = f" in collection {collection_id}" if collection_id else ""
    if not matches:
        raise SnapshotNotFoundError(f"no snapshot with id {text!r}{where}")
    shown = ", ".join(
        f"{meta.collection_id}/{meta.snapshot_id}" for meta in matches[:MAX_CANDIDATES_SHOWN]
    )
    more = f" and {len(matches) - MAX_CANDIDATES_SHOWN} more" if len(matches) > 10 else ""
    raise AmbiguousSnapshotIdError(
        f"{text!r} matches {len(matches)} snapshots{where}: {shown}{more}; "
        "give more of the id, or --collection"
    )
