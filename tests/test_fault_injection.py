"""Fault injection: requests survive SIGKILLs, a broker restart and an S3 outage, exactly once.

The run has its own broker (a private KRaft broker from the cached jars, restarted once
mid-run; the shared one is never touched) and reaches the shared s3proxy through a TCP proxy
that is switched off for ten seconds. ``akisnap run`` is a subprocess, killed with SIGKILL three
times and restarted each time. The faults are triggered by progress (the share of requests that
have a result), so each one hits work in flight.

Afterwards every request has exactly one snapshot (its deterministic id) and at least one
result event, nothing is dead-lettered, every listed snapshot verifies, and
``akisnap snapshots prune --orphans --grace-hours 0`` leaves no object that is not part of a
committed snapshot. The figures are printed to the terminal, pass or fail.

N is the issue's 2,000 requests. On the 2-core machine this was written on the whole test takes
about 160 s (~125 s until every request settled, of which about a minute is the faults
themselves: each SIGKILL waits out the dead member's 10 s session timeout), inside the 3-minute
CI budget; on a machine shared with other heavy work it took up to 1.5x longer. Set
``AKISNAP_FAULT_REQUESTS`` to run fewer (or more).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from daemon.demo import random_documents
from daemon.events import build_request, parse_result
from handlers.catalog import Catalog
from handlers.job import InlineSource, snapshot_id_for
from handlers.layout import is_metadata_key
from handlers.stores import S3Options, open_store
from handlers.verify import verify_snapshot
from tests.conftest import REPO, S3Service
from tests.daemon_support import TcpProxy
from tools.services.private import AkisnapRun, KafkaBroker

pytestmark = pytest.mark.fault

DEFAULT_REQUESTS = 2000
REQUEST_PARTITIONS = 16
COLLECTIONS = 32
# (share of requests settled, fault): each fault waits for that much progress.
SCHEDULE = (
    (0.08, "sigkill"),
    (0.22, "s3-outage"),
    (0.36, "sigkill"),
    (0.50, "broker-restart"),
    (0.66, "sigkill"),
)
S3_OUTAGE_SECONDS = 10.0


def request_count() -> int:
    return int(os.environ.get("AKISNAP_FAULT_REQUESTS") or DEFAULT_REQUESTS)


@pytest.fixture(scope="module")
def fault_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A private broker this module may restart (never the shared one)."""
    broker = KafkaBroker(tmp_path_factory.mktemp("fault-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@dataclass(frozen=True)
class Run:
    requests: str
    results: str
    dlq: str
    group: str


async def make_run_topics(bootstrap: str) -> Run:
    tag = uuid.uuid4().hex[:8]
    run = Run(f"fault.{tag}.requests", f"fault.{tag}.results", f"fault.{tag}.dlq", f"fault-{tag}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="akisnap-fault-test")
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(run.requests, REQUEST_PARTITIONS, 1),
                NewTopic(run.results, 4, 1),
                NewTopic(run.dlq, 4, 1),
            ]
        )
    finally:
        await admin.close()
    return run


def daemon_env(
    bootstrap: str, run: Run, store: str, s3: S3Service, *, s3_endpoint: str, spool: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
    env.update(
        AKISNAP_KAFKA_BOOTSTRAP=bootstrap,
        AKISNAP_GROUP_ID=run.group,
        AKISNAP_REQUEST_TOPIC=run.requests,
        AKISNAP_RESULT_TOPIC=run.results,
        AKISNAP_DLQ_TOPIC=run.dlq,
        AKISNAP_STORE=store,
        AKISNAP_S3_ENDPOINT=s3_endpoint,
        AKISNAP_S3_ACCESS_KEY=s3.access_key,
        AKISNAP_S3_SECRET_KEY=s3.secret_key,
        AKISNAP_S3_REGION=s3.region,
        # Outlast the S3 outage and the broker restart: ~60 s of retries per request.
        AKISNAP_RETRY_ATTEMPTS="80",
        AKISNAP_RETRY_BASE_SECONDS="0.1",
        AKISNAP_RETRY_CAP_SECONDS="1.0",
        AKISNAP_SHUTDOWN_GRACE_SECONDS="8",
        AKISNAP_MAX_IN_FLIGHT_REQUESTS=str(REQUEST_PARTITIONS),
        AKISNAP_LOG_FORMAT="json",
        AKISNAP_LOG_LEVEL="info",
        AKISNAP_TMP_DIR=str(spool),
    )
    return env


def build_requests(count: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(count):
        rid = str(uuid.uuid4())
        source = InlineSource(random_documents(4, 8, seed=i))
        key, value = build_request(f"fault-{i % COLLECTIONS}", source, request_id=rid)
        out.append((rid, key, value))
    return out


async def publish_all(bootstrap: str, topic: str, requests: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        sent = [await producer.send(topic, value=value, key=key) for _, key, value in requests]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


class ResultTally:
    """Reads a result topic from the beginning, in the background; survives broker restarts."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.counts: Counter[str] = Counter()
        self.records = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def settled(self) -> int:
        return len(self.counts)

    async def __aenter__(self) -> ResultTally:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id="akisnap-fault-tally",
        )  # fmt: skip
        await consumer.start()
        consumer.assign([TopicPartition(self._topic, p) for p in range(4)])
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def _read(self, consumer: Any) -> None:
        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500)
                except KafkaError:
                    await asyncio.sleep(0.5)
                    continue
                for records in batches.values():
                    for record in records:
                        self.counts[parse_result(record.value).request_id] += 1
                        self.records += 1
        finally:
            await consumer.stop()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def until(self, count: int, within: float, daemon: AkisnapRun) -> None:
        deadline = time.monotonic() + within
        while self.settled < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {self.settled} of {count} requests settled in {within:.0f}s; "
                    f"daemon log tail:\n{daemon.log_text()[-4000:]}"
                )
            await asyncio.sleep(0.2)


async def topic_size(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await consumer.stop()


def s3_options(s3: S3Service) -> S3Options:
    return S3Options(
        endpoint_url=s3.endpoint, region=s3.region, access_key=s3.access_key,
        secret_key=s3.secret_key,
    )  # fmt: skip


@dataclass(frozen=True)
class Inventory:
    """What a store holds: committed snapshots, and objects no snapshot commits."""

    snapshot_ids: list[str]
    metadata_keys: set[str]
    parts: set[str]
    strays: list[str]
    problems: list[str]


async def take_inventory(
    store_uri: str, s3: S3Service, committed: Inventory | None = None
) -> Inventory:
    """List the store once. Without ``committed``: read every metadata file and verify every
    snapshot (parts' size and SHA-256). With it: only list, judging strays by its parts."""
    store = open_store(store_uri, s3_options(s3))
    try:
        keys = [info.key async for info in store.list("snapshots/")]
        metadata_keys = {key for key in keys if is_metadata_key(key)}
        if committed is not None:
            return Inventory(
                snapshot_ids=committed.snapshot_ids,
                metadata_keys=metadata_keys,
                parts=committed.parts,
                strays=[k for k in keys if k not in metadata_keys and k not in committed.parts],
                problems=[],
            )
        snapshots = await Catalog(store).list()
        parts = {part.key for meta in snapshots for part in meta.parts}
        slots = asyncio.Semaphore(16)

        async def check(meta: Any) -> list[str]:
            async with slots:
                report = await verify_snapshot(store, meta)
            return [f"{meta.snapshot_id}: {problem}" for problem in report.problems]

        found = await asyncio.gather(*(check(meta) for meta in snapshots))
        return Inventory(
            snapshot_ids=[meta.snapshot_id for meta in snapshots],
            metadata_keys=metadata_keys,
            parts=parts,
            strays=[key for key in keys if key not in metadata_keys and key not in parts],
            problems=[problem for problems in found for problem in problems],
        )
    finally:
        await store.close()


def prune_orphans(store_uri: str, s3: S3Service) -> dict[str, Any]:
    """`akisnap snapshots prune --orphans --grace-hours 0 --json`, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
    env.update(
        AKISNAP_S3_ENDPOINT=s3.endpoint, AKISNAP_S3_ACCESS_KEY=s3.access_key,
        AKISNAP_S3_SECRET_KEY=s3.secret_key, AKISNAP_S3_REGION=s3.region,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "snapshots", "prune", "--orphans",
         "--grace-hours", "0", "--json", "--store", store_uri],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


@contextlib.asynccontextmanager
async def switched_proxy(target: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@dataclass
class Timeline:
    started: float
    lines: list[str]

    def note(self, what: str) -> None:
        self.lines.append(f"{time.monotonic() - self.started:6.1f}s  {what}")


async def run_with_faults(
    broker: KafkaBroker, run: Run, store: str, s3: S3Service, requests: list[Any], *,
    log: Path, spool: Path, timeline: Timeline,
) -> tuple[Counter[str], int, int]:  # fmt: skip
    """Publish, inject the SCHEDULE's faults as the results come in, wait for every result;
    (results per request id, result events, daemon starts)."""
    count = len(requests)
    async with switched_proxy(s3.endpoint) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        env = daemon_env(broker.bootstrap, run, store, s3, s3_endpoint=endpoint, spool=spool)
        daemon = AkisnapRun(REPO, env, log)
        daemon.start()
        try:
            await asyncio.to_thread(daemon.wait_ready, 60)
            async with ResultTally(broker.bootstrap, run.results) as tally:
                await publish_all(broker.bootstrap, run.requests, requests)
                timeline.note(f"published {count} requests")
                for share, fault in SCHEDULE:
                    await tally.until(int(share * count), 120, daemon)
                    timeline.note(f"{tally.settled} settled: {fault}")
                    if fault == "sigkill":
                        daemon.kill()
                        daemon.start()
                    elif fault == "s3-outage":
                        await proxy.stop()
                        await asyncio.sleep(S3_OUTAGE_SECONDS)
                        await proxy.start()
                    else:
                        await asyncio.to_thread(broker.restart)
                    timeline.note(f"{fault} done")
                await tally.until(count, 180, daemon)
                timeline.note(f"all {count} settled")
                await asyncio.sleep(1.0)  # late duplicates, if any, land in the tally too
                counts, records = Counter(tally.counts), tally.records
        finally:
            code = await asyncio.to_thread(daemon.terminate, 20)
    assert code == 0, daemon.log_text()[-3000:]
    return counts, records, daemon.starts


@pytest.mark.timeout(420)
async def test_requests_survive_sigkills_broker_restart_and_s3_outage(
    fault_broker: KafkaBroker,
    s3_service: S3Service,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three SIGKILLs, a broker restart and a 10 s S3 outage mid-run: every request ends with
    exactly one verified snapshot and a result; no leftovers survive `prune --orphans`."""
    count = request_count()
    run = await make_run_topics(fault_broker.bootstrap)
    store = f"s3://{s3_service.bucket}/tests/fault-{uuid.uuid4().hex}"
    requests = build_requests(count)
    timeline = Timeline(time.monotonic(), [])
    counts, result_records, starts = await run_with_faults(
        fault_broker, run, store, s3_service, requests,
        log=tmp_path / "run.log", spool=tmp_path / "spool", timeline=timeline,
    )  # fmt: skip
    spooled = [path for path in (tmp_path / "spool").rglob("*") if path.is_file()]
    ids = [rid for rid, _, _ in requests]
    dead_letters = await topic_size(fault_broker.bootstrap, run.dlq, 4)
    before = await take_inventory(store, s3_service)
    pruned = await asyncio.to_thread(prune_orphans, store, s3_service)
    removed = pruned["orphans"]["removed"]
    after = await take_inventory(store, s3_service, committed=before)
    timeline.note("checked")

    expected = {snapshot_id_for(key.decode(), rid) for rid, key, _ in requests}
    listed = Counter(before.snapshot_ids)
    duplicates = sum(n - 1 for n in listed.values()) + len(set(listed) - expected)
    lost = len(expected - set(listed))
    report = (
        "\nfault injection:\n  " + "\n  ".join(timeline.lines) + "\n"
        f"  requests {count}, snapshots {len(before.snapshot_ids)}, duplicates {duplicates}, "
        f"lost {lost}, orphans removed {len(removed)} "
        f"({sum(o['bytes'] for o in removed)} bytes; stray objects {len(before.strays)} before "
        f"the prune, {len(after.strays)} after), result events {result_records} "
        f"({result_records - count} for redone requests), dead letters {dead_letters}, "
        f"daemon starts {starts}, local spool files the kills left behind {len(spooled)}"
    )
    with capsys.disabled():  # the figures belong in CI's log, pass or fail
        print(report)
    assert all(counts[rid] >= 1 for rid in ids), "a request has no result event"
    assert set(counts) == set(ids), "a result for a request never made"
    assert (duplicates, lost) == (0, 0)
    assert len(before.snapshot_ids) == count
    assert not before.problems, before.problems[:5]
    assert dead_letters == 0
    assert after.strays == []
    assert after.metadata_keys == before.metadata_keys, "the prune touched a committed snapshot"
    assert starts == 4
