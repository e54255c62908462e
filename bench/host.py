"""Host-side cost of serving: the real server around a simulated device, measured from outside.

    python bench/host.py                                   # pcm wav mp3 opus at 16, 64, 256 streams
    python bench/host.py --formats pcm --concurrency 64 --step-ms 3 --json bench/results/host-cpu.json

It starts `orpheus-local serve --simulated-step-ms S` (routes, middleware, engine thread, scheduler,
codec worker and encoders as served; each engine step sleeps S ms with the GIL released, as a GPU
step waits in its host sync; the codec costs nothing) and drives it with the project's own bench
client from this process. Each level reports the server process's CPU time per second of audio
served (from /proc), the real-time streams and the time to first audio. Every request speaks 3.7 s
of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.latency import benchmark_levels  # noqa: E402
from bench.report import CLOSED  # noqa: E402
from bench.server_process import ServeProcess  # noqa: E402
from bench.target import Target  # noqa: E402

TEXT = "Hello there, how are you today?"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def start_server(step_ms: float, slots: int) -> ServeProcess:
    server = ServeProcess(["--simulated-step-ms", str(step_ms), "--max-slots", str(slots),
                           "--max-in-flight", str(4 * slots), "--log-level", "warning"])
    server.wait_ready()
    return server


async def measure_level(pid: int, base_url: str, audio_format: str, concurrency: int, requests: int) -> dict:
    target = Target(base_url, api="openai", audio_format=audio_format, max_new_tokens=1200)
    before = cpu_seconds(pid)
    [level] = await benchmark_levels(target, [TEXT], [(CLOSED, concurrency, requests, None)], warmup=0,
                                     timeout=300)
    cpu = cpu_seconds(pid) - before
    s = level.summary
    return {
        "format": audio_format, "concurrency": concurrency, "requests": s.requests, "errors": s.errors,
        "audio_s": round(s.audio_seconds, 2), "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_audio_s": round(1000 * cpu / s.audio_seconds, 2) if s.audio_seconds else None,
        "realtime_streams": s.realtime_streams, "streams": s.streams_accounted,
        "ttfa_p50_ms": None if s.ttfa_p50 is None else round(1000 * s.ttfa_p50),
        "ttfa_p99_ms": None if s.ttfa_p99 is None else round(1000 * s.ttfa_p99),
        "wall_s": round(s.wall_seconds, 2),
    }


def _realtime(rows: list[dict], audio_format: str) -> int | None:
    levels = [r for r in rows if r["format"] == audio_format]
    if not any(r["streams"] for r in levels):
        return None
    return max((r["concurrency"] for r in levels if r["realtime_streams"] == r["streams"] == r["requests"]
                and r["ttfa_p99_ms"] is not None and r["ttfa_p99_ms"] < 500), default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["pcm", "wav", "mp3", "opus"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream at each level")
    parser.add_argument("--step-ms", type=float, default=3.0, help="the simulated device's step")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    server = start_server(args.step_ms, max(args.concurrency))
    try:
        rows = []
        for audio_format in args.formats:
            for concurrency in args.concurrency:
                row = asyncio.run(measure_level(server.pid, server.base_url, audio_format, concurrency,
                                                args.rounds * concurrency))
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        server.stop()
    middle = sorted(args.concurrency)[len(args.concurrency) // 2]
    result = {
        "command": "python bench/host.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "step_ms": args.step_ms,
        "server_cpu_ms_per_audio_s": {r["format"]: r["server_cpu_ms_per_audio_s"] for r in rows
                                      if r["concurrency"] == middle},
        # The highest concurrency at which every stream played without running dry and the p99 time to
        # first audio stayed under 500 ms; None where playback cannot be followed (compressed formats).
        "realtime_streams": {fmt: _realtime(rows, fmt) for fmt in args.formats},
        "levels": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "levels"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
