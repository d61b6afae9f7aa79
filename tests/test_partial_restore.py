"""Partial restore (--ids, --columns, --where, --limit) on both stores, full snapshots and
delta chains: exactly the rows a selection computed here, independently, says."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from handlers.codecs.parquet_pages import Footer
from handlers.codecs.thrift_compact import decode_struct, encode_struct
from handlers.create import SnapshotCreator
from handlers.errors import (
    CorruptSnapshotError,
    IdsNotFoundError,
    InvalidRequestError,
    SelectionError,
    StoreUnreachableError,
)
from handlers.job import SnapshotJob, UriSource
from handlers.metadata import SnapshotMetadata
from handlers.model import snapshot_schema
from handlers.restore import restore_snapshot
from handlers.selection import Selection, load_ids, parse_columns, parse_where
from handlers.stores import ObjectStore
from handlers.stores.local import LocalStore
from handlers.stores.ranged import MERGE_GAP_BYTES, RangedFile, merge_spans
from tests.support import (
    MODEL_DIM as DIM,
)
from tests.support import (
    S3_SERVERS,
    Row,
    documents_table,
    new_rows,
    open_test_store,
    run_cli,
    updated,
    write_export,
)
from tests.support import (
    CollectionModel as Collection,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
Pick = Callable[[Row], bool]


def stamped(rows: list[Row], first_second: int) -> list[Row]:
    """Rows one second apart, so that --where on inserted_at has something to cut."""
    return [
        {**row, "inserted_at": START + timedelta(seconds=first_second + i), "external_id": f"x{i}"}
        for i, row in enumerate(rows)
    ]


def expected(rows: list[Row], keep: Pick, columns: tuple[str, ...], limit: int | None) -> Any:
    chosen = [{name: row[name] for name in columns} for row in rows if keep(row)]
    return chosen[:limit] if limit is not None else chosen


@pytest.fixture(params=["local", *S3_SERVERS])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_test_store(request.param, tmp_path)
    yield opened
    await opened.close()


class Snapshots:
    """Snapshots of one collection made from rows given here, and their partial restores."""

    def __init__(
        self, store: ObjectStore, tmp_path: Path, part_size: int = 2048, dim: int = DIM
    ) -> None:
        self.store = store
        self.dim = dim
        self.tmp = tmp_path
        self.creator = SnapshotCreator(
            store, source_roots=[(tmp_path / "exports").as_uri()], part_size_bytes=part_size
        )
        self.collection = f"p-{uuid.uuid4().hex[:8]}"

    async def make(
        self, rows: list[Row], base: str | None = None, deletes: tuple[str, ...] | None = None
    ) -> SnapshotMetadata:
        table = pa.Table.from_pylist(rows, snapshot_schema(self.dim))
        uri = write_export(table, self.tmp / "exports", f"{uuid.uuid4().hex}.parquet")
        job = SnapshotJob(
            self.collection,
            str(uuid.uuid4()),
            UriSource(uri, "parquet"),
            base=base,
            deletes=deletes,
        )
        return (await self.creator(job)).metadata

    async def restore(self, meta: SnapshotMetadata, selection: Selection) -> tuple[Any, Any]:
        out = self.tmp / f"{uuid.uuid4().hex}.parquet"
        result = await restore_snapshot(self.store, meta, out, selection=selection)
        return pq.read_table(out).to_pylist(), result


@pytest.fixture
def snaps(store: ObjectStore, tmp_path: Path) -> Snapshots:
    return Snapshots(store, tmp_path)


def ids_of(rows: list[Row]) -> pa.Array:
    return pa.array([row["document_id"] for row in rows], pa.binary(16))


async def test_full_snapshot_selections_are_exact(snaps: Snapshots) -> None:
    rows = stamped(new_rows(120, 1), 0)
    meta = await snaps.make(rows)
    assert len(meta.parts) > 3  # several parts, so that skipping some is possible
    wanted = [rows[i] for i in (3, 50, 51, 119)]
    wanted_ids = {row["document_id"] for row in wanted}
    cut = START + timedelta(seconds=40)
    cases: list[tuple[Selection, Pick]] = [
        (Selection(ids=ids_of(wanted)), lambda r: r["document_id"] in wanted_ids),
        (
            Selection(where=parse_where(["inserted_at>=2026-01-01T00:00:40Z"])),
            lambda r: r["inserted_at"] >= cut,
        ),
        (
            Selection(where=parse_where(["inserted_at < 2026-01-01T00:00:40Z", "external_id!=x7"])),
            lambda r: r["inserted_at"] < cut and r["external_id"] != "x7",
        ),
        (
            Selection(where=parse_where(["external_id=x9"])),
            lambda r: r["external_id"] == "x9",
        ),
        (
            Selection(ids=ids_of(wanted), where=parse_where(["inserted_at>2026-01-01T00:00:03Z"])),
            lambda r: (
                r["document_id"] in wanted_ids and r["inserted_at"] > START + timedelta(seconds=3)
            ),
        ),
    ]
    for selection, keep in cases:
        got, result = await snaps.restore(meta, selection)
        assert got == expected(rows, keep, selection.columns, None), selection.where
        assert result.rows == len(got) and result.ids_missing == 0
    for columns in ("document_id,vector", "metadata", "inserted_at,external_id"):
        for limit in (None, 0, 7):
            selection = Selection(columns=parse_columns(columns), limit=limit)
            got, _ = await snaps.restore(meta, selection)
            assert got == expected(rows, lambda r: True, selection.columns, limit)


async def test_delta_chain_selection_applies_the_chain(snaps: Snapshots) -> None:
    model = Collection()
    model.write(stamped(new_rows(40, 2), 0))
    await snaps.make(list(model.rows.values()))
    first = list(model.rows.values())
    change = stamped([updated(first[5], 3), *new_rows(4, 3)], 100)
    model.write(change)
    model.delete([first[9]["document_id"]])
    middle = await snaps.make(change, "latest", (str(uuid.UUID(bytes=first[9]["document_id"])),))
    at_middle = list(model.rows.values())
    change = stamped([updated(first[6], 4)], 200)
    model.write(change)
    top = await snaps.make(change, "latest", ())
    rows = list(model.rows.values())

    asked = [first[i]["document_id"] for i in (0, 5, 6, 9, 30)]  # 9 was deleted
    got, result = await snaps.restore(top, Selection(ids=pa.array(asked, pa.binary(16))))
    assert got == expected(rows, lambda r: r["document_id"] in asked, Selection().columns, None)
    assert [row["document_id"] for row in got] == [asked[0], asked[4], asked[1], asked[2]]
    assert result.ids_missing == 1
    assert result.ids_missing_examples == (str(uuid.UUID(bytes=first[9]["document_id"])),)

    # A row an update moved out of the window must not come back from below.
    where = parse_where(["inserted_at<2026-01-01T00:01:00Z"])
    got, _ = await snaps.restore(top, Selection(where=where, limit=30))
    early = START + timedelta(seconds=60)
    assert got == expected(rows, lambda r: r["inserted_at"] < early, Selection().columns, 30)
    columns = parse_columns("document_id,metadata")
    got, _ = await snaps.restore(middle, Selection(columns=columns))
    assert got == expected(at_middle, lambda r: True, columns, None)


@pytest.mark.parametrize("fmt", ["akidb-parquet", "akidb-json"])
async def test_akidb_formats_select_from_the_whole_restore(snaps: Snapshots, fmt: str) -> None:
    rows = stamped(new_rows(50, 8), 0)
    table = pa.Table.from_pylist(rows, snapshot_schema(DIM))
    uri = write_export(table, snaps.tmp / "exports", f"{fmt}.parquet")
    job = SnapshotJob(str(uuid.uuid4()), str(uuid.uuid4()), UriSource(uri, "parquet"), format=fmt)
    meta = (await snaps.creator(job)).metadata
    whole, _ = await snaps.restore(meta, Selection())  # AkiDB's precision, as a restore gives
    asked = {rows[i]["document_id"] for i in (1, 17, 33)}
    selection = Selection(
        ids=pa.array(sorted(asked), pa.binary(16)),
        columns=parse_columns("document_id,vector,external_id"),
        where=parse_where(["external_id!=x17"]),
    )
    got, result = await snaps.restore(meta, selection)
    keep: Pick = lambda r: r["document_id"] in asked and r["external_id"] != "x17"  # noqa: E731
    assert got == expected(whole, keep, selection.columns, None)
    assert len(got) == 2 and result.bytes_read == meta.total_bytes  # fetched whole, checked


async def test_local_id_lookup_reads_only_what_can_hold_the_ids(tmp_path: Path) -> None:
    store = open_test_store("local", tmp_path)
    snaps = Snapshots(store, tmp_path, part_size=64 * 1024)  # footers small beside the data
    rows = new_rows(4000, 5)
    rows.sort(key=lambda row: row["document_id"])  # ids clustered per part: statistics help
    rows = stamped(rows, 0)  # and inserted_at rising with them
    meta = await snaps.make(rows)
    got, result = await snaps.restore(meta, Selection(ids=ids_of(rows[10:12])))
    assert got == rows[10:12]
    assert result.bytes_read is not None
    assert result.bytes_read < meta.total_bytes / 3, (result.bytes_read, meta.total_bytes)
    late = Selection(where=parse_where(["inserted_at>=2026-01-01T01:06:00Z"]))  # second 3960
    got, result = await snaps.restore(meta, late)
    assert got == rows[3960:]
    assert result.bytes_read is not None and result.bytes_read < meta.total_bytes / 3
    _, whole = await snaps.restore(meta, Selection())
    assert whole.bytes_read is not None and whole.bytes_read > 0.95 * meta.total_bytes


def by_id(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: row["document_id"])


async def one_paged_part(snaps: Snapshots, seed: int) -> tuple[SnapshotMetadata, list[Row]]:
    """A snapshot of one part of 4096 rows of 1024 dimensions with random ids: one row group
    of 16 pages of 256 rows."""
    rows = documents_table(4096, 1024, seed=seed).to_pylist()
    for row in rows:
        row["document_id"] = uuid.uuid4().bytes
    meta = await snaps.make(rows)
    assert len(meta.parts) == 1 and meta.parts[0].rows == 4096
    return meta, rows


async def test_id_lookup_reads_only_the_pages_of_the_ids(
    store: ObjectStore, tmp_path: Path
) -> None:
    """Ids spread over one large part: the pages that hold them are read, not its row group,
    in place or by ranged GETs."""
    snaps = Snapshots(store, tmp_path, 64 * 1024 * 1024, dim=1024)
    meta, rows = await one_paged_part(snaps, seed=11)
    asked = [rows[5], rows[2000], rows[4000]]
    got, result = await snaps.restore(meta, Selection(ids=ids_of(asked)))
    assert by_id(got) == by_id(asked)
    assert result.bytes_read is not None
    assert result.bytes_read < meta.total_bytes / 4, (result.bytes_read, meta.total_bytes)


class RangesThatFail(LocalStore):
    """A local store read as a remote one, by ranges, whose store goes away after ``reads``."""

    def __init__(self, root: Path, reads: int) -> None:
        super().__init__(root)
        self.reads = reads

    def local_path(self, key: str) -> Path | None:
        return None

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        if self.reads == 0:
            raise StoreUnreachableError("connection refused")
        self.reads -= 1
        return await super().get_range(key, start, length)


async def test_a_ranged_read_on_the_event_loop_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.put_bytes("object", b"0123456789")
    ranged = RangedFile(store, "object", 10, asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="would never end"):
        ranged.read(4)
    assert await asyncio.to_thread(ranged.read, 4) == b"0123"


def test_close_ranges_are_fetched_as_one() -> None:
    gap = MERGE_GAP_BYTES
    assert merge_spans([(100, 10), (0, 10)]) == [(0, 110)]  # sorted, 90 bytes apart: one
    assert merge_spans([(0, 10), (10 + gap + 1, 5)]) == [(0, 10), (10 + gap + 1, 5)]
    assert merge_spans([(0, 10), (10 + gap, 5)]) == [(0, 15 + gap)]
    assert merge_spans([(0, 100), (20, 10)]) == [(0, 100)]  # inside: nothing added
    assert merge_spans([]) == []


async def test_a_store_that_fails_during_ranged_reads_is_an_environment_fault(
    tmp_path: Path,
) -> None:
    """A ranged read that fails is the store's fault, not a corrupt part, at any read."""
    snaps = Snapshots(LocalStore(tmp_path / "store"), tmp_path, 64 * 1024 * 1024, dim=1024)
    meta, rows = await one_paged_part(snaps, seed=13)
    asked = Selection(ids=ids_of([rows[7], rows[3000]]))
    ranged = RangesThatFail(tmp_path / "store", reads=10**6)
    got, _ = await Snapshots(ranged, tmp_path, dim=1024).restore(meta, asked)
    assert by_id(got) == by_id([rows[7], rows[3000]])
    needed = 10**6 - ranged.reads
    # Bound by round trips, not bytes: the footer's tail, the footer, the ids and the page
    # index fetched at once, then the pages of both ids at once (close ones merged).
    assert 4 <= needed <= 8, needed
    for reads in range(needed):
        failing = Snapshots(RangesThatFail(tmp_path / "store", reads), tmp_path, dim=1024)
        with pytest.raises(StoreUnreachableError):
            await failing.restore(meta, asked)


