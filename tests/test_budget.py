"""The byte budget of requests being worked on: large ones one at a time, small ones beside."""

from __future__ import annotations

import asyncio

from handlers.budget import ByteBudget

MIB = 1024 * 1024


async def test_large_requests_take_turns_and_small_ones_pass() -> None:
    seen: list[int] = []
    budget = ByteBudget(256 * MIB, seen.append)
    release_first = asyncio.Event()
    order: list[str] = []

    async def request(name: str, nbytes: int, until: asyncio.Event | None = None) -> None:
        async with budget.hold(nbytes):
            order.append(f"{name} in")
            if until is not None:
                await until.wait()
        order.append(f"{name} out")

    first = asyncio.create_task(request("large-1", 300 * MIB, release_first))
    await asyncio.sleep(0)
    second = asyncio.create_task(request("large-2", 300 * MIB))
    await asyncio.sleep(0)
    await request("small", 2 * MIB)  # not held up by the large one in progress
    assert order == ["large-1 in", "small in", "small out"]
    assert budget.held == budget.charge(300 * MIB) == 192 * MIB
    release_first.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["large-1 out", "large-2 in", "large-2 out"]
    assert budget.held == 0 and seen[-1] == 0 and max(seen) == 194 * MIB


async def test_cancelled_waiter_takes_nothing() -> None:
    budget = ByteBudget(10)
    gate = asyncio.Event()

    async def hold(nbytes: int) -> None:
        async with budget.hold(nbytes):
            await gate.wait()

    holder = asyncio.create_task(hold(7))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold(7))
    await asyncio.sleep(0)
    waiter.cancel()
    gate.set()
    await holder
    assert waiter.cancelled() and budget.held == 0
