"""The request's ``format`` field: the daemon writes AkiDB 2.0's own formats on request."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from daemon.demo import random_documents
from daemon.events import build_request
from handlers.akidb.sidecar import SIDECAR_FIELDS
from handlers.catalog import Catalog
from handlers.job import InlineSource, snapshot_id_for
from handlers.stores import open_store
from tests.daemon_support import running, send, settings_for, watcher
from tests.support import TopicFactory

COLLECTION = "019a9000-0000-7000-8000-0000000da7a0"


async def test_daemon_writes_akidb_formats(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """Requests with format akidb-parquet / akidb-json give results whose metadata URI is
    AkiDB's sidecar, and files at AkiDB's keys that list as akidb-*."""
    topics = await make_topics()
    settings = settings_for(kafka_bootstrap, topics, tmp_path)
    requests = {}
    for fmt in ("akidb-parquet", "akidb-json"):
        rid = str(uuid.uuid4())
        source = InlineSource(random_documents(30, 8, seed=len(requests)))
        requests[rid] = (fmt, build_request(COLLECTION, source, request_id=rid, format=fmt))
    async with running(settings), watcher(kafka_bootstrap, topics) as outcomes:
        await send(
            kafka_bootstrap,
            topics.requests,
            [(key, value, []) for _, (key, value) in requests.values()],
        )
        found = await outcomes.wait_for(list(requests), 30)
    store = open_store(settings.store)
    try:
        for rid, (fmt, _) in requests.items():
            result = found[rid].result
            assert result is not None and result.status == "created", found[rid]
            assert (result.format, result.vector_count) == (fmt, 30)
            sid = snapshot_id_for(COLLECTION, rid)
            sidecar = (
                f"snapshots/{sid}.meta.json"
                if fmt == "akidb-json"
                else f"snapshots/{COLLECTION}/{sid}.metadata.json"
            )
            assert result.metadata_uri == f"{settings.store.rstrip('/')}/{sidecar}"
            assert list(json.loads(await store.get_bytes(sidecar))) == list(SIDECAR_FIELDS)
        listed = {meta.snapshot_id: meta.format for meta in await Catalog(store).list()}
        assert listed == {
            snapshot_id_for(COLLECTION, rid): fmt for rid, (fmt, _) in requests.items()
        }
    finally:
        await store.close()
