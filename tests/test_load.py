"""Load against a real `orpheus-local serve --demo` process over loopback: 64 concurrent clients,
every route and format, some streamed, fewer places than clients so that 429s are part of it.
Nothing but 429s may fail, every request is served in the end with complete audio, memory comes
back, and nothing stays in flight. Then SIGTERM in the middle of more load: a clean drain.

The figures go to stdout (pytest -s). tests/soak/run.py runs the same load for longer, by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
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
SEND_TIMEOUT_S = 2  # clients that stop reading are dropped after this
AUTH = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def server(demo_config, demo_dirs, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"{KEY}\n")
    process = start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu",
                           "--backend", demo_config.backend, "--max-in-flight", str(MAX_IN_FLIGHT),
                           "--api-keys-file", str(keys), "--send-timeout-s", str(SEND_TIMEOUT_S))
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


HANG_UPS, NEVER_READ = 6, 3


def _stream_request(text: str) -> bytes:
    body = json.dumps({"text": text, "max_new_tokens": 1200, "stream": True}).encode()
    return (b"POST /v1/orpheus-3b-0.1 HTTP/1.1\r\nhost: x\r\nx-api-key: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body))


async def test_clients_that_hang_up_or_never_read_leave_nothing_behind_and_others_are_served(server):
    port = int(server.base_url.rsplit(":", 1)[1])
    # One part of about 12 s of audio (the random weights run to the guard's budget): far more than
    # the socket buffers the server allows a client that does not read.
    text = "The committee met on Tuesday to discuss the budget for the coming year."
    loop = asyncio.get_running_loop()

    def hang_up() -> None:  # the whole request sent, then gone before any answer
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_stream_request(text))

    def never_read() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(_stream_request(text))
        return sock

    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        lines_before = len(server.lines)
        silent = [await loop.run_in_executor(None, never_read) for _ in range(NEVER_READ)]
        for _ in range(HANG_UPS):
            await loop.run_in_executor(None, hang_up)
        load = asyncio.create_task(run_load(server.base_url, concurrency=8, requests=8, headers=AUTH))
        started = time.monotonic()
        async with client.stream("POST", "/v1/orpheus-3b-0.1", headers=AUTH,
                                 json={"text": "Hello there.", "max_new_tokens": 100, "stream": True}) as normal:
            first_audio = None
            async for _ in normal.aiter_bytes():
                first_audio = first_audio or time.monotonic() - started
        outcomes = await load
        metrics = await wait_idle(client, timeout=120)  # the never-readers dropped, the hang-ups ended
        for sock in silent:
            sock.close()
    log = "".join(server.lines[lines_before:])
    print(f"\nbeside {HANG_UPS} hang-ups and {NEVER_READ} never-readers: first audio of a normal request after {first_audio:.2f} s; "
          f"load {Summary.of(outcomes).line()}")
    assert normal.status_code == 200 and first_audio is not None and first_audio < 60
    assert all(o.status in (200, 429) for o in outcomes) and Summary.of(outcomes).served == 8
    assert metrics["orpheus_requests_in_flight"] == metrics["orpheus_requests_running"] == 0
    assert "Traceback" not in log
    assert log.count("status=499") == HANG_UPS  # cancelled and logged as such
    speech_lines = [line for line in log.splitlines() if "route=/v1/orpheus-3b-0.1" in line]
    assert log.count("cut=\"slow reader\"") == NEVER_READ and "dropped clients that read nothing" in log, speech_lines


async def test_sigterm_under_load_drains_every_request_then_exits_0(server):
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        # v2 is left out: its results live in memory, and a server that has stopped serves none
        kinds = [kind for kind in KINDS if kind != "v2"]
        deadline = time.monotonic() + 30
        while (await scrape(client))["orpheus_requests_in_flight"] > 0:  # the module's earlier clients are gone
            assert time.monotonic() < deadline, "requests of an earlier test are still in flight"
            await asyncio.sleep(0.05)
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
    # a 429 before the signal (the codec was behind) is sent again; each request's last answer counts
    assert {o.status for o in outcomes if not o.final} <= {429}
    assert [(o.status, o.complete) for o in outcomes if o.final] == [(200, True)] * 8
    for response in turned_away:  # new work goes elsewhere while the server drains
        assert response.status_code == 503 and response.headers["retry-after"]
    assert exit_status == 0
    assert "Traceback" not in server.output
