"""Helpers for tests that run the daemon against the real broker and S3 server.

Kafka clients are built by daemon.kafka's factory, as the daemon builds its own; a helper that
talks to Kafka takes a bootstrap address, or a KafkaClients for a secured listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from daemon.app import Daemon
from daemon.demo import random_documents
from daemon.events import build_request
from daemon.kafka import MIB, KafkaClients
from daemon.metrics import Metrics
from daemon.outcomes import OutcomeWatcher
from daemon.settings import Settings, env_name
from handlers.catalog import Catalog
from handlers.job import InlineSource
from handlers.stores import open_store
from tests.support import S3Service, Topics

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
Kafka = str | KafkaClients  # a bootstrap address (PLAINTEXT), or clients with their security


def clients(kafka: Kafka) -> KafkaClients:
    return kafka if isinstance(kafka, KafkaClients) else KafkaClients(kafka)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def settings_for(bootstrap: str, topics: Topics, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings of a daemon on ``topics`` with a local store and exports root in ``tmp_path``
    and quick retries; ``overrides`` win (Settings.load reads AKISNAP_* variables too)."""
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "group_id": topics.group_id,
        "request_topic": topics.requests,
        "result_topic": topics.results,
        "dlq_topic": topics.dlq,
        "store": (tmp_path / "store").as_uri(),
        "exports_root": (tmp_path / "exports").as_uri(),
        "retry_attempts": 3,
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.2,
        "shutdown_grace_seconds": 8.0,
        "log_format": "console",
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings.load(None, **values)


def env_for(settings: Settings, **variables: str) -> dict[str, str]:
    """The environment of an `akisnap` subprocess with these settings: every setting that is
    not its default, no AKISNAP_* variable of the caller's, and ``variables`` on top. Its log
    is JSON lines at info level (what the tests read back) unless ``variables`` say otherwise.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None or name in ("log_format", "log_level"):
            continue
        if value != field.get_default(call_default_factory=True):
            env[env_name(name)] = _env_text(value)
    env.update(AKISNAP_LOG_FORMAT="json", AKISNAP_LOG_LEVEL="info")
    env.update(variables)
    return env


def _env_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Daemon]:
    """The daemon, in-process, joined to its group; stopped (and checked to exit 0) after."""
    daemon = Daemon(settings, metrics_port=0, health_host="127.0.0.1")
    task = asyncio.create_task(daemon.run(handle_signals=False))
    try:
        joined = asyncio.create_task(daemon.wait_joined(30.0))
        await asyncio.wait({joined, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            joined.cancel()
            raise AssertionError(f"daemon stopped before joining: {task.result()!r}")
        joined.result()
        yield daemon
    finally:
        daemon.stop()
        code = await asyncio.wait_for(task, settings.shutdown_grace_seconds + 10)
    assert code == 0


def watcher(kafka: Kafka, topics: Topics) -> OutcomeWatcher:
    made = clients(kafka)
    return OutcomeWatcher(
        made.bootstrap, result_topic=topics.results, dlq_topic=topics.dlq,
        security=dict(made.security),
    )  # fmt: skip


async def send(
    kafka: Kafka, topic: str, messages: Sequence[Message], timestamps: Sequence[int | None] = ()
) -> list[Any]:
    """Publish raw messages (up to 64 MiB; order kept within a partition), with their
    ``timestamps`` if given; their RecordMetadata."""
    producer = clients(kafka).producer(
        acks="all", compression_type="gzip", max_request_size=64 * MIB
    )
    await producer.start()
    try:
        now = int(time.time() * 1000)
        stamps = [now if t is None else t for t in list(timestamps) or [None] * len(messages)]
        sent = [
            await producer.send(
                topic, value=value, key=key, headers=headers or None, timestamp_ms=t
            )
            for (key, value, headers), t in zip(messages, stamps, strict=True)
        ]
        # aiokafka reports the first record's create time for every record of a batch.
        return [
            meta._replace(timestamp=t) if meta.timestamp_type == 0 else meta
            for meta, t in zip(await asyncio.gather(*sent), stamps, strict=True)
        ]
    finally:
        await producer.stop()


async def create_topics(
    kafka: Kafka | AIOKafkaAdminClient, topics: Topics, partitions: int = 4,
    request_partitions: int | None = None,
) -> Topics:  # fmt: skip
    """Create ``topics`` (the request topic with ``request_partitions`` if given)."""
    wanted = [
        NewTopic(topics.requests, request_partitions or partitions, 1),
        NewTopic(topics.results, partitions, 1),
        NewTopic(topics.dlq, partitions, 1),
    ]
    if isinstance(kafka, AIOKafkaAdminClient):
        await kafka.create_topics(wanted)
        return topics
    admin = clients(kafka).admin()
    await admin.start()
    try:
        await admin.create_topics(wanted)
    finally:
        await admin.close()
    return topics


def as_messages(requests: Sequence[tuple[str, bytes, bytes]]) -> list[Message]:
    """(request id, key, value) requests as messages without headers."""
    return [(key, value, []) for _, key, value in requests]


def inline_request(
    collection: str, rows: int = 20, dim: int = 8, seed: int = 0, request_id: str | None = None
) -> tuple[str, bytes, bytes]:
    rid = request_id or str(uuid.uuid4())
    key, value = build_request(
        collection, InlineSource(random_documents(rows, dim, seed=seed)), request_id=rid
    )
    return rid, key, value


async def read_topic(
    kafka: Kafka, topic: str, count: int | None = None, within: float = 60
) -> list[Any]:
    """The records of ``topic`` from its beginning, each partition in order: the first
    ``count`` (fewer if no more came within ``within`` seconds), or without ``count`` every
    record up to the topic's end as it is now."""
    admin = clients(kafka).admin()
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, f"cannot describe topic {topic}: {described}"
    tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = clients(kafka).consumer(group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(sorted(tps))
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps) if count is None else {}
        records: list[Any] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if count is None:
                if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    return records
            elif len(records) >= count:
                return records
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
        assert count is not None, f"could not read {topic} to its end in {within:.0f}s"
        return records
    finally:
        await consumer.stop()


