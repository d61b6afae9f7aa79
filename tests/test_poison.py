"""The poison corpus (``tests/poison/``): every bad input is dead-lettered at once, with its reason.

Each file of the corpus is one request message; ``manifest.json`` says, per file, the stage,
error class and a fragment of the message its dead letter must carry. Requests that name an
export get it from :func:`make_exports`, which writes them into the test's exports root (a
Parquet decompression bomb, a footer that lies, an ``.npy`` header that claims 400 GB, a
symlink out of the root, ...). The daemon runs as ``akisnap run`` so its memory can be watched
with psutil: it must stay bounded while the corpus goes through, and a valid request sent after
the corpus must still succeed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon.dead_letters.letter import (
    H_ATTEMPTS,
    H_CLASS,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_RETRYABLE,
    H_STAGE,
)
from tests.daemon_support import (
    Message,
    env_for,
    inline_request,
    read_topic,
    send,
    settings_for,
    watcher,
)
from tests.support import REPO, TopicFactory, Topics, documents_table, headers_dict, write_export
from tools.services.private import AkisnapRun

CORPUS = Path(__file__).parent / "poison"
MANIFEST = CORPUS / "manifest.json"
POISON_BUCKET = "akisnap-poison-allowed"
MIB = 1024 * 1024
# The daemon's resident memory may grow this much over its warmed-up size while the corpus
# goes through. Reading the bomb would cost 256 MiB, parsing the oversized request ~150 MiB.
RSS_HEADROOM_BYTES = 128 * MIB


@dataclass(frozen=True)
class Case:
    file: str
    stage: str
    error_class: str
    message: str
    why: str
    export: str | None = None
    value_left_out: bool = False


def load_cases() -> list[Case]:
    body = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return [Case(**entry) for entry in body["cases"]]


def message_value(case: Case, exports_uri: str) -> bytes:
    """The message a corpus file stands for: gunzipped, placeholders filled in."""
    raw = (CORPUS / case.file).read_bytes()
    if case.file.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.replace(b"@EXPORTS@", exports_uri.encode()).replace(
        b"@BUCKET@", POISON_BUCKET.encode()
    )


# -- the exports the corpus names ---------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _footer_claiming_rows(path: Path, honest_rows: int, claimed_rows: int) -> None:
    """Rewrite FileMetaData.num_rows (thrift compact: field 3, i64 zigzag varint) in place."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<i", raw[-8:-4])
    footer = raw[-8 - length : -8]
    old = b"\x16" + _varint(honest_rows << 1)
    new = b"\x16" + _varint(claimed_rows << 1)
    at = footer.index(old)  # the first one: FileMetaData's, right after the schema
    patched = footer[:at] + new + footer[at + len(old) :]
    path.write_bytes(raw[: -8 - length] + patched + struct.pack("<i", len(patched)) + b"PAR1")


def _ids(rows: int, first: int = 1) -> pa.Array:
    return pa.array([uuid.UUID(int=first + i).bytes for i in range(rows)], pa.binary(16))


