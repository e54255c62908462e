"""How long the server's event loop keeps others waiting while it streams encoded audio.

Opens `--streams` OpenAI speech streams (mp3 at speed 1.5 by default: encoding plus the atempo
filter for every chunk), and meanwhile asks GET /health every `--probe-ms`, timing each answer.
/health does no work of its own, so its latency is the time the loop was busy elsewhere.

    orpheus-local serve --demo --port 8000 &
    python bench/event_loop.py --base-url http://127.0.0.1:8000 --json out.json

Run it against two servers (say, before and after a change) on the same machine, one after the
other, and compare the p99 and the max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.playback import percentile  # noqa: E402

TEXT = "Hey there, this sentence keeps the encoder busy <laugh> for a while."


async def stream(client: httpx.AsyncClient, args, seed: int, stop: asyncio.Event) -> int:
    body = {"model": "tts-1", "input": TEXT, "voice": "tara", "response_format": args.format, "speed": args.speed,
            "max_new_tokens": args.tokens, "seed": seed}
    received = 0
    async with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if stop.is_set():
                break
    return received


async def probe(client: httpx.AsyncClient, interval: float, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        started = time.perf_counter()
        (await client.get("/health")).raise_for_status()
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, interval - latencies[-1]))
    return latencies


async def run(args) -> dict:
    limits = httpx.Limits(max_connections=args.streams + 4)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=None, limits=limits) as client:
        idle = await probe(client, args.probe_ms / 1000, time.monotonic() + 2)  # the loop with nothing to do
        stop = asyncio.Event()
        streams = [asyncio.create_task(stream(client, args, i, stop)) for i in range(args.streams)]
        await asyncio.sleep(args.ramp_s)  # every stream generating and encoding
        busy = await probe(client, args.probe_ms / 1000, time.monotonic() + args.seconds)
        stop.set()
        received = await asyncio.gather(*streams, return_exceptions=True)
    errors = [repr(r) for r in received if isinstance(r, BaseException)]
    ms = [1000 * x for x in busy]
    return {
        "health_p50_ms": percentile(ms, 50), "health_p99_ms": percentile(ms, 99), "health_max_ms": max(ms),
        "idle_health_p99_ms": percentile([1000 * x for x in idle], 99), "probes": len(ms),
        "streams": args.streams, "format": args.format, "speed": args.speed, "seconds": args.seconds,
        "bytes_received": sum(r for r in received if isinstance(r, int)), "errors": errors,
        "base_url": args.base_url, "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--format", default="mp3")
    ap.add_argument("--speed", type=float, default=1.5)
    ap.add_argument("--tokens", type=int, default=1200, help="max_new_tokens of each stream")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to probe while the streams play")
    ap.add_argument("--ramp-s", type=float, default=5.0, help="wait this long after opening the streams")
    ap.add_argument("--probe-ms", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(f"{args.streams} {args.format} streams at speed {args.speed}: /health p50 {result['health_p50_ms']:.1f} ms, "
          f"p99 {result['health_p99_ms']:.1f} ms, max {result['health_max_ms']:.1f} ms over {result['probes']} probes "
          f"(idle p99 {result['idle_health_p99_ms']:.1f} ms); {result['bytes_received']} bytes received")
    if result["errors"]:
        print(f"stream errors: {result['errors'][:3]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
