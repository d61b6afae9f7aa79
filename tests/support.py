"""Plain helpers shared by the tests: data, exports, stores. No fixtures here."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon import cli, sample_data
from handlers.akidb.sidecar import parse_rfc3339_nanos
from handlers.model import DocumentBatch, snapshot_schema
from handlers.stores import ObjectStore, S3Options, open_store

REPO = Path(__file__).resolve().parents[1]
SERVICES_ENV = REPO / ".services.env"


def service_env(name: str) -> str:
    """A `make services` variable, from the environment or `.services.env`; fails if absent
    (these tests never skip)."""
    value = os.environ.get(name)
    if not value and SERVICES_ENV.is_file():
        for line in SERVICES_ENV.read_text(encoding="utf-8").splitlines():
            key, sep, found = line.strip().partition("=")
            if sep and key.removeprefix("export ").strip() == name:
                value = found.strip().strip("'\"")
    if not value:
        pytest.fail(f"{name} is not set: run `make services` (it writes {SERVICES_ENV.name})")
    return value


@dataclass(frozen=True)
class Topics:
    """One test's own request, result and dead-letter topics (and consumer group)."""

    requests: str
    results: str
    dlq: str
    group_id: str

    @classmethod
    def fresh(cls, prefix: str = "test") -> Topics:
        tag = uuid.uuid4().hex[:10]
        return cls(
            requests=f"{prefix}.{tag}.requests",
            results=f"{prefix}.{tag}.results",
            dlq=f"{prefix}.{tag}.requests.dlq",
            group_id=f"{prefix}-{tag}",
        )

    @property
    def names(self) -> tuple[str, str, str]:
        return (self.requests, self.results, self.dlq)


TopicFactory = Callable[[], Awaitable[Topics]]


@dataclass
class FakeRecord:
    """A consumed request record (what aiokafka's ConsumerRecord gives Fate)."""

    value: bytes
    key: bytes = b"c"
    topic: str = "requests"
    partition: int = 0
    offset: int = 7
    timestamp: int = 1
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def unit_vectors(rows: int, dim: int, seed: int = 0) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, dim)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def documents_table(rows: int, dim: int, seed: int = 0, *, metadata: bool = True) -> pa.Table:
    """A snapshot-shaped table of random unit vectors with ids and metadata."""
    batch = DocumentBatch.from_arrays(
        unit_vectors(rows, dim, seed),
        document_ids=[uuid.UUID(int=seed * 10_000_000 + i + 1).bytes for i in range(rows)],
        external_ids=[f"doc-{i}" for i in range(rows)],
        metadata=[{"i": i, "lang": "en"} for i in range(rows)] if metadata else None,
    )
    return pa.Table.from_batches([batch.record_batch])


MODEL_DIM = 8
"""Dimension of the rows of :class:`CollectionModel` tests (deltas, partial restore)."""
Row = dict[str, Any]


class CollectionModel:
    """A collection as a test alone computes it, for comparing with what a delta chain
    restores: rows keyed by ``key`` (``document_id`` rows, or ``id`` inline documents); a
    write moves a row to the end (chain order)."""

    def __init__(self, key: str = "document_id") -> None:
        self.key = key
        self.rows: dict[Any, Row] = {}

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self.rows.pop(row[self.key], None)
            self.rows[row[self.key]] = row

    def delete(self, ids: Sequence[Any]) -> None:
        for doc in ids:
            del self.rows[doc]

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(list(self.rows.values()), snapshot_schema(MODEL_DIM))


def new_rows(count: int, seed: int) -> list[Row]:
    """``count`` rows of :data:`MODEL_DIM` with ids unique across seeds and calls."""
    rows: list[Row] = documents_table(count, MODEL_DIM, seed).to_pylist()
    for row in rows:
        row["document_id"] = uuid.uuid4().bytes
    return rows


def updated(row: Row, seed: int) -> Row:
    vector = unit_vectors(1, MODEL_DIM, seed)[0].tolist()
    return {**row, "vector": vector, "metadata": f'{{"v":{seed}}}'}


