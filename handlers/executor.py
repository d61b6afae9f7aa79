"""The bounded executors for CPU- and disk-bound steps, so the event loop never runs them.

- :func:`run_blocking`: one small thread pool for the whole process (``asyncio.to_thread``
  would use the loop's default pool, sized for I/O waits, not for work): writing a downloaded
  export to disk, hashing what is read back from the store, building a small batch. Its size
  is the number of cores, at least two. Good for work that releases the GIL (I/O, hashlib,
  pyarrow) or is short.
- :func:`run_in_process`: one worker process, for work that holds the GIL for long in one C
  call: ``json.loads`` of a 15 MB request takes about a second, and a thread running it stops
  the loop just the same. Arguments and results cross as pickles (bytes and Arrow buffers:
  copies of a few milliseconds).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="akisnap-work"
    )


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the bounded pool; the loop stays free meanwhile."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(), call)


@functools.cache
def _process_pool() -> ProcessPoolExecutor:
    # spawn, not fork: the parent runs an event loop and threads, which a fork would copy.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


async def run_in_process(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the worker process (``fn`` must be a module-level function;
    arguments, result and raised error must pickle)."""
    call = functools.partial(fn, *args, **kwargs)
    # Submitting may start the worker (a fork and exec of this big process: 100 ms and
    # more), so it is done from a thread as well.
    future = await asyncio.to_thread(_process_pool().submit, call)
    return await asyncio.wrap_future(future)


async def start_process_worker() -> None:
    """Start the worker process now (the daemon does at start): starting it forks this
    process while holding the GIL, which would stall the loop in the middle of work."""
    await run_in_process(os.getpid)
