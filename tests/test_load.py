"""Load against a real `orpheus-local serve --demo` process over loopback: 64 concurrent clients,
every route and format, some streamed, fewer places than clients so that 429s are part of it.
Nothing but 429s may fail, every request is served in the end with complete audio, memory comes
back, and nothing stays in flight. Then SIGTERM in the middle of more load: a clean drain.

The figures go to stdout (pytest -s). tests/soak/run.py runs the same load for longer, by hand.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from soak.loadgen import KINDS, Summary, parse_metrics, run_load
from support.process import start_server

CONCURRENCY = 64
# CI-sized (the demo codec serves about 1.5 requests a second on 2 CPU cores): one request a client,
# each sent again after a 429 until served. tests/soak/run.py runs the full size.
REQUESTS = int(os.environ.get("ORPHEUS_LOAD_REQUESTS", "64"))
MAX_IN_FLIGHT = 16
KEY = "load-test-key-6f1c2a"
AUTH = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def server(demo_config, demo_dirs, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"{KEY}\n")
    process = start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu",
                           "--backend", demo_config.backend, "--max-in-flight", str(MAX_IN_FLIGHT),
                           "--api-keys-file", str(keys))
    yield process
    process.stop()


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    return parse_metrics((await client.get("/metrics", headers=AUTH)).text)


async def wait_idle(client: httpx.AsyncClient, timeout: float = 20) -> dict[str, float]:
    """/metrics once nothing is in flight, queued or holding an engine slot."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = await scrape(client)
        left = {name: metrics[name] for name in
                ("orpheus_requests_in_flight", "orpheus_requests_queued", "orpheus_requests_running")}
        if not any(left.values()):
            return metrics
        assert time.monotonic() < deadline, f"still busy after {timeout} s: {left}"
        await asyncio.sleep(0.1)


async def settled_rss(server, limit: int, timeout: float = 10) -> int:
    """The server's RSS once it is at most limit, else its lowest within timeout (the codec hands
    its allocator's peak back after a second of idleness)."""
    lowest, deadline = server.rss(), time.monotonic() + timeout
    while lowest > limit and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        lowest = min(lowest, server.rss())
    return lowest


async def test_load_serves_every_request_completely_and_leaves_nothing_behind(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        # warm-up under the same load: the codec's and encoders' per-shape caches fill here, so what
        # the measured round adds on top is what a leak would add
        warm_up = await run_load(server.base_url, concurrency=CONCURRENCY, requests=REQUESTS, headers=AUTH)
        assert {o.status for o in warm_up} <= {200, 429} and sum(o.status == 200 for o in warm_up) == REQUESTS
        await wait_idle(client)
        rss_warm = await settled_rss(server, 0, timeout=3)

        started = time.monotonic()
        outcomes = await run_load(server.base_url, concurrency=CONCURRENCY, requests=REQUESTS, headers=AUTH)
        elapsed = time.monotonic() - started
        summary = Summary.of(outcomes)
        metrics = await wait_idle(client)
        rss_after = await settled_rss(server, int(rss_warm * 1.10))

    print(f"\nload: {CONCURRENCY} clients, {MAX_IN_FLIGHT} places, {elapsed:.0f} s: {summary.line()}")
    print(f"RSS after warm-up {rss_warm / 2**20:.0f} MiB, after the load {rss_after / 2**20:.0f} MiB")
    failures = [o for o in outcomes if o.status not in (200, 429) or (o.status == 200 and not o.complete)]
    assert failures == []
    assert summary.requests == summary.served == REQUESTS  # each request served in the end
    assert summary.by_status.get("429", 0) > 0  # more clients than places: some were told to come back
    assert {o.kind for o in outcomes if o.status == 200} == set(KINDS)
    assert rss_after <= rss_warm * 1.10
    assert metrics["orpheus_requests_in_flight"] == metrics["orpheus_requests_queued"] == 0
    assert "Traceback" not in server.output and KEY not in server.output


async def test_sigterm_under_load_drains_every_request_then_exits_0(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        # v2 is left out: its results live in memory, and a server that has stopped serves none
        kinds = [kind for kind in KINDS if kind != "v2"]
        load = asyncio.create_task(run_load(server.base_url, concurrency=8, requests=8, headers=AUTH, kinds=kinds))
        deadline = time.monotonic() + 30
        while (await scrape(client))["orpheus_requests_in_flight"] < 8:
            assert time.monotonic() < deadline, "the load never got going"
            await asyncio.sleep(0.05)
        server.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        await asyncio.sleep(0.2)
        turned_away = [await client.post("/v1/orpheus-3b-0.1", json={"text": "Hi."}, headers=AUTH),
                       await client.get("/ready")]
        outcomes = await load
    exit_status = await asyncio.to_thread(server.wait, 60)
    print(f"\nSIGTERM under load: {Summary.of(outcomes).line()}; exit {exit_status} "
          f"{time.monotonic() - stopped_at:.1f} s after the signal")
    assert [(o.status, o.complete) for o in outcomes] == [(200, True)] * 8
    for response in turned_away:  # new work goes elsewhere while the server drains
        assert response.status_code == 503 and response.headers["retry-after"]
    assert exit_status == 0
    assert "Traceback" not in server.output