def write_export(table: pa.Table, directory: Path, name: str = "export.parquet") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    pq.write_table(table, path)
    return path.as_uri()


def real_embeddings(rows: int) -> pa.Table:
    """The first rows of the real embeddings in tests/data (repeated with fresh ids past 2,000)."""
    table = sample_data.real_embeddings(rows)
    assert table is not None, f"test data missing: {sample_data.SAMPLE_EMBEDDINGS}"
    return table


# The real S3 servers the store and snapshot tests run against (in the test ids): s3proxy, and
# MinIO as a second, differently spelled one. Both take the same keys and bucket.
S3_SERVERS = ("s3proxy", "minio")
ENDPOINT_VARIABLES = {"s3proxy": "AKISNAP_S3_ENDPOINT", "minio": "AKISNAP_MINIO_ENDPOINT"}


@dataclass(frozen=True)
class S3Service:
    """The coordinates of one real S3 server of `make services`."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str

    @classmethod
    def of(cls, server: str = "s3proxy") -> S3Service:
        return cls(
            endpoint=service_env(ENDPOINT_VARIABLES[server]),
            access_key=service_env("AKISNAP_S3_ACCESS_KEY"),
            secret_key=service_env("AKISNAP_S3_SECRET_KEY"),
            bucket=service_env("AKISNAP_S3_BUCKET"),
            region=os.environ.get("AKISNAP_S3_REGION") or "us-east-1",
        )


def s3_options(server: str = "s3proxy", **changes: Any) -> S3Options:
    """Options for an S3 server of :data:`S3_SERVERS`; small multipart sizes unless changed,
    so a few MiB take the multipart path."""
    s3 = S3Service.of(server)
    values: dict[str, Any] = {
        "endpoint_url": s3.endpoint,
        "region": s3.region,
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "multipart_threshold_bytes": 8 * 1024 * 1024,
        "multipart_part_bytes": 5 * 1024 * 1024,
    }
    return S3Options(**{**values, **changes})


def s3_root(prefix: str) -> str:
    return f"s3://{service_env('AKISNAP_S3_BUCKET')}/{prefix}"


def open_test_store(kind: str, tmp_path: Path) -> ObjectStore:
    """``local``, or an S3 server of :data:`S3_SERVERS` (``s3`` means s3proxy)."""
    if kind == "local":
        return open_store((tmp_path / "store").as_uri())
    server = "s3proxy" if kind == "s3" else kind
    return open_store(s3_root(f"tests/{uuid.uuid4().hex}"), s3_options(server))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`akisnap ARGV` in-process through the real entry point: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def create_snapshot(
    source: Path | str, store: Path | str, *extra: str, collection: str = "c"
) -> tuple[int, str, str]:
    """`akisnap snapshots create` of ``source`` into ``store`` in-process (run_cli)."""
    argv = ["snapshots", "create", "--collection", collection, "--from", str(source)]
    return run_cli([*argv, "--store", str(store), *extra])


def akisnap_process(
    *args: str,
    store: Path | None = None,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    **popen: Any,
) -> subprocess.CompletedProcess[str]:
    """`akisnap ARGS` as a separate process (for pipes, signals, terminals, other users), with
    no AKISNAP_* variable of the caller's but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
    if store is not None:
        clean["AKISNAP_STORE"] = store.as_uri()
    clean.update(env or {})
    options: dict[str, Any] = {"capture_output": True, "cwd": REPO, "timeout": 120, **popen}
    if "stdout" in popen or "stderr" in popen:
        options.pop("capture_output")
    return subprocess.run(
        [*prefix, sys.executable, "-m", "daemon.cli", *args],
        text=True,
        env=clean,
        check=False,
        **options,
    )


def akisnap_on_terminal(
    *args: str, typed: str = "", env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str]:
    """`akisnap ARGS` with stdin, stdout and stderr on a pseudo-terminal, ``typed`` already
    waiting in its input (the terminal buffers it until the prompt reads it); (exit code,
    everything it showed)."""
    leader, follower = pty.openpty()
    # A real terminal has a size; a pty starts at 0×0, where progress bars draw nothing.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
    clean.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", *args],
        stdin=follower, stdout=follower, stderr=follower, cwd=REPO, env=clean,
    )  # fmt: skip
    os.close(follower)
    if typed:
        os.write(leader, typed.encode())
    shown = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its side of the terminal
            break
        if not chunk:
            break
        shown += chunk
    code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    os.close(leader)
    return code, shown.decode("utf-8", "replace").replace("\r\n", "\n")


