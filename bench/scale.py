"""Scale-out on Ray Serve, measured side by side in one run on this machine.

    python bench/scale.py                              # the demo model on CPU
    python bench/scale.py --concurrency 8 --requests 32 --rounds 3 --json bench/results/scale-cpu.json

Two figures:
- throughput: seconds of audio served per second of wall time by `serve --demo --replicas 2`
  against `--replicas 1`, at the same concurrency (closed loop, whole-file pcm requests); each
  replica has one CPU core and one torch thread, so on a machine with two cores or more, two
  replicas should serve close to twice as much;
- proxy latency: time to first audio of a streamed request at concurrency 1 through Ray Serve's
  proxy (`--replicas 1`) against a plain `serve --demo`. Both servers run at once and the requests
  go in pairs, one to each, in a random order, so that both see the same machine (Ray's cluster
  idling, whatever else runs): the figure is the median of the pairs' differences, over
  --latency-requests pairs. Servers measured one after the other differ by more than the proxy's
  cost on a small machine.
The throughput servers are started, measured and stopped in turn; --rounds repeats the whole and
the medians of the rounds are reported. --simulated-step-ms S serves a simulated device instead of the demo model
(engine steps that sleep S ms, a codec that costs nothing): the proxy's own cost, without the
model's compute competing with Ray's processes for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server_process import ServeProcess  # noqa: E402

SAMPLE_RATE = 24000
TEXT = "Hello there, how are you today?"
BASE = ["--demo", "--device", "cpu", "--max-codec-backlog-s", "1000"]


async def first_audio_s(client: httpx.AsyncClient) -> float:
    body = {"input": TEXT, "response_format": "pcm", "max_new_tokens": 100, "seed": 1}
    started = time.perf_counter()
    async with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for _ in response.aiter_raw():
            return time.perf_counter() - started
    raise RuntimeError("no audio")


async def paired_latency(plain_url: str, proxied_url: str, pairs: int, seed: int) -> dict:
    """Time to first audio, one request at a time, in pairs (plain, proxied) sent in a random order:
    the medians of each, and the median of the pairs' differences, ms."""
    order = random.Random(seed)
    plain_ms, proxied_ms = [], []
    async with httpx.AsyncClient(base_url=plain_url, timeout=120) as plain, \
            httpx.AsyncClient(base_url=proxied_url, timeout=120) as proxied:
        for client in (plain, proxied):
            await first_audio_s(client)  # warm the connections and the paths
        for _ in range(pairs):
            first, second = (plain, proxied) if order.random() < 0.5 else (proxied, plain)
            times = {first: await first_audio_s(first), second: await first_audio_s(second)}
            plain_ms.append(1000 * times[plain])
            proxied_ms.append(1000 * times[proxied])
    return {"plain_first_audio_ms": statistics.median(plain_ms),
            "proxied_first_audio_ms": statistics.median(proxied_ms),
            "proxy_added_ms": statistics.median(b - a for a, b in zip(plain_ms, proxied_ms))}


async def throughput(base_url: str, concurrency: int, requests: int) -> float:
    """Seconds of audio served per second, `concurrency` clients sending `requests` in all."""
    body = {"input": TEXT, "response_format": "pcm", "max_new_tokens": 200, "stream": False}
    sent, audio_s = 0, 0.0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent, audio_s
        while sent < requests:
            sent += 1
            response = await client.post("/v1/audio/speech", json={**body, "seed": sent})
            response.raise_for_status()
            audio_s += len(response.content) / 2 / SAMPLE_RATE

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        await client.post("/v1/audio/speech", json=body)  # warm
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return audio_s / (time.perf_counter() - started)


def with_servers(flag_sets: list[list[str]], measure):
    servers = [ServeProcess(flags) for flags in flag_sets]
    try:
        for server in servers:
            server.wait_ready()
        return asyncio.run(measure(*(server.base_url for server in servers)))
    finally:
        for server in servers:
            server.stop()


def one_round(args: argparse.Namespace, seed: int) -> dict:
    base = BASE if args.simulated_step_ms is None else ["--simulated-step-ms", str(args.simulated_step_ms)]
    latency = with_servers([base, [*base, "--replicas", "1"]],
                           lambda plain, proxied: paired_latency(plain, proxied, args.latency_requests, seed))
    one = with_servers([[*base, "--replicas", "1"]], lambda url: throughput(url, args.concurrency, args.requests))
    two = with_servers([[*base, "--replicas", "2"]], lambda url: throughput(url, args.concurrency, args.requests))
    return {**latency, "one_replica_audio_s_per_s": one, "two_replicas_audio_s_per_s": two, "two_over_one": two / one}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="per throughput measurement")
    parser.add_argument("--latency-requests", type=int, default=100, help="pairs, one request to each server")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--simulated-step-ms", type=float,
                        help="serve a simulated device with this step instead of the demo model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rounds = []
    for i in range(args.rounds):
        rounds.append(one_round(args, seed=i))
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in rounds[-1].items()), flush=True)
    result = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}
    print(f"two replicas serve {result['two_over_one']:.2f}x the audio of one at concurrency {args.concurrency}; "
          f"the proxy adds {result['proxy_added_ms']:.1f} ms to the first audio "
          f"({result['proxied_first_audio_ms']:.0f} ms against {result['plain_first_audio_ms']:.0f} ms)")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(["python bench/scale.py", *(argv or sys.argv[1:])]),
                                         **vars(args), "json": str(args.json), "rounds": rounds, "median": result},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
