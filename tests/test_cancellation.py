"""Cancelling a request really stops its work: the encoding thread stops and deletes its spool
parts; parts already uploaded are left only where `prune --orphans` finds them.

Both are held deterministically: the encoding is fed an endless source (it can only end by
seeing the cancel flag), the upload blocks on an event until it is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.demo import random_documents
from handlers.create import SnapshotCreator
from handlers.encode import Encoder
from handlers.job import InlineSource, SnapshotJob
from handlers.layout import is_metadata_key
from handlers.model import DocumentBatch
from handlers.retention import remove_orphans
from handlers.sources import OpenedSource
from handlers.stores.local import LocalStore
from tests.support import unit_vectors

DIM = 16


def endless(started: threading.Event) -> Iterator[DocumentBatch]:
    """Batches forever; ``started`` once the encoder took at least three (the prefetch queue
    holds two), so it finished adding the first and its part file exists."""
    n = 0
    while True:
        n += 1
        if n == 6:
            started.set()
        yield DocumentBatch.from_arrays(unit_vectors(500, DIM, seed=n))


async def test_cancelled_encoding_stops_and_leaves_no_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    encoder = Encoder(spool, part_size_bytes=1 << 20)
    job = SnapshotJob(collection_id="c", request_id="r-cancel", source=InlineSource(()))
    started = threading.Event()
    task = asyncio.create_task(encoder(job, OpenedSource(endless(started), "endless")))
    await asyncio.to_thread(started.wait)
    assert list(spool.iterdir()), "the encoding wrote no part yet"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)  # an encoding that ignores the flag never ends
    assert list(spool.iterdir()) == []


class _StallingStore(LocalStore):
    """Stores the first part, then blocks every other put until cancelled."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.first_stored = asyncio.Event()

    async def put_file(self, key: str, path: Path, *, sha256_hex: str) -> None:
        if not self.first_stored.is_set():
            await super().put_file(key, path, sha256_hex=sha256_hex)
            self.first_stored.set()
            return
        await asyncio.Event().wait()


async def test_cancelled_upload_leaves_only_orphans_prune_removes(tmp_path: Path) -> None:
    store = _StallingStore(tmp_path / "store")
    creator = SnapshotCreator(store, source_roots=[], part_size_bytes=1 << 20)
    docs = random_documents(4000, 128, seed=1)  # three parts of 1 MiB
    job = SnapshotJob(collection_id="c", request_id="r-up", source=InlineSource(docs))
    task = asyncio.create_task(creator(job))
    await store.first_stored.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    keys = [info.key async for info in store.list("")]
    assert keys, "the first part should be in the store"
    assert not any(is_metadata_key(key) for key in keys)
    assert not [p for p in store.spool_dir().rglob("*") if p.is_file()], "spool left over"
    removed = await remove_orphans(store, grace=timedelta(0))
    assert [key for orphan in removed.removed for key in orphan.keys] == sorted(keys)
    assert [info.key async for info in store.list("")] == []