def make_exports(root: Path) -> None:
    """Write every export the manifest names (and the containment fixtures) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    _parquet_exports(root)
    _other_exports(root)
    # Containment: a symlink out of the root, a sibling sharing its name, a directory.
    (root / "innocent.parquet").symlink_to("/etc/passwd")
    write_export(documents_table(10, 4), root.parent / f"{root.name}-evil", "export.parquet")
    (root / "a-directory.parquet").mkdir()


def _parquet_exports(root: Path) -> None:
    def parquet(name: str, table: pa.Table, **options: Any) -> None:
        pq.write_table(table, root / name, **options)

    good = documents_table(2000, 16)
    parquet("wrong-schema.parquet", pa.table({"a": [1, 2], "b": ["x", "y"]}))
    parquet(
        "vector-strings.parquet",
        pa.table({"document_id": _ids(2), "vector": pa.array([["a", "b"], ["c", "d"]])}),
    )
    parquet("no-document-id.parquet", good.drop_columns(["document_id"]))
    with_nan = np.ones((4, 3), np.float32)
    with_nan[2, 1] = np.nan
    parquet(
        "nan.parquet",
        pa.table(
            {
                "document_id": _ids(4),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(with_nan.ravel()), 3),
            }
        ),
    )
    doubled = pa.concat_tables([good.slice(0, 10), good.slice(5, 10)])
    parquet("duplicate-ids.parquet", doubled, row_group_size=10)
    parquet(
        "metadata-struct.parquet",
        pa.table(
            {
                "document_id": _ids(2),
                "vector": pa.array([[0.1, 0.2], [0.3, 0.4]], pa.list_(pa.float32(), 2)),
                "metadata": pa.array([{"blob": b"\x00\x01"}, {"blob": b"\x02"}]),
            }
        ),
    )
    parquet("good.parquet", good, compression="zstd", write_page_checksum=True)
    whole = (root / "good.parquet").read_bytes()
    (root / "truncated.parquet").write_bytes(whole[: len(whole) * 6 // 10])
    vectors = pq.ParquetFile(root / "good.parquet").metadata.row_group(0).column(2)
    corrupt = bytearray(whole)
    for at in range(vectors.data_page_offset + 200, vectors.data_page_offset + 216):
        corrupt[at] ^= 0xFF
    (root / "corrupt.parquet").write_bytes(bytes(corrupt))
    (root / "not-parquet.parquet").write_text("this is not a parquet file\n" * 20)

    # A decompression bomb: 256 MiB of zero vectors in one data page, ~100 KiB on disk.
    rows, dim = 65536, 1024
    zeros = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(rows * dim, np.float32)), dim)
    parquet(
        "bomb.parquet",
        pa.table({"document_id": _ids(rows), "vector": zeros}),
        compression="zstd", use_dictionary=False, data_page_size=1 << 30, row_group_size=rows,
    )  # fmt: skip
    honest = 12345
    parquet("claims-rows.parquet", documents_table(honest, 4))
    _footer_claiming_rows(root / "claims-rows.parquet", honest, 2**40)
    absurd = pa.schema(
        [("document_id", pa.binary(16)), ("vector", pa.list_(pa.float32(), 2**31 - 1))]
    )
    parquet("absurd-dimension.parquet", absurd.empty_table())


def _other_exports(root: Path) -> None:
    with (root / "claims-shape.npy").open("wb") as handle:  # 400 GB promised, 64 bytes held
        header = {"descr": "<f4", "fortran_order": False, "shape": (100_000_000, 1024)}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\0" * 64)
    np.save(root / "absurd-dimension.npy", np.ones((2, 70_000), np.float32))
    np.save(root / "pickle.npy", np.array([[{"x": 1}]], dtype=object), allow_pickle=True)
    np.save(root / "three-d.npy", np.ones((2, 2, 2), np.float32))
    np.save(root / "vectors.npy", np.ones((4, 8), np.float32))

    mixed = pa.table(
        {
            "document_id": _ids(2),
            "vector": pa.array([[0.1, 0.2], [0.1, 0.2, 0.3]], pa.list_(pa.float32())),
        }
    )
    with pa.ipc.new_file(root / "mixed-dimensions.arrow", mixed.schema) as writer:
        writer.write_table(mixed)
    (root / "garbage.arrow").write_bytes(b"ARROW1\x00\x00" + os.urandom(512))

    with (root / "huge.json").open("wb") as handle:  # sparse: 600 MiB that take no disk
        handle.truncate(600 * MIB)
    (root / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "wrong-schema.json").write_text(json.dumps({"format": "csv", "rows": [1, 2]}))


# -- the daemon, watched ------------------------------------------------------------------------


class RssWatch:
    """Samples a process's resident memory every 20 ms; the peak since :meth:`reset`."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def now(self) -> int:
        return int(self._process.memory_info().rss)

    def reset(self) -> None:
        self.peak = self.now()

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssWatch:
        self.reset()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def poison_daemon(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> AsyncIterator[tuple[AkisnapRun, Topics]]:
    """`akisnap run` on fresh topics, ready, with the exports the corpus names."""
    topics = await make_topics()
    await asyncio.to_thread(make_exports, tmp_path / "exports")
    settings = settings_for(
        kafka_bootstrap, topics, tmp_path, source_allow=[f"s3://{POISON_BUCKET}/allowed"]
    )
    daemon = AkisnapRun(REPO, env_for(settings), tmp_path / "run.log")
    daemon.start()
    try:
        await asyncio.to_thread(daemon.wait_ready, 60)
        yield daemon, topics
    finally:
        code = await asyncio.to_thread(daemon.terminate, 20)
        assert code == 0, daemon.log_text()[-3000:]


# -- tests --------------------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    """The corpus has at least 30 inputs, every file is in the manifest (and the reverse), each
    with a stage, error class and message fragment."""
    cases = load_cases()
    assert len(cases) >= 30
    files = {path.name for path in CORPUS.iterdir()} - {MANIFEST.name}
    assert files == {case.file for case in cases}
    assert len({case.file for case in cases}) == len(cases)
    stages = {"decode", "validate", "source", "encode", "upload", "verify"}
    for case in cases:
        assert case.stage in stages and case.error_class and case.message and case.why, case


@pytest.mark.timeout(240)
async def test_every_poison_request_is_dead_lettered_with_its_reason(
    kafka_bootstrap: str, poison_daemon: tuple[AkisnapRun, Topics], tmp_path: Path
) -> None:
    """Each corpus input reaches the DLQ at once (not retried) with its stage, error class
    and reason; the daemon's memory stays bounded; a valid request after it still succeeds."""
    daemon, topics = poison_daemon
    cases = load_cases()
    exports_uri = (tmp_path / "exports").as_uri()
    warm = [inline_request("warm-up", rows=200, dim=32)]
    uri = write_export(documents_table(500, 32), tmp_path / "exports", "warm.parquet")
    warm_id = str(uuid.uuid4())
    warm_value = json.dumps(
        {"schema": "akisnap.snapshot-request/v1", "request_id": warm_id,
         "collection_id": "warm-up", "source": {"uri": uri, "format": "parquet"}}
    ).encode()  # fmt: skip
    async with watcher(kafka_bootstrap, topics) as outcomes:
        await send(kafka_bootstrap, topics.requests, [(k, v, []) for _, k, v in warm])
        await send(kafka_bootstrap, topics.requests, [(b"warm-up", warm_value, [])])
        found = await outcomes.wait_for([warm[0][0], warm_id], 60)
    assert {o.status for o in found.values()} == {"created"}, found

    messages: list[Message] = [
        (case.file.encode(), message_value(case, exports_uri), []) for case in cases
    ]
    good_id, good_key, good_value = inline_request("after-the-poison", rows=50, dim=8)
    started = time.monotonic()
    async with RssWatch(daemon.pid) as rss, watcher(kafka_bootstrap, topics) as outcomes:
        await asyncio.sleep(1.0)  # the warmed-up size, settled
        baseline = rss.peak
        sent = await send(kafka_bootstrap, topics.requests, messages)
        letters = await read_topic(kafka_bootstrap, topics.dlq, len(cases), 120)
        await send(kafka_bootstrap, topics.requests, [(good_key, good_value, [])])
        after = await outcomes.wait_for([good_id], 60)
        peak = rss.peak
    took = time.monotonic() - started
    print(
        f"\npoison corpus: {len(cases)} inputs dead-lettered in {took:.1f}s; daemon RSS "
        f"{baseline / MIB:.0f} MiB warmed up, {peak / MIB:.0f} MiB peak "
        f"(+{(peak - baseline) / MIB:.0f} MiB)"
    )
    assert len(letters) == len(cases), f"{len(letters)} dead letters for {len(cases)} inputs"
    by_origin = {
        (int(headers_dict(r.headers)[H_PARTITION]), int(headers_dict(r.headers)[H_OFFSET])): r
        for r in letters
    }
    wrong = []
    for case, meta, (key, value, _) in zip(cases, sent, messages, strict=True):
        letter = by_origin[(meta.partition, meta.offset)]
        headers = headers_dict(letter.headers)
        got = (headers[H_STAGE], headers[H_CLASS])
        if got != (case.stage, case.error_class) or case.message not in headers[H_MESSAGE]:
            wrong.append(f"{case.file}: {got} {headers[H_MESSAGE]!r}")
        expected = None if case.value_left_out else value
        assert (letter.key, letter.value) == (key, expected), case.file
        assert (headers[H_RETRYABLE], headers[H_ATTEMPTS]) == ("false", "1"), case.file
    assert not wrong, "dead letters with an unexpected reason:\n" + "\n".join(wrong)
    assert after[good_id].status == "created", after
    assert peak - baseline <= RSS_HEADROOM_BYTES, (
        f"RSS grew {(peak - baseline) / MIB:.0f} MiB over the corpus"
    )
    events = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
    bad_paths = {"request.unexpected_error", "partition.handler_failed", "request.retry"}
    assert not [e for e in events if e.get("event") in bad_paths], "poison took a retry path"
    assert daemon.process is not None and daemon.process.poll() is None
