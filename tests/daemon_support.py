"""Helpers for tests that run the daemon against the real broker and S3 server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from daemon.app import Daemon
from daemon.demo import random_documents
from daemon.events import build_request
from daemon.outcomes import OutcomeWatcher
from daemon.settings import Settings
from handlers.catalog import Catalog
from handlers.job import InlineSource
from handlers.stores import open_store
from tests.conftest import S3Service, Topics

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def settings_for(bootstrap: str, topics: Topics, tmp_path: Path, **overrides: Any) -> Settings:
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


def env_for(settings: Settings, metrics_port: int) -> dict[str, str]:
    """The environment of an `akisnap run` subprocess with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKISNAP_")}
    for name in (
        "kafka_bootstrap", "group_id", "request_topic", "result_topic", "dlq_topic", "store",
        "exports_root", "retry_attempts", "retry_base_seconds", "retry_cap_seconds",
        "shutdown_grace_seconds",
    ):  # fmt: skip
        env[f"AKISNAP_{name.upper()}"] = str(getattr(settings, name))
    env.update(AKISNAP_METRICS_PORT=str(metrics_port), AKISNAP_LOG_FORMAT="json")
    env["AKISNAP_LOG_LEVEL"] = "info"
    return env


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


def watcher(bootstrap: str, topics: Topics) -> OutcomeWatcher:
    return OutcomeWatcher(bootstrap, result_topic=topics.results, dlq_topic=topics.dlq)


async def send(bootstrap: str, topic: str, messages: Sequence[Message]) -> list[Any]:
    """Publish raw messages in order; their RecordMetadata."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", compression_type="gzip",
        max_request_size=4 * 1024 * 1024,
    )  # fmt: skip
    await producer.start()
    try:
        return [
            await producer.send_and_wait(topic, value=value, key=key, headers=headers or None)
            for key, value, headers in messages
        ]
    finally:
        await producer.stop()


def inline_request(
    collection: str, rows: int = 20, dim: int = 8, seed: int = 0, request_id: str | None = None
) -> tuple[str, bytes, bytes]:
    rid = request_id or str(uuid.uuid4())
    key, value = build_request(
        collection, InlineSource(random_documents(rows, dim, seed=seed)), request_id=rid
    )
    return rid, key, value


async def read_topic(bootstrap: str, topic: str, count: int, within: float) -> list[Any]:
    """The first ``count`` records of ``topic`` (all partitions, partition order kept)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + within
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


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


def sample(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


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


def s3_settings(
    bootstrap: str, topics: Topics, tmp_path: Path, s3: S3Service, endpoint: str, **more: Any
) -> Settings:
    return settings_for(
        bootstrap, topics, tmp_path,
        store=f"s3://{s3.bucket}/tests/{uuid.uuid4().hex}",
        s3_endpoint=endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
        s3_region=s3.region, **more,
    )  # fmt: skip


# -- the happy path, order, concurrency ---------------------------------------------------------


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
