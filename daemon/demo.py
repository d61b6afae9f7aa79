"""``akisnap demo``: the whole loop on this machine, end to end, with a summary a person reads.

It needs the local Kafka broker of ``make services`` (``make demo`` starts it and exports
``AKISNAP_KAFKA_BOOTSTRAP``). The daemon runs in-process with a local-directory store under
``./demo-output/snapshots`` and its own consumer group, which starts at the current end of the
request topic (so old requests on the shared topic are not replayed into the demo). The demo
publishes three inline requests, one request by URI of a Parquet export of real embeddings and
one bad request, waits for the five outcomes on the result and dead-letter topics, and prints
what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from daemon import sample_data
from daemon.app import Daemon
from daemon.cli.common import fail, hide_kafka_client_logs, human_bytes, table
from daemon.dead_letters.letter import H_ATTEMPTS, H_CLASS, H_MESSAGE, H_OFFSET, H_STAGE
from daemon.events import REQUEST_SCHEMA, build_request
from daemon.exit_codes import ENVIRONMENT
from daemon.kafka import KafkaClients
from daemon.logging import configure_logging
from daemon.outcomes import Outcome, OutcomeWatcher, topic_partitions
from daemon.send_requests import publish
from daemon.settings import BOOTSTRAP_HINT, Settings
from handlers.job import InlineSource, UriSource
from handlers.model import DocumentBatch

EXPORT_ROWS = 3000
INLINE_REQUESTS = 3
INLINE_ROWS, INLINE_DIM = 200, 384
COLLECTION = "demo-products"
EXPORT_COLLECTION = "demo-pypi"
KAFKA_CHECK_SECONDS = 20.0


@dataclass(frozen=True)
class Sent:
    name: str
    request_id: str
    collection_id: str
    expect: str  # "created" or "dead_lettered"
    published_at: float


async def run_demo(args: argparse.Namespace) -> int:
    configure_logging("console", "error")
    hide_kafka_client_logs()  # an unreachable broker is reported below, in one line
    output: Path = args.output.resolve()
    snapshots, exports = output / "snapshots", output / "exports"
    snapshots.mkdir(parents=True, exist_ok=True)
    exports.mkdir(parents=True, exist_ok=True)
    settings = Settings.load(
        getattr(args, "config", None),
        store=snapshots.as_uri(),
        exports_root=exports.as_uri(),
        group_id=f"akisnap-demo-{uuid.uuid4().hex[:12]}",
        log_format="console",
        log_level="error",
        retry_attempts=3,
        retry_base_seconds=0.2,
        retry_cap_seconds=2.0,
        shutdown_grace_seconds=10.0,
    )
    print(f"akisnap demo: Kafka at {settings.kafka_bootstrap}, store {snapshots}")
    if not await _kafka_answers(settings):
        fail(
            f"no Kafka broker answers at {settings.kafka_bootstrap}: {BOOTSTRAP_HINT}, or run "
            "`make services` and source .services.env (or just `make demo`)",
            ENVIRONMENT,
        )
    export_uri, export_note = _write_export(exports)
    print(f"  export: {export_note}")
    await _start_group_at_end(settings)

    daemon = Daemon(settings, metrics_port=_metrics_port(), health_host="127.0.0.1")
    running = asyncio.create_task(daemon.run(handle_signals=False), name="akisnap-demo-daemon")
    try:
        await _until_joined(daemon, running)
        port = daemon.metrics_port
        async with OutcomeWatcher.for_settings(settings) as watcher:
            sent = await _publish_requests(settings, export_uri)
            print(f"  published {len(sent)} requests; waiting up to {args.timeout:g}s ...")
            found = await watcher.wait_for([s.request_id for s in sent], args.timeout)
        metrics_text = await asyncio.to_thread(_scrape, port)
    finally:
        daemon.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, settings.shutdown_grace_seconds + 5)
    return _summarise(
        sent=sent,
        found=found,
        settings=settings,
        snapshots=snapshots,
        port=port,
        metrics_text=metrics_text,
    )


def random_documents(rows: int, dimension: int, *, seed: int | None = None) -> list[dict[str, Any]]:
    """``rows`` documents with random UUID ids and unit-normal float32 vectors.

    Values are written in their shortest float32 form (``0.05306919``, not the 17 digits of
    the float64 they widen to): the same float32 comes back, in half the bytes."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, dimension)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    texts = matrix.astype(str)
    ids = rng.integers(0, 256, size=(rows, 16), dtype=np.uint8)
    return [
        {
            "id": str(uuid.UUID(bytes=bytes(ids[i]), version=4)),
            "external_id": f"random-{i}",
            "vector": [float(text) for text in texts[i]],
            "metadata": {"row": i},
        }
        for i in range(rows)
    ]


