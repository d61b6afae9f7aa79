"""Retention: prune keeps exactly the N newest, --older-than, dry runs, orphan clean-up.

On both stores: a local directory and the real S3 server of `make services`.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from handlers.catalog import Catalog
from handlers.create import SnapshotCreator
from handlers.errors import InvalidRequestError
from handlers.job import InlineSource, SnapshotJob
from handlers.layout import metadata_key, snapshot_prefix
from handlers.metadata import SnapshotMetadata
from handlers.retention import find_orphans, plan_prune, prune, remove_orphans
from handlers.stores import ObjectStore
from handlers.verify import verify_snapshot
from tests.support import open_test_store, run_cli, unit_vectors


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_test_store(request.param, tmp_path)
    yield opened
    await opened.close()


def documents(rows: int = 4, dim: int = 8, seed: int = 0) -> list[dict[str, object]]:
    vectors = unit_vectors(rows, dim, seed)
    return [
        {"id": str(uuid.uuid4()), "vector": vectors[i].tolist(), "metadata": {"i": i}}
        for i in range(rows)
    ]


async def make_snapshots(
    store: ObjectStore, collection: str, count: int, *, age_days: list[float] | None = None
) -> list[SnapshotMetadata]:
    """``count`` small snapshots, oldest first; ``age_days`` backdates their created_at."""
    creator = SnapshotCreator(store, source_roots=[])
    made = []
    now = datetime.now(UTC)
    for i in range(count):
        job = SnapshotJob(collection, str(uuid.uuid4()), InlineSource(documents(seed=i)))
        meta = (await creator(job)).metadata
        if age_days is not None:
            stamp = now - timedelta(days=age_days[i])
            meta = replace(meta, created_at=stamp.isoformat(timespec="microseconds"))
            # Backdated in place: a commit never overwrites, so write the file directly.
            await store.put_bytes(metadata_key(collection, meta.snapshot_id), meta.to_json())
        made.append(meta)
    return made


async def keys_under(store: ObjectStore, prefix: str) -> set[str]:
    return {info.key async for info in store.list(prefix)}


async def test_prune_keeps_exactly_the_newest(store: ObjectStore) -> None:
    """--keep-last 2 of 5 leaves the two newest; the others lose metadata and every part."""
    made = await make_snapshots(store, "products", 5)
    other = await make_snapshots(store, "other", 1)
    result = await prune(Catalog(store), "products", keep_last=2)
    left = await Catalog(store).list("products")
    assert [m.snapshot_id for m in left] == [m.snapshot_id for m in made[-2:]]
    assert {m.snapshot_id for m in result.deleted} == {m.snapshot_id for m in made[:3]}
    for meta in made[:3]:
        assert not await keys_under(store, snapshot_prefix("products", meta.snapshot_id))
        assert await store.head(metadata_key("products", meta.snapshot_id)) is None
    assert [m.snapshot_id for m in await Catalog(store).list("other")] == [other[0].snapshot_id]


async def test_prune_dry_run_and_older_than(tmp_path: Path) -> None:
    """A dry run deletes nothing; --older-than never touches the keep-last newest."""
    store = open_test_store("local", tmp_path)
    made = await make_snapshots(store, "c", 4, age_days=[40, 20, 10, 1])
    catalog = Catalog(store)
    dry = await prune(catalog, "c", keep_last=1, older_than_days=15, dry_run=True)
    assert [m.snapshot_id for m in dry.plan.delete] == [made[1].snapshot_id, made[0].snapshot_id]
    assert len(await catalog.list("c")) == 4
    done = await prune(catalog, "c", keep_last=1, older_than_days=15)
    assert {m.snapshot_id for m in done.deleted} == {made[0].snapshot_id, made[1].snapshot_id}
    assert [m.snapshot_id for m in await catalog.list("c")] == [
        made[2].snapshot_id,
        made[3].snapshot_id,
    ]
    # keep-last protects even very old snapshots
    plan = plan_prune("c", made, keep_last=4, older_than_days=0)
    assert not plan.delete


async def test_policy_errors_delete_nothing(tmp_path: Path) -> None:
    """A missing or negative limit is an error and deletes nothing."""
    store = open_test_store("local", tmp_path)
    await make_snapshots(store, "c", 3)
    with pytest.raises(InvalidRequestError):
        await prune(Catalog(store), "c", keep_last=None)
    with pytest.raises(InvalidRequestError):
        await prune(Catalog(store), "c", keep_last=-1)
    assert len(await Catalog(store).list("c")) == 3


async def test_orphans_removed_live_snapshots_untouched(store: ObjectStore) -> None:
    """Parts without metadata, older than the grace period, go; live snapshots stay whole."""
    live = await make_snapshots(store, "c", 2)
    crashed = await make_snapshots(store, "c", 1)
    await store.delete(metadata_key("c", crashed[0].snapshot_id))  # a crash before the commit
    stray = "snapshots/d/0d0d0d0d-0000-4000-8000-000000000000/part-00000.parquet"
    await store.put_bytes(stray, b"half written")
    live_keys = [await keys_under(store, snapshot_prefix("c", m.snapshot_id)) for m in live]
    assert all(live_keys)

    # all written just now: within the default grace period of one hour
    young = await remove_orphans(store)
    assert not young.removed and len(young.too_young) == 2

    later = datetime.now(UTC) + timedelta(hours=2)
    dry = await remove_orphans(store, dry_run=True, now=later)
    assert {o.snapshot_id for o in dry.removed} == {crashed[0].snapshot_id, stray.split("/")[2]}
    assert await store.head(stray) is not None

    only_c = await remove_orphans(store, collection_id="c", now=later)
    assert [o.snapshot_id for o in only_c.removed] == [crashed[0].snapshot_id]
    assert await store.head(stray) is not None
    done = await remove_orphans(store, now=later)
    assert [o.prefix for o in done.removed] == ["snapshots/d/" + stray.split("/")[2] + "/"]
    assert await find_orphans(store, now=later) == ([], [])
    assert not await keys_under(store, snapshot_prefix("c", crashed[0].snapshot_id))
    after = [await keys_under(store, snapshot_prefix("c", m.snapshot_id)) for m in live]
    assert after == live_keys
    assert [m.snapshot_id for m in await Catalog(store).list("c")] == [m.snapshot_id for m in live]


async def test_parts_left_beside_a_committed_snapshot_are_orphans(store: ObjectStore) -> None:
    """A run killed after its upload left parts; the redo encoded other bytes (other keys) and
    committed: the old parts go, the committed snapshot's own parts stay."""
    (meta,) = await make_snapshots(store, "c", 1)
    prefix = snapshot_prefix("c", meta.snapshot_id)
    leftover = f"{prefix}part-00000-{'e' * 32}.parquet"
    await store.put_bytes(leftover, b"an interrupted run's part")
    later = datetime.now(UTC) + timedelta(hours=2)
    old, young = await find_orphans(store, now=later)
    assert [(o.keys, o.leftover) for o in old] == [((leftover,), True)] and young == []
    done = await remove_orphans(store, now=later)
    assert [o.keys for o in done.removed] == [(leftover,)]
    kept = {part.key for part in (*meta.parts, *meta.side_objects)}
    assert await keys_under(store, prefix) == kept
    assert (await verify_snapshot(store, meta)).ok