async def committed_total(admin: AIOKafkaAdminClient, group_id: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group_id)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


async def snapshot_ids(settings: Settings, collection: str | None = None) -> list[str]:
    store = open_store(settings.store, settings.s3_options())
    try:
        return [meta.snapshot_id for meta in await Catalog(store).list(collection)]
    finally:
        await store.close()


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as err:
        return err.code


SAMPLE_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")


def sample(of: Daemon | Metrics, name: str, **labels: str) -> float:
    """A metric's value: 0 for a labelled child not made yet; a name the registry does not
    know fails (so a misspelt name cannot pass for a zero)."""
    registry = (of.metrics if isinstance(of, Daemon) else of).registry
    value = registry.get_sample_value(name, labels)
    if value is not None:
        return value
    families = {family.name for family in registry.collect()}
    base = next((name.removesuffix(s) for s in SAMPLE_SUFFIXES if name.endswith(s)), name)
    assert name in families or base in families, f"no metric {name}"
    return 0.0


async def until(condition: Callable[[], Any], within: float, what: str | Callable[[], str]) -> None:
    """Poll ``condition`` (a function or a coroutine function) until it holds; fail after
    ``within`` seconds, saying ``what`` was awaited."""
    deadline = time.monotonic() + within
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what if isinstance(what, str) else what()}"
            )
        await asyncio.sleep(0.05)


def shutdown_seconds(log: str) -> float:
    """How long the last shutdown in an `akisnap run` JSON log took by the daemon's own clock,
    from `daemon.signal` to `daemon.stopped` (process start-up and exit, and the test's
    scheduling, left out)."""
    stamps: dict[str, datetime] = {}
    for line in log.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") in ("daemon.signal", "daemon.stopped"):
                stamps[event["event"]] = datetime.fromisoformat(event["timestamp"])
    assert len(stamps) == 2, f"no complete shutdown in the log: {sorted(stamps)}"
    return (stamps["daemon.stopped"] - stamps["daemon.signal"]).total_seconds()


class TcpProxy:
    """A loopback TCP forwarder that can be switched off (connections refused) and on."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").partition(":")
        self._target = (host, int(port.rstrip("/")))
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._writers.difference_update((writer, up_writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def switched_proxy(target: str) -> AsyncIterator[TcpProxy]:
    """A started TCP proxy in front of ``target`` that the test can switch off and on."""
    proxy = TcpProxy(target)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def s3_settings(
    bootstrap: str, topics: Topics, tmp_path: Path, s3: S3Service, endpoint: str | None = None,
    **more: Any,
) -> Settings:  # fmt: skip
    """settings_for with a fresh prefix on the S3 server (through ``endpoint`` if given)."""
    return settings_for(
        bootstrap, topics, tmp_path,
        store=f"s3://{s3.bucket}/tests/{uuid.uuid4().hex}",
        s3_endpoint=endpoint or s3.endpoint, s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key, s3_region=s3.region, **more,
    )  # fmt: skip


class Answers503:
    """An S3 endpoint that answers every request 503 ServiceUnavailable (a transient failure
    that does not pass): what an overloaded S3 does, unlike one that cannot be reached."""

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Answers503:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    async def _answer(request: web.Request) -> web.Response:
        await request.read()
        body = "<Error><Code>ServiceUnavailable</Code><Message>overloaded</Message></Error>"
        return web.Response(status=503, text=body, content_type="application/xml")
