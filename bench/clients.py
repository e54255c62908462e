"""ClientPool: an httpx client per request in flight, reused from one request to the next.

One httpx client shared by hundreds of concurrent streams costs more CPU than the server it
measures: its connection pool looks at every connection it holds for every request it assigns, and
at 256 streams that made the client, not the server, set the time to first audio. A client of its
own per request in flight keeps each pool at one kept-alive connection.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx


class ClientPool:
    def __init__(self, timeout: float):
        self._timeout = timeout
        self._ssl = httpx.create_ssl_context()  # loading the CA bundle once, not once per client
        self._free: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[httpx.AsyncClient]:
        client = self._free.pop() if self._free else self._new()
        try:
            yield client
        finally:
            self._free.append(client)

    def _new(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(timeout=self._timeout, verify=self._ssl,
                                   limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self._all.append(client)
        return client

    async def aclose(self) -> None:
        for client in self._all:
            await client.aclose()
        self._all, self._free = [], []
