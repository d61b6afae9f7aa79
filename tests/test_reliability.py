"""Reliability against the real services: environment faults are waited out (never
dead-lettered), nothing loops forever, headers are carried, every codec is read, SIGTERM stops
a large encode within the grace period.

Anything that is restarted (the S3 server with other credentials, the broker) is a private
server of this module (tools/services/private.py); the shared services are only used.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.app import Daemon
from daemon.dead_letters.letter import H_CLASS, H_RETRYABLE, H_STAGE
from daemon.events import build_request
from handlers.job import UriSource, snapshot_id_for
from handlers.layout import metadata_key
from handlers.metadata import PartInfo, SnapshotMetadata
from handlers.stores import open_store
from tests.daemon_support import (
    create_topics,
    env_for,
    http_status,
    inline_request,
    read_topic,
    running,
    sample,
    send,
    settings_for,
    shutdown_seconds,
    snapshot_ids,
    until,
    watcher,
)
from tests.support import REPO, TopicFactory, Topics, headers_dict
from tools.services.private import AkisnapRun, KafkaBroker, S3Proxy

TRACE = [
    ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("tracestate", b"congo=t61rcWkgMzE"),
    ("x-team", b"search"),
]
ACCESS_KEY = "akisnap-reliability"
GOOD_SECRET = "reliability-secret-" + uuid.uuid4().hex[:8]
OTHER_SECRET = "rotated-secret-" + uuid.uuid4().hex[:8]
BUCKET = "reliability"


# -- environment: S3 credentials rotated under a running daemon ---------------------------------


@pytest.fixture
def private_s3(tmp_path: Path) -> Iterator[S3Proxy]:
    server = S3Proxy(tmp_path / "s3", ACCESS_KEY, GOOD_SECRET)
    server.start()
    server.make_bucket(BUCKET)
    try:
        yield server
    finally:
        server.close()


def _restart_with(server: S3Proxy, secret: str) -> None:
    """The same server (port, data) restarted accepting another secret key."""
    server.close()
    server.secret_key = secret
    server.start()


async def test_credentials_refused_mid_run_nothing_dead_lettered_then_all_succeed(
    kafka_bootstrap: str, make_topics: TopicFactory, private_s3: S3Proxy, tmp_path: Path
) -> None:
    """The S3 server restarts with other credentials while requests arrive: no dead letter,
    /readyz not ready, the environment metric rises; credentials right again → every request
    gets its snapshot, once."""
    topics = await make_topics()
    settings = settings_for(
        kafka_bootstrap, topics, tmp_path, store=f"s3://{BUCKET}/snapshots-test",
        s3_endpoint=private_s3.endpoint, s3_access_key=ACCESS_KEY, s3_secret_key=GOOD_SECRET,
        s3_region="us-east-1", retry_attempts=2,
    )  # fmt: skip
    requests = [inline_request(f"rot-{i % 4}", rows=30, dim=8, seed=i) for i in range(12)]
    async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
        await asyncio.to_thread(_restart_with, private_s3, OTHER_SECRET)
        await send(kafka_bootstrap, topics.requests, [(k, v, []) for _, k, v in requests])
        await until(lambda: sample(daemon, "akisnap_environment_paused") == 1, 30, "the pause")
        assert refused(daemon) >= 1
        assert await asyncio.to_thread(http_status, daemon.metrics_port, "/readyz") == 503
        assert await asyncio.to_thread(http_status, daemon.metrics_port, "/healthz") == 200
        # Hold it there: the probes keep failing, and still nothing settles or dead-letters.
        before = refused(daemon)
        await until(lambda: refused(daemon) >= before + 2, 30, "two more failed probes")
        assert outcomes.outcomes == {}
        await asyncio.to_thread(_restart_with, private_s3, GOOD_SECRET)
        found = await outcomes.wait_for([rid for rid, _, _ in requests], 90)
        assert sample(daemon, "akisnap_dlq_messages_total", stage="upload") == 0
    assert sorted(o.status for o in found.values()) == ["created"] * len(requests)
    ids = await snapshot_ids(settings)
    assert sorted(ids) == sorted(snapshot_id_for(key.decode(), rid) for rid, key, _ in requests)


def refused(daemon: Daemon) -> float:
    """Environment faults counted for refused credentials or permission (a HEAD answer has
    no body, so s3proxy's refusal of a HEAD reads as permission denied)."""
    kinds = ("store_credentials_refused", "store_permission_denied")
    return sum(sample(daemon, "akisnap_environment_errors_total", kind=kind) for kind in kinds)


# -- environment: the broker goes away and comes back -----------------------------------------


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def test_broker_down_nothing_dead_lettered_and_work_resumes(
    private_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The broker stops while requests are being settled: nothing is dead-lettered, and once
    it is back every request gets its result."""
    bootstrap = private_broker.bootstrap
    topics = await create_topics(bootstrap, Topics.fresh("rel"))
    settings = settings_for(bootstrap, topics, tmp_path, retry_attempts=2)
    requests = [inline_request(f"b-{i % 4}", rows=400, dim=64, seed=i) for i in range(40)]
    async with running(settings) as daemon:
        await send(bootstrap, topics.requests, [(k, v, []) for _, k, v in requests])
        await until(
            lambda: sample(daemon, "akisnap_requests_total", outcome="created") >= 3,
            60, "the first results",
        )  # fmt: skip
        await asyncio.to_thread(private_broker.restart, down_seconds=8.0)
        await until(
            lambda: sample(daemon, "akisnap_requests_total", outcome="created") >= len(requests),
            150, "every request settled after the restart",
        )  # fmt: skip
        assert sample(daemon, "akisnap_requests_total", outcome="dead_lettered") == 0
    results = await read_topic(bootstrap, topics.results)
    rids = {json.loads(r.value)["request_id"] for r in results}
    assert rids == {rid for rid, _, _ in requests}
    assert await read_topic(bootstrap, topics.dlq) == []


# -- nothing loops forever ----------------------------------------------------------------------


async def test_result_that_cannot_be_built_is_one_internal_dead_letter(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """A stored metadata file the result model refuses (reached through the duplicate path):
    one dead letter at stage internal, and the partition moves on to the next request."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    rid, key, value = inline_request("same", rows=5, dim=4)
    after_rid, after_key, after_value = inline_request("same", rows=5, dim=4, seed=1)
    store = open_store(settings.store)
    broken = SnapshotMetadata(
        snapshot_id=snapshot_id_for("same", rid), collection_id="same", request_id=rid,
        format="parquet", compression="zstd", dimension=4, vector_count=-1,
        created_at="2026-01-01T00:00:00Z", parts=(PartInfo("k", 1, 1, "0" * 64),),
    )  # fmt: skip
    await store.put_bytes(metadata_key("same", broken.snapshot_id), broken.to_json())
    async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
        await send(
            kafka_bootstrap, topics.requests, [(key, value, []), (after_key, after_value, [])]
        )
        found = await outcomes.wait_for([rid, after_rid], 30)
        assert sample(daemon, "akisnap_internal_errors_total") == 1
    letter = found[rid].dead_letter
    assert letter is not None
    assert headers_dict(letter.headers)[H_STAGE] == "internal"
    assert found[after_rid].status == "created"


async def test_request_past_its_deadline_is_dead_lettered_retryable(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path, request_deadline_seconds=0.001)
    rid, key, value = inline_request("late", rows=2000, dim=64)
    async with running(settings), watcher(kafka_bootstrap, topics) as outcomes:
        await send(kafka_bootstrap, topics.requests, [(key, value, [])])
        found = await outcomes.wait_for([rid], 30)
    letter = found[rid].dead_letter
    assert letter is not None
    headers = headers_dict(letter.headers)
    assert (headers[H_CLASS], headers[H_RETRYABLE]) == ("DeadlineExceeded", "true")


# -- headers --------------------------------------------------------------------------------------


async def test_request_headers_reach_the_result_and_the_dead_letter(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    rid, key, value = inline_request("traced", rows=5, dim=4)
    bad_rid = str(uuid.uuid4())
    bad = json.loads(inline_request("traced", rows=5, dim=4, request_id=bad_rid)[2])
    bad["source"]["documents"][0]["vector"] = []
    async with running(settings), watcher(kafka_bootstrap, topics) as outcomes:
        await send(
            kafka_bootstrap, topics.requests,
            [(key, value, TRACE), (key, json.dumps(bad).encode(), TRACE)],
        )  # fmt: skip
        found = await outcomes.wait_for([rid, bad_rid], 30)
    results = await read_topic(kafka_bootstrap, topics.results)
    assert [list(r.headers)[: len(TRACE)] for r in results] == [TRACE]
    letter = found[bad_rid].dead_letter
    assert letter is not None
    assert letter.headers[: len(TRACE)] == TRACE
    assert headers_dict(letter.headers)[H_STAGE] == "validate"


# -- codecs ---------------------------------------------------------------------------------------


CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def _produce_with_librdkafka(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, str]]
) -> None:
    """Each message by a librdkafka producer using its codec (as production producers do),
    with the Java-compatible partitioner DESIGN asks for."""
    from confluent_kafka import Producer

    for key, value, codec in messages:
        producer = Producer(
            {"bootstrap.servers": bootstrap, "compression.type": codec,
             "partitioner": "murmur2_random", "linger.ms": 5}
        )  # fmt: skip
        producer.produce(topic, value=value, key=key)
        assert producer.flush(30) == 0, f"{codec}: not delivered"


async def test_requests_in_every_codec_reach_results(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    requests = {codec: inline_request(f"codec-{codec}", rows=50, dim=16) for codec in CODECS}
    async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
        await asyncio.to_thread(
            _produce_with_librdkafka, kafka_bootstrap, topics.requests,
            [(k, v, codec) for codec, (_, k, v) in requests.items()],
        )  # fmt: skip
        found = await outcomes.wait_for([rid for rid, _, _ in requests.values()], 60)
        assert (
            sum(
                sample(daemon, "akisnap_fetch_errors_total", kind=kind)
                for kind in ("UnsupportedCodecError", "KafkaError")
            )
            == 0
        )
    assert {
        codec: found[rid].status for codec, (rid, _, _) in requests.items() if rid in found
    } == {codec: "created" for codec in CODECS}


# -- SIGTERM during a large encode ---------------------------------------------------------------


async def test_sigterm_during_a_large_encode_exits_in_grace_with_no_spool(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """SIGTERM while a large encoding runs (100,000 x 384 vectors to AkiDB's JSON format: tens
    of seconds): the process exits 0 within the grace period and leaves no spool file."""
    topics = await make_topics()
    grace = 3.0
    exports = tmp_path / "exports"
    exports.mkdir()
    rng = np.random.default_rng(5)
    np.save(exports / "big.npy", rng.standard_normal((100_000, 384), dtype=np.float32))
    settings = settings_for(kafka_bootstrap, topics, tmp_path, shutdown_grace_seconds=grace)
    spool = tmp_path / "store" / ".akisnap-tmp"  # a local store spools beside its objects
    run = AkisnapRun(REPO, env_for(settings), tmp_path / "akisnap.log")
    run.start()
    try:
        await asyncio.to_thread(run.wait_ready, 60)
        source = UriSource((exports / "big.npy").as_uri(), "npy")
        # AkiDB's JSON format: slow to write, and one file (AkiDB formats need a UUID id).
        key, value = build_request(str(uuid.uuid4()), source, format="akidb-json")
        await send(kafka_bootstrap, topics.requests, [(key, value, [])])
        await until(lambda: _spool_files(spool) != [], 60, "the encoding's first part")
        code = await asyncio.to_thread(run.terminate, grace + 10)
    finally:
        run.kill()
    log = run.log_text()
    assert code == 0, log[-3000:]
    assert "request.created" not in log, "the encoding finished before SIGTERM"
    # By the daemon's own clock: the machine's load on process start-up and exit, and on
    # this test's polling, is not the daemon's to answer for.
    took = shutdown_seconds(log)
    assert took <= grace, f"the shutdown took {took:.1f}s (grace {grace}s)"
    assert _spool_files(spool) == []


def _spool_files(spool: Path) -> list[Path]:
    return [path for path in spool.rglob("*") if path.is_file()]
