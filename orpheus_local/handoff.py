"""Handoff: items from a producer thread to one asyncio consumer, ended once, cancellable by the consumer.

The engine's token streams and the codec's audio streams are both this: a worker thread puts items
and finally finishes (with an error, or not); the event loop reads them with `async for`, and may
cancel() when its client leaves, which the producer learns through on_cancel or `cancelled`.

A worker that serves many streams collects what one step made for all of them in a Delivery and
sends it with one thread hop, instead of one per stream: at hundreds of streams, waking the event
loop is a large part of the host's work. A consumer whose work on each item is short and
thread-safe may take the items on the producer's thread instead (on_item): only the end then
travels to the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """Producer side (any thread): put(), finish(), or a Delivery. Consumer side (the loop that made
    it): `async for`, cancel(). Items and the end are applied on the loop, so the consumer's state
    needs no lock: the error is written before the end is scheduled, and read after it arrives.

    on_item: takes each item on the producer's thread, in order, instead of `async for` (which then
    only waits for the end). Returning False, or raising, cancels the handoff and drops the items
    after it; what it raised ends `async for` once the producer has finished."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, on_cancel: Callable[[], None] | None = None,
                 on_item: Callable[[T], bool] | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self.cancelled = threading.Event()
        self.error: BaseException | None = None
        self._on_cancel = on_cancel
        self._on_item = on_item
        self._item_error: Exception | None = None  # written by the producer's thread before the end
        self._items: deque[T] = deque()
        self._ended = False
        self._waiter: asyncio.Future | None = None

    # --- producer side (any thread) ---
    def put(self, item: T) -> None:
        Delivery().put(self, item).send()

    def finish(self, error: BaseException | None = None) -> None:
        Delivery().finish(self, error).send()

    def _take(self, item: T) -> None:
        """on_item's turn, on the producer's thread."""
        if self.cancelled.is_set():
            return
        try:
            more = self._on_item(item)
        except Exception as exc:
            self._item_error, more = exc, False
        if not more:
            self.cancel()

    # --- on the loop (a Delivery applies these) ---
    def _append(self, item: T) -> None:
        self._items.append(item)
        self._notify()

    def _end(self) -> None:
        self._ended = True
        self._notify()

    def _notify(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- consumer side (the event loop) ---
    def cancel(self) -> None:
        """The consumer leaves: the producer may stop. Safe to call more than once, or after the end,
        from the loop or (through on_item) from the producer's thread."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self._on_cancel is not None:
                self._on_cancel()

    def __aiter__(self):
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._ended:  # later calls end too
                if error := self.error or self._item_error:
                    raise error
                raise StopAsyncIteration
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Delivery:
    """Items and ends for many handoffs, sent to each one's event loop in one thread hop by send().
    Built and sent by one producer thread; the handoffs see them in the order they were added."""

    def __init__(self):
        self._by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Handoff, object, bool]]] = {}

    def put(self, handoff: Handoff, item) -> "Delivery":
        if handoff._on_item is not None:
            handoff._take(item)  # now, on this thread
        else:
            self._by_loop.setdefault(handoff.loop, []).append((handoff, item, False))
        return self

    def finish(self, handoff: Handoff, error: BaseException | None = None) -> "Delivery":
        handoff.error = error  # read by the consumer only after the end arrives
        self._by_loop.setdefault(handoff.loop, []).append((handoff, None, True))
        return self

    def send(self) -> None:
        for loop, entries in self._by_loop.items():
            try:
                loop.call_soon_threadsafe(_apply, entries)
            except RuntimeError:  # the consumers' event loop is closed: nobody is listening
                for handoff, _, _ in entries:
                    handoff.cancelled.set()
        self._by_loop = {}


def _apply(entries: list[tuple[Handoff, object, bool]]) -> None:
    for handoff, item, end in entries:
        if end:
            handoff._end()
        else:
            handoff._append(item)
