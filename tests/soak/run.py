"""Soak: a long load against a running server (or a demo server this script starts), printing
throughput, errors and memory as it goes. Not run by pytest; run it by hand:

    python tests/soak/run.py --demo --duration 600 --concurrency 64
    python tests/soak/run.py --url http://127.0.0.1:8000 --api-key KEY --pid $(pgrep -f 'orpheus-local serve')

Every route and format is in the mix, some streamed; clients honour 429's Retry-After. It exits 1 if
any request failed otherwise than with a 429, any audio came back incomplete, or requests were still
in flight or queued once the load was over.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where soak and support live

from support.process import rss_bytes, start_server  # noqa: E402

from soak.loadgen import Outcome, Summary, optional_percentile, parse_metrics, run_load  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="base URL of a running server")
    target.add_argument("--demo", action="store_true", help="start `orpheus-local serve --demo` on a free port")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for the demo server, e.g. --server-arg=--max-in-flight=16 (repeatable)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--requests", type=int, help="stop after this many requests, if sooner")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="per request (default 100)")
    parser.add_argument("--api-key", help="sent as x-api-key")
    parser.add_argument("--pid", type=int, help="server process id, for its RSS from /proc (else from /metrics)")
    parser.add_argument("--interval", type=float, default=10, help="seconds between progress lines (default 10)")
    return parser.parse_args(argv)


class Progress:
    """Outcomes since the last line, and the line itself."""

    def __init__(self):
        self.window: list[Outcome] = []
        self.started = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        self.window.append(outcome)

    def line(self, interval: float, gauges: dict[str, float], rss: float | None) -> str:
        window, self.window = self.window, []
        served = [o for o in window if o.status == 200 and o.complete]
        failed = [o for o in window if o.status not in (200, 429) or (o.status == 200 and not o.complete)]
        ttfa = optional_percentile([o.ttfa_s for o in served if o.ttfa_s is not None and o.kind not in ("v1", "v2")], 99)
        return (f"{time.monotonic() - self.started:7.0f} s  served {len(served) / interval:5.2f}/s  "
                f"429 {sum(o.status == 429 for o in window):5d}  failed {len(failed):3d}  "
                f"ttfa p99 {'-' if ttfa is None else f'{ttfa:.2f} s':>8}  "
                f"rss {'-' if rss is None else f'{rss / 2**20:.0f} MiB'}  "
                f"in flight {gauges.get('orpheus_requests_in_flight', 0):.0f} "
                f"queued {gauges.get('orpheus_requests_queued', 0):.0f} "
                f"running {gauges.get('orpheus_requests_running', 0):.0f}")


async def soak(args: argparse.Namespace, base_url: str, pid: int | None) -> int:
    headers = {"x-api-key": args.api_key} if args.api_key else None
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:

        async def sample() -> tuple[dict[str, float], float | None]:
            gauges = parse_metrics((await client.get("/metrics")).text)
            return gauges, rss_bytes(pid) if pid else gauges.get("process_resident_memory_bytes")

        _, rss_start = await sample()
        print(f"soak: {base_url}, {args.concurrency} clients, {args.duration:.0f} s, RSS at start "
              f"{rss_start / 2**20:.0f} MiB" if rss_start else f"soak: {base_url}", flush=True)
        progress = Progress()
        load = asyncio.create_task(run_load(
            base_url, concurrency=args.concurrency, requests=args.requests, duration_s=args.duration,
            headers=headers, max_new_tokens=args.max_new_tokens, on_outcome=progress.add))
        while not load.done():
            await asyncio.wait({load}, timeout=args.interval)
            print(progress.line(args.interval, *await sample()), flush=True)
        outcomes = load.result()

        deadline = time.monotonic() + 60
        while True:  # what the load leaves behind, once the server has had a moment
            gauges, rss_end = await sample()
            left = {k: gauges.get(k, 0) for k in ("orpheus_requests_in_flight", "orpheus_requests_queued",
                                                  "orpheus_requests_running")}
            if not any(left.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # the codec hands its allocator's peak back after a second of idleness
        _, rss_end = await sample()
    summary = Summary.of(outcomes)
    failed = [o for o in outcomes if o.status not in (200, 429) or (o.status == 200 and not o.complete)]
    elapsed = time.monotonic() - progress.started
    print(f"\n{summary.line()}\nthroughput {summary.served / elapsed:.2f} served/s over {elapsed:.0f} s; "
          f"failed {len(failed)}; left behind {left}")
    if rss_start and rss_end:
        print(f"RSS at start {rss_start / 2**20:.0f} MiB, after the load {rss_end / 2**20:.0f} MiB")
    for outcome in failed[:10]:
        print(f"  {outcome.kind}: {outcome.status} {outcome.error}")
    return 1 if failed or any(left.values()) else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.url:
        return asyncio.run(soak(args, args.url.rstrip("/"), args.pid))
    server = start_server("--demo", *args.server_arg)
    try:
        return asyncio.run(soak(args, server.base_url, server.process.pid))
    finally:
        print(f"server stopped: exit {server.stop()}")


if __name__ == "__main__":
    sys.exit(main())
