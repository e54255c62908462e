"""Hostile clients against a real `serve --demo` process: what one attacker does to everyone else.

    python bench/hostile.py slowloris hangup noread backlog              # this checkout
    python bench/hostile.py slowloris --source /path/to/other/checkout   # the same attack on another

Each scenario starts a fresh server (output to a log file), attacks it over loopback, and meanwhile
measures what a well-behaved client gets: a normal request's latency, /health's latency, and the
server's resident memory, open files and log growth. Scenarios:

  slowloris  sockets that send a header byte every 10 s and never finish (the server's file limit is
             lowered so that they can exhaust it)
  hangup     clients that hang up one second into a long streamed request, before their first audio
  noread     SSE clients that never read their response, with --max-in-flight 4
  backlog    6 long streamed requests, and a short one every second beside them: time to first
             audio vs total
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server_process import ServeProcess  # noqa: E402

V1 = "/v1/orpheus-3b-0.1"
SPEECH = "/v1/audio/speech"
SHORT = {"text": "Hello there.", "voice": "tara", "max_new_tokens": 100, "seed": 1, "stream": True}
SENTENCE = "The committee met on Tuesday to discuss the budget for the coming year."
LONG_TEXT = " ".join([SENTENCE] * 12)


class Server(ServeProcess):
    """`serve --demo FLAGS` from a source tree, with its /proc figures and its access log."""

    def __init__(self, source: Path, flags: list[str], nofile: int | None):
        super().__init__(["--demo", *flags], source=source, nofile=nofile)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size

    def access_statuses(self, route: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f"route={route}" in line and " request " in line and "status=" in line:
                status = line.split("status=", 1)[1].split()[0]
                counts[status] = counts.get(status, 0) + 1
        return counts


class Watch:
    """Samples /health latency (every 0.5 s) and the server's memory and files (every 1 s)."""

    def __init__(self, server: Server):
        self.server = server
        self.health_s: list[float] = []
        self.health_failed = 0
        self.rss_mb: list[float] = []
        self.files: list[int] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=10) as client:
            tick = 0
            while not stop.is_set():
                if tick % 2 == 0:
                    self.rss_mb.append(self.server.rss_mb())
                    self.files.append(self.server.open_files())
                started = time.perf_counter()
                try:
                    ok = (await client.get("/health")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.health_s.append(time.perf_counter() - started)
                else:
                    self.health_failed += 1
                tick += 1
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

    def figures(self) -> dict:
        health = sorted(self.health_s)
        return {
            "health_p50_ms": round(1000 * statistics.median(health), 1) if health else None,
            "health_p99_ms": round(1000 * health[int(0.99 * (len(health) - 1))], 1) if health else None,
            "health_failed": self.health_failed,
            "rss_peak_mb": round(max(self.rss_mb), 1) if self.rss_mb else None,
            "open_files_peak": max(self.files) if self.files else None,
        }


async def normal_request(base_url: str, timeout: float = 120) -> dict:
    """One short streamed request: status, seconds to its first audio byte and to its end."""
    started = time.perf_counter()
    first = None
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
            async with client.stream("POST", V1, json=SHORT) as response:
                async for _ in response.aiter_bytes():
                    first = first or time.perf_counter() - started
                status = response.status_code
    except httpx.HTTPError as exc:
        return {"status": type(exc).__name__, "total_s": round(time.perf_counter() - started, 2)}
    return {"status": status, "ttfa_s": None if first is None else round(first, 2),
            "total_s": round(time.perf_counter() - started, 2)}


# --- scenarios: each returns its own figures; Watch adds the shared ones ---
async def slowloris(server: Server, sockets: int = 2000, duration: float = 40.0) -> dict:
    """Like the usual tool: every 10 s a header byte on each socket, and a new socket for each one the
    server closed."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [None] * sockets
    opened = failed = 0

    async def reopen(i: int) -> None:
        nonlocal opened, failed
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 5)
            writer.write(f"POST {V1} HTTP/1.1\r\nhost: x\r\n".encode())
            conns[i] = (reader, writer)
            opened += 1
        except (OSError, asyncio.TimeoutError):
            conns[i] = None
            failed += 1

    normal = []
    ends = time.monotonic() + duration
    while time.monotonic() < ends:
        for i, conn in enumerate(conns):
            if conn is None or conn[0].at_eof() or conn[1].is_closing():
                if conn is not None:
                    conn[1].close()
                await reopen(i)
            else:
                conn[1].write(b"x-a: b\r\n")
        normal.append(await normal_request(server.base_url, timeout=30))
        await asyncio.sleep(max(0.0, min(10.0, ends - time.monotonic())))
    still_open = sum(1 for c in conns if c is not None and not c[0].at_eof())
    for conn in conns:
        if conn is not None:
            conn[1].close()
    return {"attack_sockets": sockets, "connections_opened": opened, "connects_failed": failed,
            "open_at_end": still_open, "normal_requests": normal}


async def hangup(server: Server, clients: int = 30) -> dict:
    async def leave_after_one_second() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            try:
                async with asyncio.timeout(1.0):
                    async with client.stream("POST", V1, json={"text": LONG_TEXT, "max_new_tokens": 1200,
                                                               "stream": True}) as response:
                        async for _ in response.aiter_bytes():
                            pass
            except (TimeoutError, httpx.HTTPError):
                pass

    await asyncio.gather(*(leave_after_one_second() for _ in range(clients)))
    normal = await normal_request(server.base_url)
    in_flight_zero_after = await _until_in_flight_zero(server.base_url, 120)
    return {"clients_gone_after_1s": clients, "normal_request": normal,
            "in_flight_zero_after_s": in_flight_zero_after}


async def noread(server: Server, clients: int = 4, give_up_s: float = 150.0) -> dict:
    socks = []
    # One sentence, generated within seconds, played at a quarter speed: about 50 s of audio, more
    # than the kernel buffers for a client. Then only the clients hold their places.
    body = json.dumps({"input": SENTENCE, "stream_format": "sse", "max_new_tokens": 1200, "speed": 0.25}).encode()
    for _ in range(clients):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (SPEECH.encode(), len(body), body))
        socks.append(sock)  # and never read
    await asyncio.sleep(2.0)
    started = time.monotonic()
    refused = 0
    while time.monotonic() - started < give_up_s:
        result = await normal_request(server.base_url)
        if result["status"] == 200:
            break
        refused += 1
        await asyncio.sleep(2.0)
    locked_out = time.monotonic() - started
    for sock in socks:
        sock.close()
    return {"clients_not_reading": clients, "normal_requests_refused": refused,
            "locked_out_s": round(locked_out, 1), "served": result}


async def backlog(server: Server, long_streams: int = 6, short_requests: int = 12) -> dict:
    """Fewer long streams than engine slots (8 on the demo model): the decoder, not the engine, is
    what the short requests wait for."""
    async def long_one() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as client:
            async with client.stream("POST", V1, json={"text": LONG_TEXT, "max_new_tokens": 1200,
                                                       "stream": True}) as response:
                async for _ in response.aiter_bytes():
                    pass

    longs = [asyncio.create_task(long_one()) for _ in range(long_streams)]
    shorts = []
    for _ in range(short_requests):
        shorts.append(asyncio.create_task(normal_request(server.base_url, timeout=300)))
        await asyncio.sleep(1.0)
    results = await asyncio.gather(*shorts)
    for task in longs:
        task.cancel()
    await asyncio.gather(*longs, return_exceptions=True)
    served = [r for r in results if r["status"] == 200 and r.get("ttfa_s") is not None]
    ttfa = sorted(r["ttfa_s"] for r in served)
    total = sorted(r["total_s"] for r in served)

    def p90(values):
        return values[int(0.9 * (len(values) - 1))] if values else None

    return {"short_served": len(served), "short_statuses": sorted({str(r["status"]) for r in results}),
            "ttfa_p50_s": statistics.median(ttfa) if ttfa else None, "ttfa_p90_s": p90(ttfa),
            "total_p90_s": p90(total)}


async def _until_in_flight_zero(base_url: str, timeout: float) -> float | None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while time.monotonic() - started < timeout:
            metrics = (await client.get("/metrics")).text
            line = next(line for line in metrics.splitlines() if line.startswith("orpheus_requests_in_flight "))
            if float(line.split()[1]) == 0:
                return round(time.monotonic() - started, 1)
            await asyncio.sleep(0.5)
    return None


SCENARIOS = {
    "slowloris": (slowloris, [], 1024),
    "hangup": (hangup, [], None),
    "noread": (noread, ["--max-in-flight", "4"], None),
    "backlog": (backlog, [], None),
}


async def run_scenario(name: str, source: Path) -> dict:
    attack, flags, nofile = SCENARIOS[name]
    server = Server(source, flags, nofile)
    try:
        server.wait_ready()
        log_before = server.log_bytes()
        watch = Watch(server)
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch.run(stop))
        started = time.perf_counter()
        figures = await attack(server)
        stop.set()
        await watcher
        return {"scenario": name, "source": str(source), "seconds": round(time.perf_counter() - started, 1),
                **figures, **watch.figures(), "log_growth_kb": round((server.log_bytes() - log_before) / 1024, 1),
                "access_statuses": server.access_statuses(V1 if name != "noread" else SPEECH)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS))
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the orpheus-local source tree whose server is attacked (default: this one)")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = []
    for name in args.scenarios:
        result = asyncio.run(run_scenario(name, args.source.resolve()))
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
