"""TokenStream: hands one request's tokens from the engine thread to an asyncio consumer."""

from __future__ import annotations

import asyncio
import threading

_END = object()


class TokenStream:
    """Produced by an engine thread with put()/finish(); consumed with `async for ids in stream`.

    The consumer's cancel() (client gone) sets `cancelled`, which the engine polls between steps.
    """

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None = None):
        self.request_id = request_id
        self.loop = loop or asyncio.get_running_loop()
        self.cancelled = threading.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.error: BaseException | None = None
        # Why the generation ended, once it has: "stop" (end_of_speech) or "length" (its token cap).
        self.finish_reason: str | None = None

    # --- producer side (any thread) ---
    def put(self, ids: list[int]) -> None:
        self._send(ids)

    def finish(self, error: BaseException | None = None, reason: str | None = None) -> None:
        self.error, self.finish_reason = error, reason
        self._send(_END)

    def _send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is gone: nobody is listening
            self.cancelled.set()

    # --- consumer side (event loop) ---
    def cancel(self) -> None:
        self.cancelled.set()

    def __aiter__(self):
        return self

    async def __anext__(self) -> list[int]:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # later calls end too
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        return item
