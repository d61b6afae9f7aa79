"""Which snapshots a delta needs: a snapshot another one is built on is never removed alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from handlers.catalog import Catalog
from handlers.errors import InvalidRequestError
from handlers.metadata import SnapshotMetadata


def needed_by(
    kept: Iterable[SnapshotMetadata], snapshots: Sequence[SnapshotMetadata]
) -> dict[str, str]:
    """Snapshot id → the kept snapshot that needs it, for every base below a kept delta."""
    by_id = {meta.snapshot_id: meta for meta in snapshots}
    needed: dict[str, str] = {}
    for meta in kept:
        current = meta
        while current.delta is not None and current.delta.base_snapshot_id not in needed:
            base_id = current.delta.base_snapshot_id
            needed[base_id] = meta.snapshot_id
            if base_id not in by_id:
                break
            current = by_id[base_id]
    return needed


def dependants(snapshot_id: str, snapshots: Sequence[SnapshotMetadata]) -> list[SnapshotMetadata]:
    """Every delta built on ``snapshot_id``, directly or through other deltas (bases first)."""
    found: list[SnapshotMetadata] = []
    wanted = {snapshot_id}
    grew = True
    while grew:
        grew = False
        for meta in snapshots:
            if meta.delta and meta.delta.base_snapshot_id in wanted and meta not in found:
                found.append(meta)
                wanted.add(meta.snapshot_id)
                grew = True
    return found


async def delete_snapshot(
    catalog: Catalog, snapshot_id: str, *, cascade: bool = False
) -> list[SnapshotMetadata]:
    """Delete a snapshot; one that deltas build on only with ``cascade`` (deltas go first,
    newest first, so a crash never leaves a delta whose base is gone)."""
    metadata = await catalog.get(snapshot_id)
    above = dependants(snapshot_id, await catalog.list(metadata.collection_id))
    if above and not cascade:
        names = ", ".join(meta.snapshot_id for meta in above)
        raise InvalidRequestError(
            f"snapshot {snapshot_id} is the base of {len(above)} delta(s) ({names}): "
            "delete with --cascade to remove them too"
        )
    removed = [*above[::-1], metadata]
    for meta in removed:
        await catalog.remove(meta)
    return removed
