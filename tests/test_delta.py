"""Delta snapshots on both stores: chains restore bit for bit against a collection kept here."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.events import build_request, build_result, parse_request, parse_result
from handlers import row_index
from handlers.compact import compact
from handlers.create import CreateOutcome, SnapshotCreator
from handlers.dependants import delete_snapshot
from handlers.errors import InvalidRequestError, SnapshotNotFoundError
from handlers.job import InlineSource, SnapshotJob, UriSource, check_job
from handlers.metadata import SnapshotMetadata
from handlers.model import snapshot_schema
from handlers.restore import restore_snapshot
from handlers.retention import prune
from handlers.stores import ObjectStore
from handlers.verify import verify_snapshot
from tests.support import MODEL_DIM as DIM
from tests.support import CollectionModel as Collection
from tests.support import Row, new_rows, open_test_store, run_cli, updated, write_export


@pytest.fixture(params=["local", "s3proxy", "minio"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_test_store(request.param, tmp_path)
    yield opened
    await opened.close()


@pytest.fixture
def creator(store: ObjectStore, tmp_path: Path) -> SnapshotCreator:
    exports = tmp_path / "exports"
    return SnapshotCreator(store, source_roots=[exports.as_uri()], part_size_bytes=4096)


class Snapshots:
    def __init__(self, creator: SnapshotCreator, tmp_path: Path) -> None:
        self.creator = creator
        self.tmp = tmp_path
        self.collection = f"c-{uuid.uuid4().hex[:8]}"

    async def export(self, table: pa.Table, base: str | None = None) -> SnapshotMetadata:
        uri = write_export(table, self.tmp / "exports", f"{uuid.uuid4().hex}.parquet")
        job = SnapshotJob(self.collection, str(uuid.uuid4()), UriSource(uri, "parquet"), base=base)
        return (await self.creator(job)).metadata

    async def change_set(
        self, base: str, rows: list[Row], deletes: list[bytes]
    ) -> SnapshotMetadata:
        uri = write_export(
            pa.Table.from_pylist(rows, snapshot_schema(DIM)),
            self.tmp / "exports",
            f"{uuid.uuid4().hex}.parquet",
        )
        job = SnapshotJob(
            self.collection,
            str(uuid.uuid4()),
            UriSource(uri, "parquet"),
            base=base,
            deletes=tuple(str(uuid.UUID(bytes=doc)) for doc in deletes),
        )
        return (await self.creator(job)).metadata

    async def restored(self, meta: SnapshotMetadata) -> pa.Table:
        out = self.tmp / f"{uuid.uuid4().hex}.parquet"
        await restore_snapshot(self.creator.catalog.store, meta, out)
        return pq.read_table(out)


@pytest.fixture
def snaps(creator: SnapshotCreator, tmp_path: Path) -> Snapshots:
    return Snapshots(creator, tmp_path)


async def test_full_then_deltas_restore_the_collection_bit_for_bit(snaps: Snapshots) -> None:
    model = Collection()
    model.write(new_rows(40, 1))
    full = await snaps.export(model.table())
    assert full.kind == "full" and full.row_index is not None

    first = list(model.rows.values())
    model.write([updated(first[3], 7), *new_rows(5, 2)])
    model.delete([first[10]["document_id"], first[11]["document_id"]])
    from_export = await snaps.export(model.table(), base=full.snapshot_id)
    assert from_export.delta is not None
    assert (from_export.delta.rows_added, from_export.delta.rows_changed) == (5, 1)
    assert from_export.delta.rows_deleted == 2
    assert from_export.vector_count == 6  # only the changed rows are stored
    expected_after_export = model.table()

    change = [updated(first[0], 8), *new_rows(3, 3)]
    model.write(change)
    model.delete([first[20]["document_id"]])
    from_changes = await snaps.change_set("latest", change, [first[20]["document_id"]])
    assert from_changes.delta is not None
    assert from_changes.delta.base_snapshot_id == from_export.snapshot_id
    assert (from_export.delta.chain_deltas, from_changes.delta.chain_deltas) == (1, 2)
    assert (from_changes.delta.rows_added, from_changes.delta.rows_changed) == (3, 1)

    assert (await snaps.restored(from_changes)).equals(model.table())
    assert (await snaps.restored(from_export)).equals(expected_after_export)
    store = snaps.creator.catalog.store
    for meta in (full, from_export, from_changes):
        report = await verify_snapshot(store, meta, full=True)
        assert report.ok, report.problems


def test_row_hash_tells_every_column_apart() -> None:
    """Null vs empty text, where one text ends and the next begins, one microsecond, one
    vector bit: each gives another hash; a slice hashes like the rows it holds."""
    base = {"document_id": bytes(16), "vector": [1.0, 2.0], "inserted_at": 0}
    variants = [
        {"external_id": None, "metadata": "ab"},
        {"external_id": "", "metadata": "ab"},
        {"external_id": "a", "metadata": "b"},
        {"external_id": "ab", "metadata": ""},
        {"external_id": "ab", "metadata": None},
        {"external_id": "ab", "metadata": None, "inserted_at": 1},
        {"external_id": "ab", "metadata": None, "vector": [1.0, -2.0]},
    ]
    table = pa.Table.from_pylist([{**base, **change} for change in variants], snapshot_schema(2))
    hashes = row_index.row_hashes(table)
    assert len(set(hashes)) == len(variants) and {len(h) for h in hashes} == {16}
    assert row_index.row_hashes(table.slice(2, 3)) == hashes[2:5]


async def test_index_is_inline_when_small_else_an_object(
    snaps: Snapshots, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain whose members keep their index either way folds them into one: the third
    snapshot sees exactly what changed since the second."""
    model = Collection()
    model.write(new_rows(30, 3))
    small = await snaps.export(model.table())
    assert small.row_index is not None and small.row_index.inline and small.side_objects == ()
    monkeypatch.setattr(row_index, "INLINE_INDEX_BYTES", 0)
    model.write([updated(next(iter(model.rows.values())), 9), *new_rows(3, 4)])
    middle = await snaps.export(model.table(), base="latest")
    assert middle.row_index is not None and middle.row_index.object in middle.side_objects
    assert middle.row_index.rows == 4  # its own rows only, not the collection's
    model.write(new_rows(2, 5))
    top = await snaps.export(model.table(), base="latest")
    assert top.delta is not None
    assert (top.delta.rows_added, top.delta.rows_changed, top.delta.rows_deleted) == (2, 0, 0)
    assert (await snaps.restored(top)).equals(model.table())
    assert (await verify_snapshot(snaps.creator.catalog.store, top, full=True)).ok


