"""The daemon against the real Kafka broker (and the real S3 server) of `make services`.

Every test makes its own topics and consumer group (`make_topics`), drives the real loop —
`Daemon.run(handle_signals=False)` in-process, or `akisnap run` as a subprocess for the
signal tests — and reads outcomes back from the result and dead-letter topics.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from daemon.app import Daemon
from daemon.consumer import ConsumerOptions, RequestConsumer
from daemon.dead_letters.letter import (
    H_ATTEMPTS,
    H_CLASS,
    H_FAILED_AT,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_REPLAY_COUNT,
    H_RETRYABLE,
    H_STAGE,
    H_TIMESTAMP,
    H_TOPIC,
)
from daemon.events import REQUEST_SCHEMA, build_request, parse_request, parse_result
from daemon.kafka import KafkaClients
from daemon.metrics import Metrics
from daemon.settings import Settings
from daemon.verdict import Settled, Verdict
from handlers.create import SnapshotCreator
from handlers.job import SnapshotJob, UriSource, snapshot_id_for
from handlers.layout import metadata_key
from handlers.stores import open_store
from tests.daemon_support import (
    Answers503,
    Message,
    TcpProxy,
    as_messages,
    committed_total,
    env_for,
    free_port,
    http_status,
    inline_request,
    read_topic,
    running,
    s3_settings,
    sample,
    send,
    settings_for,
    shutdown_seconds,
    snapshot_ids,
    switched_proxy,
    until,
    watcher,
)
from tests.support import (
    REPO,
    S3Service,
    TopicFactory,
    Topics,
    headers_dict,
    real_embeddings,
    write_export,
)
from tools.services.private import AkisnapRun


async def test_inline_request_becomes_result_and_snapshot(
    kafka_bootstrap: str, make_topics: TopicFactory, kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:  # fmt: skip
    """An inline request yields a `created` result, a listed snapshot and a committed offset."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    rid, key, value = inline_request("products", rows=50, dim=16)
    async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
        assert await asyncio.to_thread(http_status, daemon.metrics_port, "/healthz") == 200
        await send(kafka_bootstrap, topics.requests, [(key, value, [])])
        found = await outcomes.wait_for([rid], 30)
        assert await asyncio.to_thread(http_status, daemon.metrics_port, "/readyz") == 200
        assert sample(daemon, "akisnap_requests_total", outcome="created") == 1
    result = found[rid].result
    assert result is not None and result.status == "created"
    assert result.snapshot_id == snapshot_id_for("products", rid)
    assert (result.vector_count, result.dimension) == (50, 16)
    assert result.metadata_uri.startswith(settings.store)
    assert {"decode", "source", "encode", "upload", "verify", "total"} <= set(
        result.durations_seconds
    )
    assert await snapshot_ids(settings, "products") == [snapshot_id_for("products", rid)]
    assert await committed_total(kafka_admin, topics.group_id, topics.requests) == 1


