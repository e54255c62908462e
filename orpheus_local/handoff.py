"""Handoff: items from a producer thread to one asyncio consumer, ended once, cancellable by the consumer.

The engine's token streams and the codec's audio streams are both this: a worker thread put()s items
and finally finish()es (with an error, or not); the event loop reads them with `async for`, and may
cancel() when its client leaves, which the producer learns through on_cancel or `cancelled`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
_END = object()


class Handoff(Generic[T]):
    """Producer side (any thread): put(), finish(). Consumer side (the loop that made it): `async for`,
    cancel(). Items and the end travel through the loop's own queue, so no lock is needed: the error
    is written before the end marker is scheduled, and read after it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, on_cancel: Callable[[], None] | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self.cancelled = threading.Event()
        self.error: BaseException | None = None
        self._on_cancel = on_cancel
        self._queue: asyncio.Queue = asyncio.Queue()

    # --- producer side (any thread) ---
    def put(self, item: T) -> None:
        self._send(item)

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self._send(_END)

    def _send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            self.cancelled.set()

    # --- consumer side (the event loop) ---
    def cancel(self) -> None:
        """The consumer leaves: the producer may stop. Safe to call more than once, or after the end."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self._on_cancel is not None:
                self._on_cancel()

    def __aiter__(self):
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # later calls end too
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        return item