async def test_unchanged_export_is_an_empty_delta(snaps: Snapshots) -> None:
    model = Collection()
    model.write(new_rows(10, 4))
    full = await snaps.export(model.table())
    same = await snaps.export(model.table(), base=full.snapshot_id)
    assert same.parts == () and same.delta is not None and same.delta.rows_deleted == 0
    assert (await snaps.restored(same)).equals(model.table())


async def test_corrupt_delta_part_fails_verify_of_every_snapshot_above(snaps: Snapshots) -> None:
    model = Collection()
    model.write(new_rows(10, 5))
    full = await snaps.export(model.table())
    chain = [full]
    for step in range(3):
        chain.append(await snaps.change_set("latest", new_rows(2, 10 + step), []))
    store = snaps.creator.catalog.store
    broken = chain[1].parts[0]
    await store.put_bytes(broken.key, b"not the part" * 10)
    for meta in chain[:1]:
        assert (await verify_snapshot(store, meta)).ok
    for meta in chain[1:]:
        report = await verify_snapshot(store, meta)
        assert not report.ok
        assert any(broken.key in problem for problem in report.problems), report.problems


async def test_change_set_cannot_upsert_and_delete_one_document(snaps: Snapshots) -> None:
    model = Collection()
    model.write(new_rows(4, 6))
    await snaps.export(model.table())
    row = next(iter(model.rows.values()))
    with pytest.raises(InvalidRequestError, match="both upserted and deleted"):
        await snaps.change_set("latest", [updated(row, 1)], [row["document_id"]])


