"""Load shapes. Closed loop: a fixed number of requests in flight, each sender starting its next
request when the last one ends. Open loop: requests start at Poisson arrival times whatever the
server does. Both stop by themselves, after a request count or when their duration is up (requests
in flight then are awaited, each bounded by its own timeout)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")
Send = Callable[[int], Awaitable[T]]  # sends request number i and returns its result


async def closed_loop(send: Send, concurrency: int, requests: int | None = None,
                      duration: float | None = None, clock: Callable[[], float] = time.perf_counter) -> list[T]:
    """`concurrency` senders share the request numbers; results in request order."""
    _check_bound(requests, duration)
    deadline = None if duration is None else clock() + duration
    results: dict[int, T] = {}
    issued = 0

    async def sender() -> None:
        nonlocal issued
        while (requests is None or issued < requests) and (deadline is None or clock() < deadline):
            index, issued = issued, issued + 1
            results[index] = await send(index)

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return [results[i] for i in sorted(results)]


async def open_loop(send: Send, rate: float, requests: int | None = None, duration: float | None = None,
                    seed: int = 0, clock: Callable[[], float] = time.perf_counter,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> list[T]:
    """Requests arrive `rate` a second on average, gaps drawn from an exponential distribution.

    The arrival schedule comes from `seed`, so two runs offer exactly the same load. clock and
    sleep are the wall clock's unless a test drives time itself.
    """
    _check_bound(requests, duration)
    gaps = random.Random(seed)
    start = clock()
    due = start
    tasks: list[asyncio.Task] = []
    while requests is None or len(tasks) < requests:
        if duration is not None and due - start >= duration:
            break
        await sleep(max(0.0, due - clock()))
        tasks.append(asyncio.create_task(send(len(tasks))))
        due += gaps.expovariate(rate)
    return list(await asyncio.gather(*tasks))


def _check_bound(requests: int | None, duration: float | None) -> None:
    if (requests is None) == (duration is None):
        raise ValueError("give exactly one of requests and duration")
