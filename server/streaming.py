"""Responses that follow the client: streams that start with the first audio and stop when the
client goes away, and waits that are cancelled when it does."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, TypeVar

from fastapi import Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import ClientGone

T = TypeVar("T")


class LiveStreamResponse(Response):
    """Sends its chunks as they come, and stops at once when the client disconnects: its body
    iterator is closed however the response ends, so the generation behind it is cancelled.

    Starlette's StreamingResponse does the same through a task group per response; at hundreds of
    streams that machinery is a visible part of the host's work. Here one small watcher task waits
    for the disconnect and cancels the sending task.
    """

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str, headers: dict[str, str]):
        self.chunks = chunks
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        gone = False
        done = False

        async def watch() -> None:
            nonlocal gone
            await _disconnect(receive)
            if not done:
                gone = True
                sender.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for data in self.chunks:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            sender.uncancel()  # the client left: the response ends here, quietly
        finally:
            done = True
            watcher.cancel()
            await self.chunks.aclose()


async def start_stream(request: Request, chunks: AsyncIterator[bytes], media_type: str,
                       headers: dict[str, str]) -> LiveStreamResponse:
    """Wait for the first bytes before answering, so that an error before any audio (busy, failed)
    still gets its own status code instead of a broken 200. A client that leaves meanwhile (queued,
    prefilling, decoding) cancels the generation at once and is answered 499 (ClientGone)."""
    try:
        first = await unless_disconnected(request, anext(chunks, b""))
    except BaseException:
        await chunks.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for data in chunks:
                yield data
        finally:
            await chunks.aclose()

    return LiveStreamResponse(body(), media_type, headers)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await work, cancelling it if the client disconnects first (then raise ClientGone).

    Only for requests whose body has been read: from then on, receive() waits for the disconnect.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_disconnect(request.receive))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.wait({work_task})  # let its cleanup (cancelling the generation) finish
    if work_task.cancelled():
        raise ClientGone()
    return work_task.result()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