async def test_base_must_exist_and_be_native(snaps: Snapshots) -> None:
    with pytest.raises(SnapshotNotFoundError):
        await snaps.change_set("latest", new_rows(1, 1), [])
    with pytest.raises(InvalidRequestError, match="native parquet"):
        check_job(SnapshotJob("c", "r", InlineSource([]), format="akidb-json", base="latest"))
    with pytest.raises(InvalidRequestError, match="need a base"):
        check_job(SnapshotJob("c", "r", InlineSource([]), deletes=()))


EDITS = st.lists(
    st.tuples(st.sampled_from(["insert", "update", "delete"]), st.integers(0, 1000)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(st.tuples(EDITS, st.booleans()), min_size=1, max_size=3))
async def test_random_edit_sequences_restore_exactly(
    snaps: Snapshots, steps: list[tuple[list[tuple[str, int]], bool]]
) -> None:
    snaps.collection = f"h-{uuid.uuid4().hex[:8]}"
    model = Collection()
    model.write(new_rows(6, 1))
    await snaps.export(model.table())
    for edits, as_change_set in steps:
        written: list[Row] = []
        deleted: list[bytes] = []
        for action, pick in edits:
            live = [doc for doc in model.rows if doc not in deleted]
            if action == "insert" or not live:
                rows = new_rows(1, pick)
                model.write(rows)
                written.extend(rows)
            elif action == "update":
                row = updated(model.rows[live[pick % len(live)]], pick)
                model.write([row])
                written = [r for r in written if r["document_id"] != row["document_id"]] + [row]
            elif live:
                doc = live[pick % len(live)]
                if any(r["document_id"] == doc for r in written):
                    continue  # a change set may not upsert and delete one document
                model.delete([doc])
                deleted.append(doc)
        if as_change_set:
            meta = await snaps.change_set("latest", written, deleted)
        else:
            meta = await snaps.export(model.table(), base="latest")
        # An update that rewrites a row as it was moves it in the model only: compare by id.
        got = (await snaps.restored(meta)).sort_by("document_id")
        assert got.equals(model.table().sort_by("document_id"))


def test_cli_creates_a_change_set_delta_and_restores_it(tmp_path: Path) -> None:
    model = Collection()
    model.write(new_rows(20, 1))
    store = (tmp_path / "store").as_uri()
    exports = tmp_path / "exports"
    full_uri = write_export(model.table(), exports, "full.parquet")
    first = list(model.rows.values())
    change = [updated(first[2], 5), *new_rows(2, 2)]
    model.write(change)
    model.delete([first[7]["document_id"]])
    change_uri = write_export(
        pa.Table.from_pylist(change, snapshot_schema(DIM)), exports, "c.parquet"
    )
    deletes = tmp_path / "deletes.txt"
    deletes.write_text(f"{uuid.UUID(bytes=first[7]['document_id'])}\n")
    common = ["--store", store, "--json"]
    code, _, err = run_cli(
        ["snapshots", "create", "--collection", "c", "--from", full_uri, *common]
    )
    assert code == 0, err
    code, out, err = run_cli(
        ["snapshots", "create", "--collection", "c", "--from", change_uri, "--base", "latest",
         "--deletes", str(deletes), *common]
    )  # fmt: skip
    assert code == 0, err
    delta = json.loads(out)
    assert delta["delta"]["rows_deleted"] == 1 and delta["vector_count"] == 3
    out_file = tmp_path / "restored.parquet"
    code, _, err = run_cli(
        ["snapshots", "restore", delta["snapshot_id"], "--out", str(out_file), *common]
    )
    assert code == 0, err
    assert pq.read_table(out_file).equals(model.table())
    code, _, err = run_cli(["snapshots", "verify", delta["snapshot_id"], "--full", *common])
    assert code == 0, err


async def test_request_and_result_events_carry_the_delta(snaps: Snapshots) -> None:
    _, value = build_request(
        "c",
        UriSource("file:///x.parquet", "parquet"),
        request_id="r",
        base="latest",
        deletes=[str(uuid.UUID(int=1))],
    )
    job = parse_request(value, max_bytes=len(value))
    assert job.base == "latest" and job.deletes == (str(uuid.UUID(int=1)),)
    model = Collection()
    model.write(new_rows(5, 1))
    full = await snaps.export(model.table())
    gone = next(iter(model.rows))
    meta = await snaps.change_set(full.snapshot_id, new_rows(1, 2), [gone])
    outcome = CreateOutcome(meta, duplicate=False)
    result = parse_result(build_result(job, outcome, store_root="file:///s", durations={}))
    assert (result.kind, result.base) == ("delta", full.snapshot_id)
    assert (result.rows_added, result.rows_changed, result.rows_deleted) == (1, 0, 1)
    side = sum(info.size for info in meta.side_objects)
    assert result.bytes_written == meta.total_bytes + side > 0


async def test_prune_keeps_the_bases_of_kept_deltas(snaps: Snapshots) -> None:
    model = Collection()
    model.write(new_rows(6, 1))
    old = await snaps.export(model.table())  # a full snapshot no delta needs
    full = await snaps.export(model.table())
    deltas = [await snaps.change_set("latest", new_rows(1, 20 + i), []) for i in range(3)]
    catalog = snaps.creator.catalog
    result = await prune(catalog, snaps.collection, keep_last=1)
    assert [meta.snapshot_id for meta in result.deleted] == [old.snapshot_id]
    assert {base for base, _ in result.plan.held} == {
        full.snapshot_id,
        deltas[0].snapshot_id,
        deltas[1].snapshot_id,
    }
    kept = {meta.snapshot_id for meta in await catalog.list(snaps.collection)}
    assert kept == {full.snapshot_id, *(meta.snapshot_id for meta in deltas)}
    for meta in deltas:
        assert (await verify_snapshot(catalog.store, meta, full=True)).ok


async def test_delete_of_a_base_refuses_unless_cascade(snaps: Snapshots) -> None:
    model = Collection()
    model.write(new_rows(4, 1))
    full = await snaps.export(model.table())
    first = await snaps.change_set("latest", new_rows(1, 2), [])
    second = await snaps.change_set("latest", new_rows(1, 3), [])
    catalog = snaps.creator.catalog
    with pytest.raises(InvalidRequestError, match=r"base of 2 delta\(s\)"):
        await delete_snapshot(catalog, full.snapshot_id)
    assert len(await catalog.list(snaps.collection)) == 3
    removed = await delete_snapshot(catalog, full.snapshot_id, cascade=True)
    assert [meta.snapshot_id for meta in removed] == [
        second.snapshot_id,
        first.snapshot_id,
        full.snapshot_id,
    ]
    assert await catalog.list(snaps.collection) == []


async def test_compact_equals_the_chain(snaps: Snapshots) -> None:
    model = Collection()
    model.write(new_rows(12, 1))
    await snaps.export(model.table())
    first = list(model.rows.values())
    for step in range(3):
        change = [updated(first[step], 30 + step), *new_rows(2, 40 + step)]
        model.write(change)
        model.delete([first[6 + step]["document_id"]])
        top = await snaps.change_set("latest", change, [first[6 + step]["document_id"]])
    made = await compact(snaps.creator, top)
    assert made.kind == "full" and made.snapshot_id != top.snapshot_id
    assert made.labels["compacted_from"] == top.snapshot_id
    assert (await snaps.restored(made)).equals(await snaps.restored(top))
    assert (await snaps.restored(made)).equals(model.table())
    assert (await compact(snaps.creator, top)).snapshot_id == made.snapshot_id
    # The compacted snapshot is a base like any full one.
    extra = new_rows(1, 50)
    model.write(extra)
    after = await snaps.change_set(made.snapshot_id, extra, [])
    assert (await snaps.restored(after)).equals(model.table())
