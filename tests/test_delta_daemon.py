"""As a user would run it: a nightly full snapshot, then hourly change sets, all through the
daemon over Kafka; the latest restores to the collection as it is, bit for bit, and compact and
prune --keep-last leave every kept snapshot restorable."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from daemon.demo import random_documents
from daemon.events import build_request, parse_request
from handlers.job import InlineSource
from handlers.model import DocumentBatch
from tests.daemon_support import (
    read_topic,
    running,
    sample,
    send,
    settings_for,
    snapshot_ids,
    watcher,
)
from tests.support import CollectionModel, TopicFactory, run_cli

Document = dict[str, Any]
COLLECTION = "nightly"
hours = itertools.count()


class Collection(CollectionModel):
    def __init__(self) -> None:
        super().__init__("id")

    def expected(self) -> Any:
        return DocumentBatch.from_documents(list(self.rows.values())).record_batch


def stamped(documents: list[Document]) -> list[Document]:
    hour = next(hours)
    return [{**doc, "inserted_at": f"2026-11-30T{hour % 24:02d}:00:00+00:00"} for doc in documents]


def request(documents: list[Document], **delta: Any) -> tuple[str, bytes, bytes]:
    rid = str(uuid.uuid4())
    key, value = build_request(COLLECTION, InlineSource(documents), request_id=rid, **delta)
    return rid, key, value


async def cli(*argv: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop: off this one."""
    return await asyncio.to_thread(run_cli, list(argv))


async def restored(store: str, snapshot_id: str, out: Path) -> Any:
    code, _, err = await cli(
        "snapshots", "restore", snapshot_id, "--store", store, "--out", str(out)
    )
    assert code == 0, err
    return pq.read_table(out).combine_chunks().to_batches()[0]


async def test_nightly_full_then_hourly_change_sets_through_the_daemon(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    model = Collection()
    nightly = stamped(random_documents(300, 16, seed=1))
    model.write(nightly)
    first = list(model.rows)
    hourly: list[tuple[list[Document], list[str]]] = [
        (stamped([{**model.rows[first[0]], "metadata": {"row": "edited"}}]), first[5:9]),
        (stamped(random_documents(4, 16, seed=2)), []),
        ([], first[20:23]),  # a write batch that only deleted
    ]
    messages = [request(nightly)]
    for upserts, deletes in hourly:
        messages.append(request(upserts, base="latest", deletes=deletes))
        model.write(upserts)
        model.delete(deletes)
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path, compact_after_deltas=3)
    async with running(settings) as daemon, watcher(kafka_bootstrap, topics) as outcomes:
        await send(kafka_bootstrap, topics.requests, [(k, v, []) for _, k, v in messages])
        found = await outcomes.wait_for([rid for rid, _, _ in messages], 60)
        assert sample(daemon, "akisnap_compactions_total", outcome="compacted") == 1
        assert sample(daemon, "akisnap_snapshots_total", kind="delta") == 3
        saved = sample(daemon, "akisnap_delta_bytes_saved_total")
    results = [found[rid].result for rid, _, _ in messages]
    assert all(result is not None and result.status == "created" for result in results), found
    full, *deltas = [result for result in results if result is not None]
    assert full.kind == "full"
    assert [(d.kind, d.rows_added, d.rows_changed, d.rows_deleted) for d in deltas] == [
        ("delta", 0, 1, 4),
        ("delta", 4, 0, 0),
        ("delta", 0, 0, 3),
    ]
    assert [d.base for d in deltas] == [full.snapshot_id] + [d.snapshot_id for d in deltas[:-1]]
    assert all(d.bytes_written < full.bytes_written for d in deltas)
    assert saved > 2 * full.bytes_written  # three deltas, each far smaller than a full

    latest = deltas[-1].snapshot_id
    assert (await restored(settings.store, latest, tmp_path / "latest.parquet")).equals(
        model.expected()
    )

    # The daemon compacted the third delta's chain itself: compact finds that snapshot.
    code, out, err = await cli("snapshots", "compact", latest, "--store", settings.store, "--json")
    assert code == 0, err
    compacted = json.loads(out)["snapshot_id"]
    assert len(await snapshot_ids(settings, COLLECTION)) == 5
    code, _, err = await cli(
        "snapshots", "prune", COLLECTION, "--keep-last", "1", "--store", settings.store, "--yes"
    )
    assert code == 0, err
    code, out, err = await cli("snapshots", "list", COLLECTION, "--store", settings.store, "--json")
    assert code == 0, err
    kept = [row["snapshot_id"] for row in json.loads(out)]
    assert kept == [compacted]
    again = await restored(settings.store, compacted, tmp_path / "compacted.parquet")
    assert again.equals(model.expected())


async def test_request_verb_publishes_a_change_set(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`akisnap request --base latest --deletes FILE` sends what the daemon reads as one."""
    topics = await make_topics()
    monkeypatch.setenv("AKISNAP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("AKISNAP_REQUEST_TOPIC", topics.requests)
    gone = [str(uuid.uuid4()), str(uuid.uuid4())]
    (tmp_path / "gone.txt").write_text("\n".join(gone) + "\n\n")
    code, _, err = await cli(
        "request", "--collection", "c", "--random", "3,4",
        "--base", "latest", "--deletes", str(tmp_path / "gone.txt"),
    )  # fmt: skip
    assert code == 0, err
    [record] = await read_topic(kafka_bootstrap, topics.requests, 1)
    job = parse_request(record.value, max_bytes=len(record.value))
    assert (job.base, job.deletes) == ("latest", tuple(gone))