async def test_requests_of_a_collection_stay_in_order(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """Requests with one key are settled in publish order (results come out in that order)."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    requests = [inline_request("ordered", rows=30, dim=8, seed=i) for i in range(8)]
    async with running(settings):
        await send(kafka_bootstrap, topics.requests, as_messages(requests))
        records = await read_topic(kafka_bootstrap, topics.results, len(requests), 60)
    assert len({record.partition for record in records}) == 1
    assert [parse_result(r.value).request_id for r in records] == [rid for rid, _, _ in requests]
    stamps = [parse_result(r.value).created_at for r in records]
    assert stamps == sorted(stamps)


async def _consume_with(
    kafka_bootstrap: str, topics: Topics, options: ConsumerOptions, per_partition: int, hold: int
) -> tuple[list[tuple[int, int, int, int]], int, set[int], Metrics]:
    """Run a RequestConsumer over `per_partition` messages in each of the 4 partitions. The
    first handlers are held until `hold` of them are in hand at once (or, at the in-flight
    bound, until it is reached and some partition is paused), then all are let go. The
    (partition, offset, start, end) of each call, as ticks of one counter; the peak
    concurrency; the partitions seen paused while the handlers were held; the metrics."""
    total = 4 * per_partition
    calls: list[tuple[int, int, int, int]] = []
    ticks = itertools.count()
    active = peak = 0
    paused: set[int] = set()
    in_flight: list[float] = []
    released, done = asyncio.Event(), asyncio.Event()
    metrics = Metrics()
    consumer = KafkaClients(kafka_bootstrap).consumer(
        group_id=topics.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=options.max_in_flight_requests,
    )  # fmt: skip

    async def handle(record: Any, stop: asyncio.Event) -> Settled:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        in_flight.append(sample(metrics, "akisnap_in_flight_requests"))
        started = next(ticks)
        await released.wait()
        calls.append((record.partition, record.offset, started, next(ticks)))
        active -= 1
        if len(calls) == total:
            done.set()
        return Settled(Verdict.CREATED, 0.0)

    def held() -> bool:
        paused.update(tp.partition for tp in consumer.paused())
        if hold < options.max_in_flight_requests:
            return active >= hold
        # At the bound: in flight counts fetched records, two of one partition among them.
        full = sample(metrics, "akisnap_in_flight_requests") >= options.max_in_flight_requests
        return full and bool(paused)

    requests = RequestConsumer(consumer, handle, metrics, options)
    consumer.subscribe([topics.requests], listener=requests.listener)
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(requests.run(stop))
    try:
        producer = KafkaClients(kafka_bootstrap).producer(acks="all")
        await producer.start()
        try:
            for index in range(per_partition):
                for partition in range(4):
                    await producer.send_and_wait(
                        topics.requests, value=f"{partition}-{index}".encode(), partition=partition
                    )
        finally:
            await producer.stop()
        await until(held, 30, f"{hold} requests in hand at once")
        released.set()
        await asyncio.wait_for(done.wait(), 60)
        await until(lambda: lags(metrics, topics.requests) == [0.0] * 4, 10, "zero lag")
    finally:
        released.set()
        stop.set()
        await asyncio.wait_for(task, 20)
        await consumer.stop()
    assert max(in_flight) <= options.max_in_flight_requests
    return calls, peak, paused, metrics


def lags(metrics: Metrics, topic: str) -> list[float | None]:
    return [
        metrics.registry.get_sample_value(
            "akisnap_consumer_lag", {"topic": topic, "partition": str(p)}
        )
        for p in range(4)
    ]


async def test_partitions_run_concurrently_each_in_order(
    kafka_bootstrap: str, make_topics: TopicFactory, kafka_admin: AIOKafkaAdminClient
) -> None:
    """Four partitions are worked on at once (held until all four are in hand), one record
    at a time each, offsets in order."""
    topics = await make_topics()
    options = ConsumerOptions(max_in_flight_requests=16, drain_seconds=5, lag_interval_seconds=0.2)
    calls, peak, _, _ = await _consume_with(kafka_bootstrap, topics, options, 3, hold=4)
    assert peak == 4
    for partition in range(4):
        mine = [c for c in calls if c[0] == partition]
        assert [c[1] for c in mine] == [0, 1, 2]
        assert all(a[3] < b[2] for a, b in itertools.pairwise(mine))
    assert await committed_total(kafka_admin, topics.group_id, topics.requests) == 12


async def test_in_flight_bound_pauses_partitions(
    kafka_bootstrap: str, make_topics: TopicFactory, kafka_admin: AIOKafkaAdminClient
) -> None:
    """With at most 2 requests in flight (held there), partitions are paused, never more than
    2 run, and everything is still settled and committed."""
    topics = await make_topics()
    options = ConsumerOptions(max_in_flight_requests=2, drain_seconds=5, lag_interval_seconds=0.2)
    calls, peak, paused, metrics = await _consume_with(kafka_bootstrap, topics, options, 2, hold=2)
    assert peak <= 2
    assert paused, "no partition was paused while 2 requests were in flight"
    assert len(calls) == 8
    assert sample(metrics, "akisnap_in_flight_requests") == 0
    assert await committed_total(kafka_admin, topics.group_id, topics.requests) == 8


# -- bad requests -----------------------------------------------------------------------------


def _doc(vector: list[Any], **extra: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "vector": vector, **extra}


def _request(rid: str, collection: Any = "bad", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": REQUEST_SCHEMA,
        "request_id": rid,
        "collection_id": collection,
        "source": {"documents": [_doc([0.1, 0.2, 0.3])]},
    }
    body.update(fields)
    return body


def bad_requests(exports: Path) -> list[tuple[str, bytes | None, str, str | None]]:
    """(name, value, expected stage, expected error class) of each kind of bad request."""

    def r() -> str:
        return str(uuid.uuid4())

    def j(body: dict[str, Any]) -> bytes:
        return json.dumps(body).encode()

    missing = (exports / "missing.parquet").as_uri()
    return [
        ("malformed JSON", b'{"schema": "akisnap.snapshot-request/v1", "request_id": ', "decode",
         "DecodeError"),
        ("not UTF-8", b"\xff\xfe{}", "decode", "DecodeError"),
        ("tombstone", None, "decode", "DecodeError"),
        ("missing fields", j({"schema": REQUEST_SCHEMA, "request_id": r()}), "validate",
         "InvalidRequestError"),
        ("wrong types", j(_request(r(), request_id=42)), "validate", "InvalidRequestError"),
        ("path-traversing collection", j(_request(r(), collection="../../etc")), "validate",
         "InvalidRequestError"),
        ("mixed dimensions", j(_request(r(), source={"documents": [
            _doc([0.1, 0.2, 0.3]), _doc([0.1, 0.2, 0.3, 0.4])]})), "validate", None),
        ("empty documents", j(_request(r(), source={"documents": []})), "validate", None),
        ("unknown schema version", j(_request(r(), schema="akisnap.snapshot-request/v9")),
         "validate", "InvalidRequestError"),
        ("source without uri", j(_request(r(), source={"format": "parquet"})), "validate",
         "InvalidRequestError"),
        ("missing source file", j(_request(r(), source={"uri": missing, "format": "parquet"})),
         "source", "SourceError"),
        ("unsupported source scheme", j(_request(r(), source={
            "uri": "ftp://example.com/x.parquet", "format": "parquet"})), "source", None),
        ("source outside the allowed roots", j(_request(r(), source={
            "uri": "file:///etc/passwd.parquet", "format": "parquet"})), "source", None),
        ("metadata not an object", j(_request(r(), source={"documents": [
            _doc([0.1, 0.2], metadata=[1, 2])]})), "validate", "InvalidDocumentsError"),
        ("bad UUID", j(_request(r(), source={"documents": [
            {"id": "not-a-uuid", "vector": [0.1, 0.2]}]})), "validate", "InvalidDocumentsError"),
        ("float32 overflow", j(_request(r(), source={"documents": [_doc([1e39, 0.0])]})),
         "validate", "InvalidDocumentsError"),
        ("NaN", j(_request(r(), source={"documents": [_doc([float("nan"), 0.0])]})),
         "validate", "InvalidDocumentsError"),
    ]  # fmt: skip


async def test_each_bad_request_is_dead_lettered_byte_for_byte(
    kafka_bootstrap: str, make_topics: TopicFactory, kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Every kind of bad request reaches the DLQ with its key, value and DESIGN headers, at
    once, and the daemon goes on to settle the good request behind them."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    (tmp_path / "exports").mkdir()
    bad = bad_requests(tmp_path / "exports")
    messages: list[Message] = [
        (f"key-{i}".encode(), value, [(H_REPLAY_COUNT, b"2")] if i == 0 else [])
        for i, (_, value, _, _) in enumerate(bad)
    ]
    good_id, good_key, good_value = inline_request("bad", rows=5, dim=4)
    messages.append((good_key, good_value, []))
    async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
        sent = await send(kafka_bootstrap, topics.requests, messages)
        letters = await read_topic(kafka_bootstrap, topics.dlq, len(bad), 60)
        found = await outcomes.wait_for([good_id], 30)
        assert sample(daemon, "akisnap_requests_total", outcome="dead_lettered") == len(bad)
    assert found[good_id].status == "created"
    assert len(letters) == len(bad)
    by_origin = {
        (int(headers_dict(r.headers)[H_PARTITION]), int(headers_dict(r.headers)[H_OFFSET])): r
        for r in letters
    }
    for (name, value, stage, error_class), meta, (key, _, _) in zip(
        bad, sent, messages, strict=False
    ):
        letter = by_origin[(meta.partition, meta.offset)]
        headers = headers_dict(letter.headers)
        assert (letter.key, letter.value) == (key, value), name
        assert headers[H_STAGE] == stage, (name, headers)
        if error_class is not None:
            assert headers[H_CLASS] == error_class, (name, headers)
        assert headers[H_RETRYABLE] == "false", name
        assert headers[H_ATTEMPTS] == "1", name
        assert headers[H_TOPIC] == topics.requests
        assert headers[H_TIMESTAMP] == str(meta.timestamp)
        assert 0 < len(headers[H_MESSAGE]) <= 500, name
        assert datetime.fromisoformat(headers[H_FAILED_AT].replace("Z", "+00:00"))
    assert (
        headers_dict(by_origin[(sent[0].partition, sent[0].offset)].headers)[H_REPLAY_COUNT] == "2"
    )
    assert H_REPLAY_COUNT not in headers_dict(
        by_origin[(sent[1].partition, sent[1].offset)].headers
    )
    assert await committed_total(kafka_admin, topics.group_id, topics.requests) == len(messages)


# -- transient failures -----------------------------------------------------------------------


async def test_store_down_for_a_while_is_waited_out_then_succeeds(
    kafka_bootstrap: str, make_topics: TopicFactory, s3_service: S3Service, tmp_path: Path
) -> None:
    """With S3 unreachable the daemon pauses (an environment fault: no retries used up, not
    ready, counted); once S3 is back the same request is created."""
    topics = await make_topics()
    proxy = TcpProxy(s3_service.endpoint)
    settings = s3_settings(
        kafka_bootstrap, topics, tmp_path, s3_service, f"http://127.0.0.1:{proxy.port}",
        retry_attempts=2,
    )  # fmt: skip
    rid, key, value = inline_request("flaky", rows=40, dim=8)
    try:
        async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
            await send(kafka_bootstrap, topics.requests, [(key, value, [])])
            unreachable = {"kind": "store_unreachable"}
            await until(
                lambda: sample(daemon, "akisnap_environment_errors_total", **unreachable) >= 3,
                30, "three environment faults (first one, then failed probes)",
            )  # fmt: skip
            assert sample(daemon, "akisnap_environment_paused") == 1
            assert sample(daemon, "akisnap_retries_total", stage="upload") == 0
            assert await asyncio.to_thread(http_status, daemon.metrics_port, "/readyz") == 503
            await proxy.start()
            found = await outcomes.wait_for([rid], 40)
            assert sample(daemon, "akisnap_environment_paused") == 0
    finally:
        await proxy.stop()
    assert found[rid].status == "created"
    assert await _s3_snapshot_ids(settings, s3_service) == [snapshot_id_for("flaky", rid)]


async def _s3_snapshot_ids(settings: Settings, s3: S3Service) -> list[str]:
    direct = settings.model_copy(update={"s3_endpoint": s3.endpoint})
    return await snapshot_ids(direct)


async def test_retries_exhausted_go_to_dead_letters_as_retryable(
    kafka_bootstrap: str, make_topics: TopicFactory, s3_service: S3Service, tmp_path: Path
) -> None:
    """When S3 keeps answering 503, the request is dead-lettered after the configured attempts
    with retryable=true, and the offset is committed (the daemon goes on)."""
    topics = await make_topics()
    rid, key, value = inline_request("down", rows=10, dim=4)
    async with Answers503() as overloaded:
        settings = s3_settings(
            kafka_bootstrap, topics, tmp_path, s3_service, f"http://127.0.0.1:{overloaded.port}",
            retry_attempts=3,
        )  # fmt: skip
        async with running(settings), watcher(kafka_bootstrap, topics) as outcomes:
            await send(kafka_bootstrap, topics.requests, [(key, value, [])])
            found = await outcomes.wait_for([rid], 60)
    letter = found[rid].dead_letter
    assert letter is not None and letter.value == value and letter.key == key
    headers = headers_dict(letter.headers)
    assert headers[H_RETRYABLE] == "true"
    assert headers[H_ATTEMPTS] == "3"
    assert headers[H_STAGE] == "upload"
    assert headers[H_CLASS] == "StoreUnavailableError"
    assert s3_service.secret_key not in headers[H_MESSAGE]


# -- duplicates -------------------------------------------------------------------------------


async def test_replayed_request_is_a_duplicate_and_nothing_is_rewritten(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """The same request published twice: `created`, then `duplicate`, one snapshot, the
    metadata file untouched."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    rid, key, value = inline_request("replayed", rows=10, dim=4)
    async with running(settings) as daemon:
        async with watcher(kafka_bootstrap, topics) as outcomes:
            await send(kafka_bootstrap, topics.requests, [(key, value, [])])
            first = (await outcomes.wait_for([rid], 30))[rid]
        (metadata,) = (tmp_path / "store").rglob("*.metadata.json")
        before = (metadata.stat().st_mtime_ns, metadata.read_bytes())
        async with watcher(kafka_bootstrap, topics) as outcomes:
            await send(kafka_bootstrap, topics.requests, [(key, value, [(H_REPLAY_COUNT, b"1")])])
            second = (await outcomes.wait_for([rid], 30))[rid]
        assert sample(daemon, "akisnap_requests_total", outcome="duplicate") == 1
    assert (first.status, second.status) == ("created", "duplicate")
    assert second.result is not None and second.result.snapshot_id == snapshot_id_for(
        "replayed", rid
    )
    assert (metadata.stat().st_mtime_ns, metadata.read_bytes()) == before
    assert await snapshot_ids(settings) == [snapshot_id_for("replayed", rid)]


async def test_snapshot_committed_after_the_check_is_a_duplicate_from_the_commit(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path, s3_service: S3Service,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Another run commits between the daemon's existence check and its commit: the
    conditional PUT (If-None-Match) refuses, the result is `duplicate`, the other run's
    metadata stays byte for byte."""
    topics = await make_topics()
    settings = s3_settings(kafka_bootstrap, topics, tmp_path, s3_service, s3_service.endpoint)
    rid, key, value = inline_request("raced", rows=20, dim=8)
    store = open_store(settings.store, settings.s3_options())
    try:
        job = parse_request(value, max_bytes=len(value))
        other = await SnapshotCreator(store, source_roots=[])(job)
        committed = metadata_key("raced", other.metadata.snapshot_id)
        before = await store.get_bytes(committed)

        async def checked_too_early(self: SnapshotCreator, job: SnapshotJob) -> None:
            return None  # the other run had not committed yet when this one looked

        monkeypatch.setattr(SnapshotCreator, "existing", checked_too_early)
        async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
            await send(kafka_bootstrap, topics.requests, [(key, value, [])])
            found = (await outcomes.wait_for([rid], 30))[rid]
            assert sample(daemon, "akisnap_requests_total", outcome="duplicate") == 1
            assert sample(daemon, "akisnap_store_feature", feature="conditional_writes") == 1
        assert found.status == "duplicate"
        assert await store.get_bytes(committed) == before
    finally:
        await store.close()


# -- lifecycle --------------------------------------------------------------------------------


async def test_unreachable_kafka_keeps_health_up_and_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no broker, /healthz is 200 and /readyz 503 while the daemon keeps retrying (held
    until its second attempt to connect); stop still returns 0 within the grace period."""
    topics = Topics("r", "s", "d", "g")
    settings = settings_for(f"127.0.0.1:{free_port()}", topics, tmp_path)
    attempts = 0
    connect = Daemon._start

    async def counted(self: Daemon, producer: Any, consumer: Any) -> bool:
        nonlocal attempts
        attempts += 1
        return await connect(self, producer, consumer)

    monkeypatch.setattr(Daemon, "_start", counted)
    daemon = Daemon(settings, metrics_port=0, health_host="127.0.0.1")
    task = asyncio.create_task(daemon.run(handle_signals=False))
    try:
        await until(lambda: attempts >= 2, 30, "a second attempt to connect")
        assert await asyncio.to_thread(http_status, daemon.metrics_port, "/healthz") == 200
        assert await asyncio.to_thread(http_status, daemon.metrics_port, "/readyz") == 503
        assert not task.done()
    finally:
        daemon.stop()
        code = await asyncio.wait_for(task, settings.shutdown_grace_seconds)
    assert code == 0


def _export_requests(
    tmp_path: Path, count: int, rows: int, collections: Sequence[str] = ()
) -> list[tuple[str, bytes, bytes]]:
    """`count` requests by URI of one real-embedding export of `rows` rows, over the given
    collections (default: 6)."""
    uri = write_export(real_embeddings(rows), tmp_path / "exports", "real.parquet")
    names = list(collections) or [f"wave-{i}" for i in range(6)]
    out = []
    for i in range(count):
        rid = str(uuid.uuid4())
        key, value = build_request(names[i % len(names)], UriSource(uri, "parquet"), request_id=rid)
        out.append((rid, key, value))
    return out


def one_collection_per_partition(partitions: int) -> list[str]:
    """Collection ids whose keys land on partitions 0..n-1 under Kafka's default partitioner,
    so a wave spreads evenly."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        name = f"wave-{i}"
        chosen.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % partitions, name)
        if len(chosen) == partitions:
            break
    return [chosen[p] for p in range(partitions)]


def environment_paused(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        return "\nakisnap_environment_paused 1.0" in page.read().decode()


@pytest.mark.timeout(300)
async def test_sigterm_drains_commits_and_exits_zero(
    kafka_bootstrap: str, make_topics: TopicFactory, kafka_admin: AIOKafkaAdminClient,
    s3_service: S3Service, tmp_path: Path,
) -> None:  # fmt: skip
    """SIGTERM mid-wave, with requests held in hand (S3 switched off under them): `akisnap run`
    exits 0 within the grace period having committed exactly the requests it finished; a
    restart settles the rest, none twice."""
    topics = await make_topics()
    grace = 5.0  # the held requests are let go at its end, less the shutdown reserve
    requests = _export_requests(tmp_path, 16, 5_000)
    ids = [rid for rid, _, _ in requests]
    async with switched_proxy(s3_service.endpoint) as proxy:
        settings = s3_settings(
            kafka_bootstrap, topics, tmp_path, s3_service, f"http://127.0.0.1:{proxy.port}",
            shutdown_grace_seconds=grace,
        )  # fmt: skip
        run = AkisnapRun(REPO, env_for(settings), tmp_path / "run.log")
        run.start()
        try:
            await asyncio.to_thread(run.wait_ready, 60)
            async with watcher(kafka_bootstrap, topics) as outcomes:
                await send(kafka_bootstrap, topics.requests, as_messages(requests[:8]))
                await outcomes.wait_for(ids, 60, at_least=2)
                await proxy.stop()  # from here on no request can finish
                await send(kafka_bootstrap, topics.requests, as_messages(requests[8:]))
                await until(
                    lambda: asyncio.to_thread(environment_paused, run.port), 60,
                    "a request held in hand by the S3 outage",
                )  # fmt: skip
                code = await asyncio.to_thread(run.terminate, grace + 10)
                assert code == 0, run.log_text()[-3000:]
                assert shutdown_seconds(run.log_text()) <= grace
                results = await read_topic(kafka_bootstrap, topics.results)
                finished = {parse_result(r.value).request_id for r in results}
                assert 2 <= len(finished) <= 8
                committed = await committed_total(kafka_admin, topics.group_id, topics.requests)
                assert committed == len(finished)
                await proxy.start()
                async with running(settings):
                    found = await outcomes.wait_for(ids, 90)
        finally:
            run.kill()
    assert len(found) == len(requests)
    # `duplicate` only if S3 went away between a commit and its answer: still one snapshot.
    assert {outcome.status for outcome in found.values()} <= {"created", "duplicate"}
    results = await read_topic(kafka_bootstrap, topics.results)
    assert sorted(parse_result(r.value).request_id for r in results) == sorted(ids)  # none twice
    assert await read_topic(kafka_bootstrap, topics.dlq) == []
    assert sorted(await _s3_snapshot_ids(settings, s3_service)) == sorted(
        snapshot_id_for(key.decode(), r) for r, key, _ in requests
    )


@pytest.mark.timeout(300)
async def test_sigkill_midway_leaves_exactly_one_snapshot_per_request(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """`kill -9` in the middle of a wave, then a restart with the rest of the wave waiting:
    every request ends as exactly one snapshot (redone ones report `duplicate` or `created`,
    never a second snapshot)."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    requests = _export_requests(tmp_path, 30, 5_000)
    ids = [rid for rid, _, _ in requests]
    run = AkisnapRun(REPO, env_for(settings), tmp_path / "run.log")
    run.start()
    try:
        await asyncio.to_thread(run.wait_ready, 60)
        async with watcher(kafka_bootstrap, topics) as outcomes:
            await send(kafka_bootstrap, topics.requests, as_messages(requests[:15]))
            await outcomes.wait_for(ids, 60, at_least=4)
            await asyncio.to_thread(run.kill)
            # Published while it is dead: the restart has work whatever the kill interrupted.
            await send(kafka_bootstrap, topics.requests, as_messages(requests[15:]))
            run.start()
            await asyncio.to_thread(run.wait_ready, 60)
            found = await outcomes.wait_for(ids, 120)
    finally:
        code = await asyncio.to_thread(run.terminate, 20)
    assert len(found) == len(requests)
    assert {o.status for o in found.values()} <= {"created", "duplicate"}
    assert sorted(await snapshot_ids(settings)) == sorted(
        snapshot_id_for(key.decode(), r) for r, key, _ in requests
    )
    metadata_files = list((tmp_path / "store").rglob("*.metadata.json"))
    assert len(metadata_files) == len(requests)
    assert code == 0, run.log_text()[-3000:]


@pytest.mark.timeout(300)
async def test_rebalance_hands_partitions_over_without_redoing_work(
    kafka_bootstrap: str, make_topics: TopicFactory, kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A second daemon joining mid-wave takes over partitions: the first settles and commits
    what it finished, the second works the rest of the wave on the partitions it got, and
    every request gets exactly one result."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    # Evenly spread, so whichever partitions the newcomer gets hold work.
    requests = _export_requests(tmp_path, 40, 10_000, one_collection_per_partition(4))
    ids = [rid for rid, _, _ in requests]
    async with watcher(kafka_bootstrap, topics) as outcomes, running(settings) as first:
        await send(kafka_bootstrap, topics.requests, as_messages(requests[:20]))
        await outcomes.wait_for(ids, 60, at_least=2)
        async with running(settings) as second:
            # Published once both are members: half of it is on the second's partitions.
            await send(kafka_bootstrap, topics.requests, as_messages(requests[20:]))
            found = await outcomes.wait_for(ids, 120)
            assert sample(second, "akisnap_requests_total", outcome="created") > 0
        created_first = sample(first, "akisnap_requests_total", outcome="created")
    assert len(found) == len(requests)
    results = await read_topic(kafka_bootstrap, topics.results)
    assert sorted(parse_result(r.value).request_id for r in results) == sorted(ids)
    assert created_first < len(requests)
    assert await committed_total(kafka_admin, topics.group_id, topics.requests) == len(requests)
