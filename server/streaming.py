"""Responses that follow the client: streams that start with the first audio and stop when the
client goes away, and waits that are cancelled when it does."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import ClientGone

T = TypeVar("T")


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator however the response ends, so a generation is cancelled at once
    when the client disconnects (Starlette cancels the sending task, not the iterator)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def start_stream(request: Request, chunks: AsyncIterator[bytes], media_type: str,
                       headers: dict[str, str]) -> StreamingResponse:
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

    return ClosingStreamingResponse(body(), media_type=media_type, headers=headers)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await work, cancelling it if the client disconnects first (then raise ClientGone).

    Only for requests whose body has been read: from then on, receive() waits for the disconnect.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_disconnect(request))
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


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
