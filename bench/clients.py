"""The benchmark's HTTP client: one aiohttp session for every request of a run.

The client shares the machine with whatever it measures (on a small box, with the server itself), so
it has to be cheap: aiohttp parses HTTP in C and hands out kept-alive connections without looking at
the others, about 1 ms of CPU for a streamed request of a few seconds where a pure-Python client
spends several. Its pool has no limit: a queue in the client would add to the measured time to first
audio. The session has no timeout of its own; measure() bounds each whole exchange.
"""

from __future__ import annotations

import ssl

import aiohttp
import certifi


def open_session() -> aiohttp.ClientSession:
    """A session for one run; close it with `await session.close()` (or use it in `async with`)."""
    # certifi's CA bundle, as httpx and requests use: a slim image may have no system bundle
    tls = ssl.create_default_context(cafile=certifi.where())
    connector = aiohttp.TCPConnector(limit=0, ssl=tls)
    # auto_decompress off: the bytes counted are the bytes the server sent
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
