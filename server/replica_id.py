"""X-Replica-Id on every response: which server process answered (an opaque id), so a client behind
Ray Serve's proxy, or any load balancer, can tell replicas apart."""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Replica-Id"


def new_replica_id() -> str:
    return uuid.uuid4().hex[:16]


class ReplicaIdHeader:
    """ASGI middleware adding HEADER to every HTTP response."""

    def __init__(self, app: ASGIApp, replica_id: str):
        self.app = app
        self.replica_id = replica_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(HEADER, self.replica_id)
            await send(message)

        await self.app(scope, receive, send_with_id)