def swap_first_two_pages(path: Path) -> None:
    """Rewrite every column's offset index so that pages 0 and 1 trade places (same length)."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[-8:-4], "little")
    footer = Footer.parse(bytes(data[-8 - length : -8]))
    for chunk in footer.row_group(0)[1][1][1]:
        at, size = chunk[4][1], chunk[5][1]
        index, _ = decode_struct(data, at)
        first, second = index[1][1][1][:2]
        for field in (1, 2):  # offset and size; the first rows stay
            first[field], second[field] = second[field], first[field]
        encoded = encode_struct(index)
        assert len(encoded) == size
        data[at : at + size] = encoded
    path.write_bytes(bytes(data))


async def test_a_page_index_that_misplaces_rows_is_a_corrupt_part(tmp_path: Path) -> None:
    """Page reads check the ids they fetch: wrong pages are refused, never restored."""
    snaps = Snapshots(open_test_store("local", tmp_path), tmp_path, 64 * 1024 * 1024, dim=1024)
    meta, _ = await one_paged_part(snaps, seed=12)
    path = snaps.store.local_path(meta.parts[0].key)
    assert path is not None
    first = pq.read_table(path, columns=["document_id"]).column(0)[0].as_py()
    swap_first_two_pages(path)
    with pytest.raises(CorruptSnapshotError, match="page index places rows wrongly"):
        await snaps.restore(meta, Selection(ids=pa.array([first], pa.binary(16))))


async def test_strict_refuses_missing_ids_and_writes_nothing(snaps: Snapshots) -> None:
    rows = new_rows(10, 6)
    meta = await snaps.make(rows)
    out = snaps.tmp / "strict.parquet"
    asked = pa.array([rows[0]["document_id"], uuid.uuid4().bytes], pa.binary(16))
    with pytest.raises(IdsNotFoundError, match="1 of the 2 ids"):
        await restore_snapshot(snaps.store, meta, out, selection=Selection(ids=asked, strict=True))
    assert not out.exists()


async def test_damaged_parts_are_refused_as_partial_restore_documents(
    snaps: Snapshots, store: ObjectStore
) -> None:
    rows = new_rows(30, 9)
    meta = await snaps.make(rows)
    part = meta.parts[0]
    data = await store.get_bytes(part.key)
    selection = Selection(ids=ids_of(rows[:1]), columns=parse_columns("document_id"))
    if store.local_path(part.key) is None:  # S3: the SHA-256 the server recorded is checked
        flipped = data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]
        await store.put_bytes(part.key, flipped)
        with pytest.raises(CorruptSnapshotError, match="SHA-256"):
            await snaps.restore(meta, selection)
        return
    await store.put_bytes(part.key, data + b"x")  # local: size and footer are checked
    with pytest.raises(CorruptSnapshotError, match="bytes, metadata says"):
        await snaps.restore(meta, selection)
    await store.put_bytes(part.key, data[:-12] + b"\0" * 8 + data[-4:])
    with pytest.raises(CorruptSnapshotError, match=r"unreadable|footer"):
        await snaps.restore(meta, selection)


def test_ids_files_in_every_kind_give_the_same_ids(tmp_path: Path) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    raw = [doc.bytes for doc in ids]
    text = tmp_path / "ids.txt"
    text.write_text("\n".join(str(doc) for doc in ids) + "\n\n" + str(ids[0]) + "\n")
    as_binary = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"document_id": pa.array(raw, pa.binary(16))}), as_binary)
    as_strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"document_id": [str(doc) for doc in ids]}), as_strings)
    as_bytes = tmp_path / "bytes.npy"
    np.save(as_bytes, np.array(raw, dtype="S16"))
    as_text = tmp_path / "text.npy"
    np.save(as_text, np.array([str(doc) for doc in ids]))
    for path in (text, as_binary, as_strings, as_bytes, as_text):
        assert sorted(load_ids(path).to_pylist()) == sorted(raw), path.name
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{ids[0]}\nnot-an-id\n")
    with pytest.raises(InvalidRequestError, match="entry 2"):
        load_ids(bad)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: parse_where(["vector=1"]), "COLUMN OP VALUE"),
        (lambda: parse_where(["external_id~abc"]), "COLUMN OP VALUE"),
        (lambda: parse_where(["inserted_at>=2026-01-01T00:00:00"]), "with its offset"),
        (lambda: parse_where(["inserted_at>=yesterday"]), "with its offset"),
        (lambda: parse_columns("document_id,embedding"), "unknown: embedding"),
        (lambda: parse_columns(","), "comma list"),
    ],
)
def test_bad_selections_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(SelectionError, match=message):
        make()


async def _local_snapshot(rows: list[Row], tmp_path: Path) -> SnapshotMetadata:
    store = open_test_store("local", tmp_path)
    try:
        return await Snapshots(store, tmp_path).make(rows)
    finally:
        await store.close()


def test_cli_partial_restore_outputs_and_errors(tmp_path: Path) -> None:
    rows = stamped(new_rows(30, 7), 0)
    meta = asyncio.run(_local_snapshot(rows, tmp_path))
    ids_file = tmp_path / "ids.txt"
    wanted = [rows[2], rows[20]]
    ids_file.write_text("".join(f"{uuid.UUID(bytes=r['document_id'])}\n" for r in wanted))
    common = [meta.snapshot_id, "--store", str(tmp_path / "store"), "--json"]

    def restore(out: str, *flags: str) -> tuple[int, str, str]:
        return run_cli(["snapshots", "restore", *common, "--out", str(tmp_path / out), *flags])

    code, out, err = restore("a.npy", "--ids", str(ids_file))
    assert code == 0, err
    assert json.loads(out)["partial"]["ids_missing"] == 0
    vectors = np.load(tmp_path / "a.npy")
    assert vectors.tolist() == [r["vector"] for r in wanted]
    code, _, err = restore("none.npy", "--where", "external_id=nothing")
    assert code == 0, err
    assert np.load(tmp_path / "none.npy").shape == (0, DIM)
    code, _, err = restore("b.jsonl", "--columns", "document_id,inserted_at", "--limit", "2")
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert lines == [
        {
            "id": str(uuid.UUID(bytes=r["document_id"])),
            "inserted_at": f"2026-01-01T00:00:0{i}.000000Z",
        }
        for i, r in enumerate(rows[:2])
    ]
    code, _, err = restore("c.arrow", "--where", "external_id=x3", "--columns", "external_id")
    assert code == 0, err
    with pa.OSFile(str(tmp_path / "c.arrow")) as source:
        assert pa.ipc.open_file(source).read_all().to_pylist() == [{"external_id": "x3"}]

    refused = [
        (("d.npy", "--columns", "metadata"), 2, "cannot restore to .npy"),
        (("d.parquet", "--where", "inserted_at=>2026"), 2, "with its offset"),
        (("d.parquet", "--where", "size>3"), 2, "COLUMN OP VALUE"),
        (("d.parquet", "--limit", "-1"), 2, "--limit -1"),
        (("d.parquet", "--columns", "ids"), 2, "unknown: ids"),
        (("d.parquet", "--strict"), 2, "--strict goes with --ids"),
        (("d.parquet", "--ids", str(tmp_path / "none.txt")), 3, "none.txt"),
        (("d.parquet", "--ids", str(tmp_path / "c.arrow")), 5, "--ids c.arrow"),
    ]
    for flags, exit_code, message in refused:
        code, _, err = restore(*flags)
        assert code == exit_code, (flags, err)
        assert message in json.loads(err)["error"]["message"], err
    ids_file.write_text(f"{uuid.uuid4()}\n")
    code, _, err = restore("d.parquet", "--ids", str(ids_file), "--strict")
    assert code == 3, err
    assert not (tmp_path / "d.parquet").exists()
    plain = ["snapshots", "restore", meta.snapshot_id, "--store", str(tmp_path / "store")]
    code, out, err = run_cli([*plain, "--out", str(tmp_path / "e.parquet"), "--ids", str(ids_file)])
    assert code == 0, err
    assert "1 of the ids asked for is not in the snapshot, e.g. " in out
