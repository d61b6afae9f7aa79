"""Page-level reads of native parts: exactly the asked rows, from a fraction of the bytes;
the whole row group when a part has no row-aligned page index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.codecs.parquet import (
    ParquetPartWriter,
    file_schema,
    open_checked_parquet,
    rows_per_page,
    writer_options,
)
from handlers.codecs.parquet_pages import Footer, PageFile, read_rows
from handlers.codecs.thrift_compact import decode_struct, encode_struct
from handlers.model import DocumentBatch
from handlers.partial import CountingFile
from tests.support import create_snapshot, documents_table

DIM = 1024  # 256 rows a page: a few thousand rows make many pages
ROWS = 4096


def part_of(table: pa.Table, path: Path) -> Path:
    writer = ParquetPartWriter(path, DIM, "zstd", row_group_bytes=64 * 1024 * 1024)
    writer.write(DocumentBatch(table.combine_chunks().to_batches()[0]))
    writer.close()
    return path


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pa.Table]]:
    """A part whose metadata repeats (dictionary pages in use) and one whose metadata is
    unique per row (the dictionary overflows; later pages are plain)."""
    base = documents_table(ROWS, DIM, seed=7)
    repeated = base.set_column(
        base.schema.get_field_index("metadata"),
        "metadata",
        pa.array([f'{{"lang":"l{i % 5}"}}' for i in range(ROWS)]),
    )
    folder = tmp_path_factory.mktemp("pages")
    return {
        name: (part_of(table, folder / f"{name}.parquet"), table)
        for name, table in (("unique", base), ("repeated", repeated))
    }


def read_few(path: Path, rows: list[int], columns: list[str]) -> tuple[pa.Table | None, int]:
    with CountingFile(path, "rb") as handle:
        _, footer = open_checked_parquet(handle, DIM)
        before = handle.bytes_read
        table = read_rows(
            PageFile(handle, Footer.parse(footer)), 0, columns, np.array(rows, np.int64)
        )
        return table, handle.bytes_read - before


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["unique", "repeated"]),
    rows=st.sets(st.integers(0, ROWS - 1), min_size=1, max_size=6).map(sorted),
    columns=st.sets(
        st.sampled_from(["document_id", "external_id", "vector", "metadata", "inserted_at"]),
        min_size=1,
    ).map(sorted),
)
def test_a_few_rows_come_back_exactly_from_their_pages(
    parts: dict[str, tuple[Path, pa.Table]], kind: str, rows: list[int], columns: list[str]
) -> None:
    path, table = parts[kind]
    got, bytes_read = read_few(path, rows, columns)
    assert got is not None
    assert got.cast(table.select(columns).schema).equals(table.select(columns).take(rows))
    pages = len({row // rows_per_page(DIM) for row in rows})
    page_count = -(-ROWS // rows_per_page(DIM))
    assert bytes_read < path.stat().st_size * (pages + 1) / page_count, (bytes_read, pages)
    if "vector" not in columns:  # nearly all bytes: never read when not asked for
        assert bytes_read < path.stat().st_size / 20, bytes_read


def test_rows_on_most_pages_or_parts_without_a_page_index_give_none(
    parts: dict[str, tuple[Path, pa.Table]], tmp_path: Path
) -> None:
    path, table = parts["unique"]
    every_page = list(range(0, ROWS, rows_per_page(DIM)))
    assert read_few(path, every_page, ["vector"])[0] is None  # the group whole is cheaper
    plain = tmp_path / "plain.parquet"
    pq.write_table(
        table.cast(file_schema(DIM)), plain, **writer_options("zstd")
    )  # no page index, pages cut by size
    assert read_few(plain, [3], ["vector"])[0] is None


def test_the_footer_re_encodes_to_its_own_bytes(parts: dict[str, tuple[Path, pa.Table]]) -> None:
    path, _ = parts["repeated"]
    with open(path, "rb") as handle:
        _, footer = open_checked_parquet(handle, DIM)
    fields, end = decode_struct(footer)
    assert end == len(footer)
    assert encode_struct(fields) == footer


def test_the_page_bytes_setting_sets_the_pages_of_created_parts(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AKISNAP_PAGE_BYTES reaches the part writer: 64 KiB pages of 1024-dim vectors hold 16
    rows, so a 1,000-row part has 63 pages a column."""
    pq.write_table(documents_table(1000, DIM, seed=3), tmp_path / "export.parquet")
    clean_env.setenv("AKISNAP_PAGE_BYTES", str(64 * 1024))
    code, _, err = create_snapshot(tmp_path / "export.parquet", tmp_path / "store")
    assert code == 0, err
    (part,) = (tmp_path / "store").rglob("part-*.parquet")
    with open(part, "rb") as handle:
        _, footer = open_checked_parquet(handle, DIM)
        rows, size = read_few(part, [0], ["vector"])
    assert rows is not None and rows.num_rows == 1
    assert size < part.stat().st_size / 40  # one page of 63 (and the page index)
    assert Footer.parse(footer).row_group(0)[3][1] == 1000
    assert rows_per_page(DIM, 64 * 1024) == 16