# -- AkiDB 2.0 fixtures (tests/data/akidb-2.0/README.md) ------------------------------------

AKIDB_DATA = REPO / "tests" / "data" / "akidb-2.0"
AKIDB_COLLECTION = "019a802e-d0d3-7c82-975c-21cd020c8e8b"
AKIDB_PARQUET_ID = "55af4fa8-94f0-406d-b6f4-967aca5dc4c9"
AKIDB_JSON_ID = "e6c2a77d-0a7c-43d6-8675-e8f4e6d493c3"
AKIDB_JSON_ROWS = 100
# Row 0's first ten values, as float32 bit patterns: -0.0, the smallest subnormal,
# f32::MIN_POSITIVE, f32::MAX, -f32::MAX, 0.1, 1/3, 2^24, 1e-38 (subnormal), -smallest.
AKIDB_ROW0_BITS = [
    0x80000000,
    0x00000001,
    0x00800000,
    0x7F7FFFFF,
    0xFF7FFFFF,
    0x3DCCCCCD,
    0x3EAAAAAB,
    0x4B800000,
    0x006CE3EE,
    0x80000001,
]


async def put_akidb_store(store: ObjectStore, *names: str) -> list[str]:
    """Upload the fixture store roots (``parquet-store``, ``json-store``) into ``store``."""
    keys = []
    for name in names or ("parquet-store", "json-store"):
        base = AKIDB_DATA / name
        for path in sorted(base.rglob("*")):
            if path.is_file():
                key = path.relative_to(base).as_posix()
                await store.put_bytes(key, path.read_bytes())
                keys.append(key)
    return keys


def akidb_expected(
    rows: int | None = None,
) -> tuple[np.ndarray[Any, Any], list[bytes], list[dict[str, Any]]]:
    """(vectors, document ids, per-row facts) that AkiDB 2.0 wrote the fixtures from."""
    vectors = np.load(AKIDB_DATA / "expected" / "vectors.npy")
    raw_ids = (AKIDB_DATA / "expected" / "document_ids.bin").read_bytes()
    ids = [raw_ids[i : i + 16] for i in range(0, len(raw_ids), 16)]
    lines = (AKIDB_DATA / "expected" / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    facts = [json.loads(line) for line in lines]
    end = rows if rows is not None else len(facts)
    return vectors[:end], ids[:end], facts[:end]


def headers_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """A record's headers as text (the last value of a name wins)."""
    return {key: raw.decode("utf-8", "replace") for key, raw in headers or ()}


def restored_columns(path: Path) -> dict[str, Any]:
    """Vectors, ids, external ids, metadata values and inserted_at (µs) of a restored file."""
    if path.suffix == ".npy":
        return {"vectors": np.load(path)}
    if path.suffix == ".jsonl":
        docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return {
            "vectors": np.array([doc["vector"] for doc in docs], dtype=np.float32),
            "ids": [uuid.UUID(doc["id"]).bytes for doc in docs],
            "external": [doc["external_id"] for doc in docs],
            "metadata": [doc["metadata"] for doc in docs],
            "micros": [_micros(doc["inserted_at"]) for doc in docs],
        }
    if path.suffix == ".arrow":
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    else:
        table = pq.read_table(path)
    return {
        "vectors": np.asarray(table.column("vector").combine_chunks().flatten()).reshape(
            table.num_rows, -1
        ),
        "ids": table.column("document_id").to_pylist(),
        "external": table.column("external_id").to_pylist(),
        "metadata": [
            None if m is None else json.loads(m) for m in table.column("metadata").to_pylist()
        ],
        "micros": table.column("inserted_at").cast(pa.int64()).to_pylist(),
    }


def _micros(text: str) -> int:
    return parse_rfc3339_nanos(text) // 1000
