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
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from daemon.demo import random_documents
from daemon.events import build_request, parse_result
from daemon.kafka import KafkaClients
from daemon.settings import Settings
from handlers.catalog import Catalog
from handlers.job import InlineSource, snapshot_id_for
from handlers.layout import is_metadata_key
from handlers.stores import open_store
from handlers.verify import verify_snapshot
from tests.daemon_support import (
    as_messages,
    create_topics,
    env_for,
    read_topic,
    s3_settings,
    send,
    switched_proxy,
    until,
)
from tests.support import REPO, S3Service, Topics, akisnap_process, s3_options
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


def daemon_settings(
    bootstrap: str, topics: Topics, s3: S3Service, *, s3_endpoint: str, spool: Path
) -> Settings:
    return s3_settings(
        bootstrap, topics, spool.parent, s3, s3_endpoint,
        # Outlast the S3 outage and the broker restart: ~60 s of retries per request.
        retry_attempts=80, retry_base_seconds=0.1, retry_cap_seconds=1.0,
        shutdown_grace_seconds=8, max_in_flight_requests=REQUEST_PARTITIONS, tmp_dir=spool,
    )  # fmt: skip


def build_requests(count: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(count):
        rid = str(uuid.uuid4())
        source = InlineSource(random_documents(4, 8, seed=i))
        key, value = build_request(f"fault-{i % COLLECTIONS}", source, request_id=rid)
        out.append((rid, key, value))
    return out


class ResultTally:
    """Counts the requests with a result as they come, in the background (the progress the
    faults wait for); survives broker restarts."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self.counts: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    @property
    def settled(self) -> int:
        return len(self.counts)

    async def __aenter__(self) -> ResultTally:
        consumer = KafkaClients(self._bootstrap, client_id="akisnap-fault-tally").consumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
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
        finally:
            await consumer.stop()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def until(self, count: int, within: float, daemon: AkisnapRun) -> None:
        await until(
            lambda: self.settled >= count, within,
            lambda: f"{count} settled requests (only {self.settled}); daemon log tail:\n"
            f"{daemon.log_text()[-4000:]}",
        )  # fmt: skip


@dataclass(frozen=True)
class Inventory:
    """What a store holds: committed snapshots, and objects no snapshot commits."""

    snapshot_ids: list[str]
    metadata_keys: set[str]
    parts: set[str]
    strays: list[str]
    problems: list[str]


async def take_inventory(store_uri: str, committed: Inventory | None = None) -> Inventory:
    """List the store once. Without ``committed``: read every metadata file and verify every
    snapshot (parts' size and SHA-256). With it: only list, judging strays by its parts."""
    store = open_store(store_uri, s3_options())
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
    done = akisnap_process(
        "snapshots", "prune", "--orphans", "--grace-hours", "0", "--json", "--store", store_uri,
        env={
            "AKISNAP_S3_ENDPOINT": s3.endpoint, "AKISNAP_S3_ACCESS_KEY": s3.access_key,
            "AKISNAP_S3_SECRET_KEY": s3.secret_key, "AKISNAP_S3_REGION": s3.region,
        },
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


@dataclass
class Timeline:
    started: float
    lines: list[str]

    def note(self, what: str) -> None:
        self.lines.append(f"{time.monotonic() - self.started:6.1f}s  {what}")


async def run_with_faults(
    broker: KafkaBroker, topics: Topics, s3: S3Service, requests: list[Any], *,
    log: Path, spool: Path, timeline: Timeline,
) -> tuple[Counter[str], int, int, str]:  # fmt: skip
    """Publish, inject the SCHEDULE's faults as the results come in, wait for every result;
    (results per request id, result events, daemon starts, the store)."""
    count = len(requests)
    async with switched_proxy(s3.endpoint) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        settings = daemon_settings(broker.bootstrap, topics, s3, s3_endpoint=endpoint, spool=spool)
        daemon = AkisnapRun(REPO, env_for(settings), log)
        daemon.start()
        try:
            await asyncio.to_thread(daemon.wait_ready, 60)
            async with ResultTally(broker.bootstrap, topics.results) as tally:
                await send(broker.bootstrap, topics.requests, as_messages(requests))
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
        finally:
            code = await asyncio.to_thread(daemon.terminate, 20)
    assert code == 0, daemon.log_text()[-3000:]
    # The daemon has stopped: every result it will ever publish is in the topic, late
    # duplicates of redone requests included.
    results = await read_topic(broker.bootstrap, topics.results)
    counts = Counter(parse_result(record.value).request_id for record in results)
    return counts, len(results), daemon.starts, settings.store


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
    topics = await create_topics(
        fault_broker.bootstrap, Topics.fresh("fault"), request_partitions=REQUEST_PARTITIONS
    )
    requests = build_requests(count)
    timeline = Timeline(time.monotonic(), [])
    counts, result_records, starts, store = await run_with_faults(
        fault_broker, topics, s3_service, requests,
        log=tmp_path / "run.log", spool=tmp_path / "spool", timeline=timeline,
    )  # fmt: skip
    spooled = [path for path in (tmp_path / "spool").rglob("*") if path.is_file()]
    ids = [rid for rid, _, _ in requests]
    dead_letters = len(await read_topic(fault_broker.bootstrap, topics.dlq))
    before = await take_inventory(store)
    pruned = await asyncio.to_thread(prune_orphans, store, s3_service)
    removed = pruned["orphans"]["removed"]
    after = await take_inventory(store, committed=before)
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
