"""The daemon end to end: `akisnap run` as a process, the real broker and S3 server on loopback.

Unique topics (made with the admin client: auto-create is off), a unique group, a unique
store prefix ``s3://$AKISNAP_S3_BUCKET/bench-<tag>``, a temp exports root; all removed after.

- small requests: 1k × 384 exports by URI (inline 1k × 384 JSON is ~8 MB, over Kafka's 1 MiB
  default message size), published at once; completed results per second, first publish to
  last result;
- large snapshots: 100k × 768 exports (307 MB raw each); raw vector MB per second, first
  publish to last result, against bare aiobotocore multipart PUTs of the same byte count to
  the same server, in the same run (before and after the daemon's turn).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import statistics
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from bench.exports import write_random_export
from bench.procs import GIB, MIB, REPO_ROOT, Measured, akisnap_exe, check_disk
from daemon.events import build_request
from daemon.kafka import KafkaClients
from daemon.outcomes import Outcome, OutcomeWatcher
from handlers.codecs.parquet import DEFAULT_ROW_GROUP_BYTES, writer_options
from handlers.executor import usable_cpus
from handlers.hashing import sha256_file
from handlers.job import UriSource
from handlers.model import bytes_per_row_estimate
from handlers.stores import S3Options
from handlers.stores.s3 import client_config, shared_session

MB = 1_000_000
SERVICES_ENV = REPO_ROOT / ".services.env"
SERVICE_KEYS = (
    "AKISNAP_KAFKA_BOOTSTRAP",
    "AKISNAP_S3_ENDPOINT",
    "AKISNAP_S3_ACCESS_KEY",
    "AKISNAP_S3_SECRET_KEY",
    "AKISNAP_S3_BUCKET",
)
PARTITIONS = 8  # = the daemon's default max in-flight requests
READY_WITHIN = 90.0
STOP_WITHIN = 60.0
BARE_PART_BYTES = 16 * MIB  # akisnap's multipart part size
BARE_CONCURRENCY = 8  # parts in flight across all objects


@dataclass(frozen=True)
class DaemonPlan:
    small_requests: int = 300
    small_rows: int = 1_000
    small_dim: int = 384
    small_exports: int = 8  # distinct files, used round-robin
    warmup_requests: int = 16
    large_requests: int = 5
    large_rows: int = 100_000
    large_dim: int = 768

    @property
    def large_raw_bytes(self) -> int:
        return self.large_rows * self.large_dim * 4

    @classmethod
    def quick(cls) -> DaemonPlan:
        return cls(small_requests=60, warmup_requests=8, large_requests=2, large_rows=20_000)


@dataclass
class Services:
    bootstrap: str
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str

    def s3_options(self) -> S3Options:
        return S3Options(
            endpoint_url=self.endpoint,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )


@dataclass
class Batch:
    """One timed batch of requests: wall seconds, outcomes, per-stage medians."""

    requests: int
    seconds: float
    outcomes: dict[str, Outcome]
    daemon_cpu: float  # CPU seconds the daemon used, all threads, first publish to last result

    @property
    def cpu_per_request(self) -> float:
        return self.daemon_cpu / max(1, self.created)

    @property
    def created(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.status in ("created", "duplicate"))

    @property
    def dead_lettered(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "dead_lettered"]

    def stage_medians(self) -> dict[str, float]:
        stages: dict[str, list[float]] = {}
        for outcome in self.outcomes.values():
            if outcome.result is not None:
                for stage, seconds in outcome.result.durations_seconds.items():
                    stages.setdefault(stage, []).append(seconds)
        return {stage: statistics.median(values) for stage, values in stages.items()}

    def stored_bytes(self) -> int:
        return sum(o.result.total_bytes for o in self.outcomes.values() if o.result is not None)


@dataclass
class DaemonResult:
    plan: DaemonPlan
    small: Batch
    large: Batch
    bare_put_seconds: list[float]
    bare_small_seconds: float
    bare_five_seconds: float
    bare_pipeline_seconds: float
    daemon_peak_rss: int
    notes: list[str] = field(default_factory=list)
    local_small: Batch | None = None  # the same small requests on a local-directory store

    @property
    def small_per_second(self) -> float:
        return self.small.created / self.small.seconds

    @property
    def bare_small_per_second(self) -> float:
        return self.plan.small_requests / self.bare_small_seconds

    @property
    def bare_five_per_second(self) -> float:
        return self.plan.small_requests / self.bare_five_seconds

    @property
    def small_ratio(self) -> float:
        return self.small_per_second / self.bare_small_per_second

    @property
    def large_mb_per_second(self) -> float:
        return self.large.created * self.plan.large_raw_bytes / MB / self.large.seconds

    @property
    def bare_mb_per_second(self) -> float:
        """The faster of the bare PUT rounds (the conservative yardstick)."""
        raw = self.plan.large_requests * self.plan.large_raw_bytes
        return raw / MB / min(self.bare_put_seconds)

    @property
    def large_ratio(self) -> float:
        return self.large_mb_per_second / self.bare_mb_per_second

    @property
    def pipeline_mb_per_second(self) -> float:
        raw = self.plan.large_requests * self.plan.large_raw_bytes
        return raw / MB / self.bare_pipeline_seconds

    @property
    def pipeline_ratio(self) -> float:
        return self.large_mb_per_second / self.pipeline_mb_per_second


def load_services() -> Services | None:
    """From the environment (`make bench` sources .services.env), else from the file."""
    values = {key: os.environ.get(key, "") for key in (*SERVICE_KEYS, "AKISNAP_S3_REGION")}
    if not all(values[key] for key in SERVICE_KEYS) and SERVICES_ENV.is_file():
        for line in SERVICES_ENV.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key in values and not values[key]:
                values[key] = value.strip().strip("'\"")
    if not all(values[key] for key in SERVICE_KEYS):
        return None
    return Services(
        values["AKISNAP_KAFKA_BOOTSTRAP"],
        values["AKISNAP_S3_ENDPOINT"],
        values["AKISNAP_S3_ACCESS_KEY"],
        values["AKISNAP_S3_SECRET_KEY"],
        values["AKISNAP_S3_BUCKET"],
        values["AKISNAP_S3_REGION"] or "us-east-1",
    )


def run_daemon_bench(plan: DaemonPlan, base: Path | None) -> DaemonResult | None:
    print()
    print(
        f"== daemon-e2e: `akisnap run` with the real Kafka broker and S3 server on loopback; "
        f"{PARTITIONS} partitions =="
    )
    services = load_services()
    if services is None:
        print("   skipped: no services (run `make services`, or `make bench`, which sources")
        print(f"   {SERVICES_ENV.name}); needs {', '.join(SERVICE_KEYS)}")
        return None
    where = base or Path(tempfile.gettempdir())
    if not check_disk(where, plan.large_raw_bytes * (plan.large_requests + 3), "daemon-e2e"):
        return None
    with tempfile.TemporaryDirectory(prefix="akisnap-bench-daemon-", dir=base) as temp:
        return asyncio.run(_DaemonBench(plan, services, Path(temp)).run())


class _DaemonBench:
    def __init__(self, plan: DaemonPlan, services: Services, work: Path) -> None:
        self.plan = plan
        self.services = services
        self.work = work
        self.tag = uuid.uuid4().hex[:10]
        self.prefix = f"bench-{self.tag}"
        self.topics = (
            f"bench-{self.tag}.requests",
            f"bench-{self.tag}.results",
            f"bench-{self.tag}.dlq",
        )
        self.exports = work / "exports"
        self.exports.mkdir()
        self.notes: list[str] = []

    async def run(self) -> DaemonResult:
        small = [
            write_random_export(
                self.exports / f"small-{i}.parquet",
                self.plan.small_rows,
                self.plan.small_dim,
                seed=1000 + i,
            )
            for i in range(self.plan.small_exports)
        ]
        large = write_random_export(
            self.exports / "large.parquet", self.plan.large_rows, self.plan.large_dim, seed=77
        )
        await self._make_topics()
        try:
            with self._daemon(f"s3://{self.services.bucket}/{self.prefix}") as daemon:
                result = await self._measure(daemon, small, large)
            result.daemon_peak_rss = daemon.peak_rss
            # The same group goes on from its committed offsets, now on a local directory.
            with self._daemon((self.work / "store").as_uri()) as daemon:
                result.local_small = await self._local_small(daemon, small)
        finally:
            await self._clean_up()
        print_daemon(result)
        return result

    async def _measure(
        self, daemon: _DaemonProcess, small: list[Path], large: Path
    ) -> DaemonResult:
        await daemon.wait_ready()
        plan = self.plan
        producer = KafkaClients(self.services.bootstrap).producer(acks="all", linger_ms=2)
        await producer.start()
        try:
            warm = await self._batch(producer, daemon, "warm", small, plan.warmup_requests)
            if warm.dead_lettered:
                raise SystemExit(f"bench: warm-up request dead-lettered: {_why(warm)}")
            small_batch = await self._batch(producer, daemon, "small", small, plan.small_requests)
            bare_small = await self._bare_small(small[0], plan.small_requests, "three")
            bare_five = await self._bare_small(small[0], plan.small_requests, "five")
            bare = [await self._bare_put("before")]
            large_batch = await self._batch(producer, daemon, "large", [large], plan.large_requests)
            bare.append(await self._bare_put("after"))
            pipeline = await self._bare_pipeline(large)
        finally:
            await producer.stop()
        for name, batch in (("small", small_batch), ("large", large_batch)):
            if batch.dead_lettered:
                self.notes.append(
                    f"{name}: {len(batch.dead_lettered)} dead-lettered: {_why(batch)}"
                )
            if len(batch.outcomes) < batch.requests:
                self.notes.append(
                    f"{name}: only {len(batch.outcomes)} of {batch.requests} outcomes in time"
                )
        self.notes.append(f"warm-up: {plan.warmup_requests} small requests first, untimed")
        return DaemonResult(
            plan, small_batch, large_batch, bare, bare_small, bare_five, pipeline, 0, self.notes
        )

    async def _local_small(self, daemon: _DaemonProcess, small: list[Path]) -> Batch:
        await daemon.wait_ready()
        producer = KafkaClients(self.services.bootstrap).producer(acks="all", linger_ms=2)
        await producer.start()
        try:
            await self._batch(producer, daemon, "local-warm", small, self.plan.warmup_requests)
            return await self._batch(producer, daemon, "local", small, self.plan.small_requests)
        finally:
            await producer.stop()

    async def _batch(
        self,
        producer: AIOKafkaProducer,
        daemon: _DaemonProcess,
        name: str,
        exports: Sequence[Path],
        count: int,
    ) -> Batch:
        """Publish ``count`` requests at once (round-robin over exports and partitions) and
        wait for all of their outcomes."""
        requests = []
        for i in range(count):
            request_id = f"{self.prefix}-{name}-{i}"
            source = UriSource(exports[i % len(exports)].as_uri(), "parquet")
            key, value = build_request(f"{name}-{i % 64}", source, request_id=request_id)
            requests.append((request_id, key, value, i % PARTITIONS))
        within = 120.0 + count * (20.0 if name == "large" else 1.0)
        async with OutcomeWatcher(
            self.services.bootstrap, result_topic=self.topics[1], dlq_topic=self.topics[2]
        ) as watcher:
            cpu_began = daemon.child.cpu_seconds()
            began = time.monotonic()
            sent = [
                await producer.send(self.topics[0], value, key=key, partition=partition)
                for _, key, value, partition in requests
            ]
            await asyncio.gather(*sent)
            waiting = asyncio.create_task(watcher.wait_for([r[0] for r in requests], within))
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=1.0)
                daemon.check_alive()
            outcomes = waiting.result()
            cpu = daemon.child.cpu_seconds() - cpu_began
        last = max((o.seen_at for o in outcomes.values()), default=time.monotonic())
        return Batch(count, last - began, outcomes, cpu)

    def _client(self) -> Any:
        s = self.services
        return shared_session().create_client(
            "s3",
            endpoint_url=s.endpoint,
            region_name=s.region,
            aws_access_key_id=s.access_key,
            aws_secret_access_key=s.secret_key,
            config=client_config(s.s3_options()),
        )

    async def _bare_small(self, export: Path, count: int, calls: str) -> float:
        """The S3 calls of one small snapshot, bare, PARTITIONS at a time. ``three`` (the
        daemon's now): GET of the absent metadata (the duplicate check), PUT of the part with
        its ChecksumSHA256 (the export's bytes, about a part's size; the server checks it), PUT
        of ~2 KB metadata with If-None-Match: *. ``five`` (before): GET, plain PUT of the part,
        HEAD + GET of it (the read-back verify), plain PUT of the metadata."""
        bucket, body = self.services.bucket, export.read_bytes()
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        metadata = b"{" + b" " * 2000 + b"}"
        slots = asyncio.Semaphore(PARTITIONS)
        async with self._client() as client:

            async def three(key: str) -> None:
                with contextlib.suppress(client.exceptions.NoSuchKey):
                    await client.get_object(Bucket=bucket, Key=key + ".metadata.json")
                await client.put_object(
                    Bucket=bucket, Key=key + ".parquet", Body=body, ChecksumSHA256=digest
                )
                await client.put_object(
                    Bucket=bucket, Key=key + ".metadata.json", Body=metadata, IfNoneMatch="*"
                )

            async def five(key: str) -> None:
                with contextlib.suppress(client.exceptions.NoSuchKey):
                    await client.get_object(Bucket=bucket, Key=key + ".metadata.json")
                await client.put_object(Bucket=bucket, Key=key + ".parquet", Body=body)
                await client.head_object(Bucket=bucket, Key=key + ".parquet")
                answer = await client.get_object(Bucket=bucket, Key=key + ".parquet")
                async with answer["Body"] as stream:
                    await stream.read()
                await client.put_object(Bucket=bucket, Key=key + ".metadata.json", Body=metadata)

            async def one(index: int) -> None:
                async with slots:
                    key = f"{self.prefix}/bare-small-{calls}/{index}"
                    await (three(key) if calls == "three" else five(key))

            began = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(count)))
            return time.monotonic() - began

    async def _bare_put(self, when: str) -> float:
        """Multipart PUTs of large_requests × large_raw_bytes of random bytes, from memory."""
        plan, s = self.plan, self.services
        body = os.urandom(BARE_PART_BYTES)
        slots = asyncio.Semaphore(BARE_CONCURRENCY)
        async with self._client() as client:

            async def part(key: str, upload_id: str, number: int, size: int) -> dict[str, object]:
                async with slots:
                    answer = await client.upload_part(
                        Bucket=s.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body[:size],
                    )
                return {"PartNumber": number, "ETag": answer["ETag"]}

            async def one(index: int) -> None:
                key = f"{self.prefix}/bare-put-{when}/{index}"
                created = await client.create_multipart_upload(Bucket=s.bucket, Key=key)
                upload_id = created["UploadId"]
                total = plan.large_raw_bytes
                parts = await asyncio.gather(
                    *(
                        part(key, upload_id, n, min(BARE_PART_BYTES, total - offset))
                        for n, offset in enumerate(range(0, total, BARE_PART_BYTES), start=1)
                    )
                )
                await client.complete_multipart_upload(
                    Bucket=s.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )

            began = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(plan.large_requests)))
            return time.monotonic() - began

    async def _bare_pipeline(self, export: Path) -> float:
        """Bare encode + upload of large_requests copies of the export, pipelined: encodes
        (pyarrow, akisnap's writer settings, SHA-256 of the result) on one thread per usable
        core, each followed by its multipart upload (16 MiB parts with ChecksumSHA256, 8 in
        flight), so the upload of one overlaps the encode of the next."""
        plan, s = self.plan, self.services
        slots = asyncio.Semaphore(BARE_CONCURRENCY)
        pool = ThreadPoolExecutor(max_workers=usable_cpus())
        loop = asyncio.get_running_loop()
        async with self._client() as client:

            async def part(key: str, upload_id: str, path: Path, number: int) -> dict[str, Any]:
                async with slots:
                    data = await asyncio.to_thread(_read_at, path, (number - 1) * BARE_PART_BYTES)
                    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
                    answer = await client.upload_part(
                        Bucket=s.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=data, ChecksumSHA256=digest,
                    )  # fmt: skip
                return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": digest}

            async def one(index: int) -> None:
                path = self.work / f"bare-encoded-{index}.parquet"
                await loop.run_in_executor(pool, _bare_encode, export, path)
                key = f"{self.prefix}/bare-pipeline/{index}"
                created = await client.create_multipart_upload(
                    Bucket=s.bucket, Key=key, ChecksumAlgorithm="SHA256"
                )
                upload_id = created["UploadId"]
                count = -(-path.stat().st_size // BARE_PART_BYTES)
                parts = await asyncio.gather(
                    *(part(key, upload_id, path, n) for n in range(1, count + 1))
                )
                await client.complete_multipart_upload(
                    Bucket=s.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )  # fmt: skip
                path.unlink()

            began = time.monotonic()
            try:
                await asyncio.gather(*(one(i) for i in range(plan.large_requests)))
            finally:
                pool.shutdown()
            return time.monotonic() - began

    async def _make_topics(self) -> None:
        admin = KafkaClients(self.services.bootstrap, client_id="akisnap-bench").admin()
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in self.topics]
            )
        finally:
            await admin.close()

    async def _clean_up(self) -> None:
        """Delete the topics and every object under the bench prefix (best effort, said)."""
        try:
            admin = KafkaClients(self.services.bootstrap, client_id="akisnap-bench").admin()
            await admin.start()
            try:
                await admin.delete_topics(list(self.topics))
            finally:
                await admin.close()
        except Exception as exc:  # clean-up must not hide the figures
            print(f"   warning: could not delete topics {self.topics}: {exc!r}")
        s = self.services
        try:
            async with self._client() as client:
                pages = client.get_paginator("list_objects_v2").paginate(
                    Bucket=s.bucket, Prefix=self.prefix + "/"
                )
                async for page in pages:
                    for item in page.get("Contents", []):
                        await client.delete_object(Bucket=s.bucket, Key=item["Key"])
        except Exception as exc:
            print(f"   warning: could not delete s3://{s.bucket}/{self.prefix}/: {exc!r}")

    @contextlib.contextmanager
    def _daemon(self, store: str) -> Iterator[_DaemonProcess]:
        port = _free_port()
        spool = self.work / f"spool-{port}"
        spool.mkdir()
        s = self.services
        env = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
        env.update(
            AKISNAP_KAFKA_BOOTSTRAP=s.bootstrap,
            AKISNAP_S3_ENDPOINT=s.endpoint,
            AKISNAP_S3_ACCESS_KEY=s.access_key,
            AKISNAP_S3_SECRET_KEY=s.secret_key,
            AKISNAP_S3_REGION=s.region,
            AKISNAP_STORE=store,
            AKISNAP_REQUEST_TOPIC=self.topics[0],
            AKISNAP_RESULT_TOPIC=self.topics[1],
            AKISNAP_DLQ_TOPIC=self.topics[2],
            AKISNAP_GROUP_ID=f"bench-{self.tag}",
            AKISNAP_METRICS_PORT=str(port),
            AKISNAP_EXPORTS_ROOT=self.exports.as_uri(),
            AKISNAP_TMP_DIR=str(spool),
            AKISNAP_LOG_FORMAT="json",
        )
        log = self.work / "daemon.log"
        with log.open("wb") as sink:
            process = _DaemonProcess(
                Measured([akisnap_exe(), "run"], env=env, stdout=sink, stderr=sink), port, log
            )
            try:
                yield process
            finally:
                process.stop()


class _DaemonProcess:
    def __init__(self, child: Measured, port: int, log: Path) -> None:
        self.child = child
        self.port = port
        self.log = log
        self.peak_rss = 0

    def check_alive(self) -> None:
        if self.child.poll() is not None:
            raise SystemExit(f"bench: `akisnap run` exited:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.monotonic() < deadline:
            self.check_alive()
            if await asyncio.to_thread(_status, url) == 200:
                return
            await asyncio.sleep(0.2)
        raise SystemExit(f"bench: daemon not ready within {READY_WITHIN:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM, then its peak RSS over the whole run (wait4's ru_maxrss)."""
        self.child.terminate()
        report = self.child.wait(STOP_WITHIN)
        self.peak_rss = int(report.get("maxrss_kib", 0)) * 1024
        if report["timed_out"] or report.get("code") not in (0, None):
            print(f"   warning: `akisnap run` did not stop cleanly ({report}):\n{self.tail()}")


def _bare_encode(export: Path, out: Path) -> str:
    """Read the export batch by batch, write it with akisnap's Parquet settings, hash it."""
    source = pq.ParquetFile(export)
    rows = max(1, DEFAULT_ROW_GROUP_BYTES // bytes_per_row_estimate(_dimension(source)))
    with pq.ParquetWriter(out, source.schema_arrow, **writer_options("zstd")) as writer:
        for batch in source.iter_batches(batch_size=rows):
            writer.write_batch(batch, row_group_size=rows)
    return sha256_file(out)


def _dimension(source: pq.ParquetFile) -> int:
    return int(source.schema_arrow.field("vector").type.list_size)


def _read_at(path: Path, offset: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(BARE_PART_BYTES)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _why(batch: Batch) -> str:
    letter = batch.dead_lettered[0].dead_letter
    headers = dict(letter.headers) if letter is not None else {}
    stage = headers.get("akisnap.error.stage", b"?").decode()
    message = headers.get("akisnap.error.message", b"?").decode()
    return f"{stage}: {message}"


def print_daemon(result: DaemonResult) -> None:
    plan = result.plan
    small, large = result.small, result.large
    n = plan.small_requests
    raw_mb = plan.large_raw_bytes / MB
    print(f"{'measure':<58} {'requests':>8} {'seconds':>8} {'rate':>14} {'ratio':>7}")

    def row(label: str, count: int, seconds: float, rate: str, ratio: str = "") -> None:
        print(f"{label:<58} {count:>8} {seconds:>8.2f} {rate:>14} {ratio:>7}")

    row(
        f"daemon small: {plan.small_rows:,} × {plan.small_dim} by URI, all at once",
        small.created, small.seconds, f"{result.small_per_second:.0f} req/s",
    )  # fmt: skip
    row(
        "bare aiobotocore, the same 3 calls (GET, PUT+sha, PUT if-none)",
        n, result.bare_small_seconds, f"{result.bare_small_per_second:.0f} req/s",
        f"{result.small_ratio:.2f}×",
    )  # fmt: skip
    row(
        "bare aiobotocore, the 5 calls of before (GET,PUT,HEAD,GET,PUT)",
        n, result.bare_five_seconds, f"{result.bare_five_per_second:.0f} req/s",
        f"{result.small_per_second / result.bare_five_per_second:.2f}×",
    )  # fmt: skip
    if result.local_small is not None:
        local = result.local_small
        row(
            "daemon small, local-directory store (no S3 ceiling)",
            local.created, local.seconds, f"{local.created / local.seconds:.0f} req/s",
        )  # fmt: skip
    row(
        f"daemon large: {plan.large_rows:,} × {plan.large_dim} ({raw_mb:.0f} MB raw each)",
        large.created, large.seconds, f"{result.large_mb_per_second:.0f} MB/s",
    )  # fmt: skip
    row(
        "bare encode (pyarrow) + multipart upload, pipelined",
        plan.large_requests, result.bare_pipeline_seconds,
        f"{result.pipeline_mb_per_second:.0f} MB/s", f"{result.pipeline_ratio:.2f}×",
    )  # fmt: skip
    for when, seconds in zip(("before", "after"), result.bare_put_seconds, strict=True):
        rate = plan.large_requests * plan.large_raw_bytes / MB / seconds
        row(f"bare multipart PUT from memory, same bytes ({when})", plan.large_requests,
            seconds, f"{rate:.0f} MB/s")  # fmt: skip
    batches = [("small", small), ("large", large)]
    if result.local_small is not None:
        batches.append(("local small", result.local_small))
    for name, batch in batches:
        stages = " · ".join(f"{k} {v:.3f}" for k, v in batch.stage_medians().items())
        print(f"   {name} stages in the daemon (median s per request): {stages}")
        print(
            f"   {name}: daemon CPU {batch.daemon_cpu:.1f} s = "
            f"{batch.cpu_per_request * 1000:.0f} ms per request "
            f"({batch.daemon_cpu / batch.seconds:.2f} cores busy on average)"
        )
    stored = large.stored_bytes() / max(1, large.created)
    print(
        f"   large: {stored / MB:.0f} MB stored per snapshot; daemon peak RSS over the whole "
        f"run {result.daemon_peak_rss / MIB:.0f} MiB ({result.daemon_peak_rss / GIB:.2f} GiB)"
    )
    print(
        f"   bare small: {PARTITIONS} requests at once; ratio = daemon ÷ bare. Targets: small ≥ "
        "0.8× the 3 bare calls and ≥ 36 req/s, ≤ 15 ms CPU per request; large ≥ 0.8× the bare "
        "pipeline; peak RSS ≤ 1 GiB"
    )
    print("   rate = completed results ÷ (last result seen − first publish); large MB/s = raw")
    print(
        f"   float32 MB; bare uploads: {BARE_PART_BYTES // MIB} MiB parts, {BARE_CONCURRENCY} in "
        "flight"
    )
    for note in result.notes:
        print(f"   note: {note}")