# -- steps ----------------------------------------------------------------------------------


async def _kafka_answers(settings: Settings) -> bool:
    probe = KafkaClients.of(settings).consumer(request_timeout_ms=int(KAFKA_CHECK_SECONDS * 1000))
    try:
        await asyncio.wait_for(probe.start(), KAFKA_CHECK_SECONDS)
        topics = await probe.topics()
    except (KafkaError, TimeoutError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await probe.stop()
    missing = {settings.request_topic, settings.result_topic, settings.dlq_topic} - set(topics)
    if missing:
        fail(f"topics missing on the broker: {', '.join(sorted(missing))}", ENVIRONMENT)
    return True


def _write_export(exports: Path) -> tuple[str, str]:
    """3000 real embeddings from the repository's sample (or random ones) as Parquet."""
    target = exports / "pypi-summaries-3000.parquet"
    table = sample_data.real_embeddings(EXPORT_ROWS)
    if table is not None:
        note = (
            f"{EXPORT_ROWS} real MiniLM embeddings (384-d) of PyPI summaries from "
            f"{sample_data.SAMPLE_EMBEDDINGS.name}"
        )
    else:
        rng = np.random.default_rng(7)
        matrix = rng.standard_normal((EXPORT_ROWS, INLINE_DIM)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        batch = DocumentBatch.from_arrays(matrix, id_seed="akisnap-demo")
        table = pa.Table.from_batches([batch.record_batch])
        note = (
            f"{sample_data.SAMPLE_EMBEDDINGS} is absent (not run from the repository): "
            f"{EXPORT_ROWS} random unit vectors ({INLINE_DIM}-d) instead"
        )
    pq.write_table(table, target)
    return target.as_uri(), f"{note} -> {target}"


async def _start_group_at_end(settings: Settings) -> None:
    """Commit the request topic's end offsets for the demo's fresh group."""
    topic = settings.request_topic
    security = settings.kafka_security_kwargs()
    partitions = (await topic_partitions(settings.kafka_bootstrap, [topic], security))[topic]
    consumer = KafkaClients.of(settings).consumer(
        group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.request_topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.commit({tp: int(offset) for tp, offset in ends.items()})
    finally:
        await consumer.stop()


async def _until_joined(daemon: Daemon, running: asyncio.Task[int]) -> None:
    joined = asyncio.create_task(daemon.wait_joined(60.0))
    await asyncio.wait({joined, running}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        joined.cancel()
        running.result()  # raises what stopped it
        raise RuntimeError("the daemon stopped before joining its group")
    joined.result()


async def _publish_requests(settings: Settings, export_uri: str) -> list[Sent]:
    messages: list[tuple[bytes, bytes]] = []
    plan: list[tuple[str, str, str, str]] = []
    for index in range(INLINE_REQUESTS):
        request_id = str(uuid.uuid4())
        documents = random_documents(INLINE_ROWS, INLINE_DIM, seed=index)
        messages.append(
            build_request(
                COLLECTION,
                InlineSource(documents),
                request_id=request_id,
                labels={"demo": "inline"},
            )
        )
        plan.append(
            (f"inline #{index + 1} ({INLINE_ROWS}×{INLINE_DIM})", request_id, COLLECTION, "created")
        )
    request_id = str(uuid.uuid4())
    messages.append(
        build_request(
            EXPORT_COLLECTION,
            UriSource(export_uri, "parquet"),
            request_id=request_id,
            labels={"demo": "export"},
        )
    )
    plan.append((f"export ({EXPORT_ROWS} rows, by URI)", request_id, EXPORT_COLLECTION, "created"))
    request_id = str(uuid.uuid4())
    messages.append(_bad_request(request_id))
    plan.append(("bad: a NaN in a vector", request_id, COLLECTION, "dead_lettered"))

    placed = await publish(settings, messages)
    return [
        Sent(name, rid, coll, expect, where.acked_at)
        for (name, rid, coll, expect), where in zip(plan, placed, strict=True)
    ]


def _bad_request(request_id: str) -> tuple[bytes, bytes]:
    """A request whose third document has a NaN: JSON the parser accepts, the model refuses."""
    documents = random_documents(4, 8, seed=99)
    values = [repr(float(v)) for v in documents[2]["vector"]]
    values[1] = "NaN"
    documents[2]["vector"] = "@VECTOR@"
    body = {
        "schema": REQUEST_SCHEMA,
        "request_id": request_id,
        "collection_id": COLLECTION,
        "source": {"documents": documents},
    }
    text = json.dumps(body).replace('"@VECTOR@"', "[" + ", ".join(values) + "]")
    return COLLECTION.encode(), text.encode()


def _metrics_port() -> int:
    configured = os.environ.get("AKISNAP_METRICS_PORT")
    return int(configured) if configured and configured.isdigit() else 0


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
            return text
    except OSError:
        return ""


# -- the summary ----------------------------------------------------------------------------


def _summarise(
    *,
    sent: list[Sent],
    found: dict[str, Outcome],
    settings: Settings,
    snapshots: Path,
    port: int,
    metrics_text: str,
) -> int:
    problems: list[str] = []
    rows: list[list[str]] = []
    made = vectors = stored = as_json = raw = 0
    letters: list[tuple[Sent, Outcome]] = []
    for item in sent:
        outcome = found.get(item.request_id)
        if outcome is None:
            problems.append(f"{item.name}: no outcome within the timeout")
            rows.append([item.name, "-", "MISSING", "", "", "", "", ""])
            continue
        if outcome.status != item.expect and not (
            item.expect == "created" and outcome.status == "duplicate"
        ):
            problems.append(f"{item.name}: expected {item.expect}, got {outcome.status}")
        latency = f"{outcome.seen_at - item.published_at:.2f}s"
        result = outcome.result
        if result is None:
            letters.append((item, outcome))
            rows.append([item.name, item.collection_id, outcome.status, "", "", "", "", latency])
            continue
        json_bytes = _json_equivalent(result.metadata_uri, snapshots)
        made += 1
        vectors += result.vector_count
        raw += 4 * result.vector_count * result.dimension
        stored += result.total_bytes
        as_json += json_bytes
        ratio = f"{json_bytes / result.total_bytes:.1f}×" if result.total_bytes else "-"
        rows.append(
            [
                item.name,
                item.collection_id,
                outcome.status,
                str(result.vector_count),
                human_bytes(result.total_bytes),
                human_bytes(json_bytes) if json_bytes else "?",
                ratio,
                latency,
            ]
        )

    print()
    header = [
        "request",
        "collection",
        "outcome",
        "vectors",
        "stored",
        "as JSON",
        "smaller",
        "latency",
    ]
    print(table([dict(zip(header, row, strict=True)) for row in rows], indent="  "))
    print()
    if as_json and stored:
        print(
            f"Snapshots made: {made}, {vectors:,} vectors, {human_bytes(stored)} stored "
            f"against {human_bytes(as_json)} as JSON ({as_json / stored:.1f}× smaller) "
            f"and {human_bytes(raw)} as raw float32 ({raw / stored:.2f}× smaller: real "
            f"embeddings barely compress), in {snapshots}"
        )
    else:
        print(f"Snapshots made: {made}, {vectors:,} vectors, {human_bytes(stored)} stored")
    for item, outcome in letters:
        headers = outcome.dead_letter.headers if outcome.dead_letter else []
        text = {name: raw.decode("utf-8", "replace") for name, raw in headers}
        print(
            f"Dead letter ({item.name}) on {settings.dlq_topic}: stage "
            f"{text.get(H_STAGE, '?')}, {text.get(H_CLASS, '?')}: "
            f"{text.get(H_MESSAGE, '?')} (original offset {text.get(H_OFFSET, '?')}, "
            f"attempts {text.get(H_ATTEMPTS, '?')})"
        )
    print(
        f"Metrics: http://127.0.0.1:{port}/metrics while the demo ran "
        f"(`akisnap run` serves them on port {settings.metrics_port}); at the end:"
    )
    for line in _metric_lines(metrics_text):
        print(f"  {line}")
    print(f"Try: akisnap snapshots list --store {snapshots.as_uri()}")
    if problems:
        print()
        for problem in problems:
            print(f"demo FAILED: {problem}")
        return 1
    return 0


def _json_equivalent(metadata_uri: str, snapshots: Path) -> int:
    """The snapshot's JSON-equivalent size, from its metadata file in the local store."""
    prefix = snapshots.as_uri().rstrip("/") + "/"
    if not metadata_uri.startswith(prefix):
        return 0
    try:
        body: dict[str, Any] = json.loads((snapshots / metadata_uri[len(prefix) :]).read_bytes())
    except (OSError, ValueError):
        return 0
    return int(body.get("json_equivalent_bytes") or 0)


def _metric_lines(text: str) -> list[str]:
    wanted = (
        "akisnap_requests_total{",
        "akisnap_dlq_messages_total{",
        "akisnap_vectors_total ",
        "akisnap_snapshot_bytes_total ",
        "akisnap_request_duration_seconds_count",
        "akisnap_request_duration_seconds_sum",
    )
    lines = []
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            number = float(value)
            if number and not math.isnan(number):
                lines.append(f"{name} {number:g}")
    return lines
