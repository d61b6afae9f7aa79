"""``python -m bench.profile_small``: where a small request's time goes, in process.

The daemon's work for a small request without Kafka: the duplicate check, then create
(source → encode → upload → verify → commit) of a 1k × 384 export by URI, ``CONCURRENCY`` at
once, on the S3 server of ``.services.env`` (``--local`` for a local-directory store), under
pyinstrument (the event loop's thread: encodes run in worker threads and show there only as
waits). Prints requests per second, CPU ms per request (all threads, profiler overhead
included) and the top of the profile.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.daemon_e2e import load_services
from bench.exports import write_random_export
from handlers.create import SnapshotCreator
from handlers.job import SnapshotJob, UriSource
from handlers.stores import ObjectStore, open_store

CONCURRENCY = 8
WARMUP = 16


async def run(store: ObjectStore, export: Path, count: int, profiler: Any) -> tuple[float, float]:
    creator = SnapshotCreator(store, source_roots=[export.parent.as_uri()])
    source = UriSource(export.as_uri(), "parquet")
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> None:
        job = SnapshotJob(f"profile-{index % 64}", str(uuid.uuid4()), source)
        async with slots:
            if await creator.existing(job) is None:
                await creator(job)

    await asyncio.gather(*(one(i) for i in range(WARMUP)))
    began, cpu_began = time.perf_counter(), time.process_time()
    profiler.start()
    await asyncio.gather(*(one(i) for i in range(count)))
    profiler.stop()
    return time.perf_counter() - began, time.process_time() - cpu_began


def main(argv: list[str] | None = None) -> int:
    from pyinstrument import Profiler  # bench-only: imported when profiling

    parser = argparse.ArgumentParser(prog="python -m bench.profile_small")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--local", action="store_true", help="a local-directory store")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="akisnap-profile-") as temp:
        export = write_random_export(Path(temp) / "small.parquet", 1000, 384, seed=5)
        if args.local:
            uri = (Path(temp) / "store").as_uri()
            store = open_store(uri)
        else:
            services = load_services()
            if services is None:
                raise SystemExit("no services: run `make services` (or pass --local)")
            uri = f"s3://{services.bucket}/profile-{uuid.uuid4().hex[:10]}"
            store = open_store(uri, services.s3_options())
        profiler = Profiler(interval=0.001, async_mode="enabled")
        seconds, cpu = asyncio.run(_run_and_clean(store, export, args.requests, profiler))
    per_request = cpu * 1000 / args.requests
    print(
        f"store {uri}: {args.requests} small requests (1,000 × 384 by URI), {CONCURRENCY} at once"
    )
    print(f"{args.requests / seconds:.0f} req/s; CPU {per_request:.1f} ms per request (profiled)")
    print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])
    return 0


async def _run_and_clean(
    store: ObjectStore, export: Path, count: int, profiler: Any
) -> tuple[float, float]:
    """(seconds, CPU seconds) of the timed requests; the warm-up and clean-up unprofiled."""
    try:
        return await run(store, export, count, profiler)
    finally:
        keys = [info.key async for info in store.list("")]
        for key in keys:
            await store.delete(key)
        await store.close()


if __name__ == "__main__":
    raise SystemExit(main())