async def test_orphan_grace_uses_object_age(tmp_path: Path) -> None:
    """On a local store, an orphan whose files are two hours old is removed with the default."""
    store = open_test_store("local", tmp_path)
    crashed = await make_snapshots(store, "c", 1)
    await store.delete(metadata_key("c", crashed[0].snapshot_id))
    old = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    for path in (tmp_path / "store" / "snapshots" / "c").rglob("*.parquet"):
        os.utime(path, (old, old))
    assert len((await remove_orphans(store)).removed) == 1


def test_prune_cli(tmp_path: Path) -> None:
    """`snapshots prune C --keep-last 2` says what it did; --json is one object; bad flags fail."""

    async def setup() -> list[SnapshotMetadata]:
        store = open_test_store("local", tmp_path)
        return await make_snapshots(store, "c", 4)

    made = asyncio.run(setup())
    root = (tmp_path / "store").as_uri()
    code, out, _ = run_cli(
        ["snapshots", "prune", "c", "--keep-last", "2", "--dry-run", "--store", root]
    )
    assert code == 0 and sum(line.startswith("would delete ") for line in out.splitlines()) == 2
    code, out, _ = run_cli(
        ["snapshots", "prune", "c", "--keep-last", "2", "--store", root, "--json"]
    )
    body = json.loads(out)
    assert code == 0 and body["kept"] == [made[3].snapshot_id, made[2].snapshot_id]
    assert {m["snapshot_id"] for m in body["deleted"]} == {m.snapshot_id for m in made[:2]}
    code, out, _ = run_cli(
        ["snapshots", "prune", "--orphans", "--grace-hours", "0", "--store", root]
    )
    assert code == 0 and "orphans: removed 0" in out
    code, _, err = run_cli(["snapshots", "prune", "--keep-last", "2", "--store", root])
    assert code == 2 and "name the collection" in err
