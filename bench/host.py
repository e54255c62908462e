"""Host-side cost of serving: the real server around a simulated device, measured from outside.

    python bench/host.py                                   # pcm wav mp3 opus at 16, 64, 256 streams
    python bench/host.py --formats pcm --concurrency 64 --step-ms 3 --json bench/results/host-cpu.json

It starts `orpheus-local serve --simulated-step-ms S` (routes, middleware, engine thread, scheduler,
codec worker and encoders as served; each engine step sleeps S ms with the GIL released, as a GPU
step waits in its host sync; the codec costs nothing) and drives it with the project's own bench
client, from --client-processes processes of its own (by default one per 256 streams of the highest
level). Each level reports the server process's CPU time per second of audio served (from /proc), in
all and by thread (event loop, engine, codec, encoders), how often each thread was woken, the
real-time streams, the time to first audio, the mean wall time of an engine step against the
simulated one, and the clients' own CPU time (when it nears their wall time, the clients are
measuring themselves). Every request speaks 3.7 s of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.latency import benchmark_levels  # noqa: E402
from bench.report import CLOSED, summarize  # noqa: E402
from bench.server_process import ROOT, ServeProcess  # noqa: E402
from bench.target import Target  # noqa: E402
from orpheus_local.audio.encoders import StreamEncoder  # noqa: E402
from orpheus_local.audio.simulated import SpeechLikeCodec  # noqa: E402
from orpheus_local.tokens import SAMPLE_RATE  # noqa: E402

TEXT = "Hello there, how are you today?"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_cpu_seconds(stat: Path) -> float:
    """User and system CPU time in a /proc stat file (a process's or one of its threads')."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


# The server's threads by their operating-system names (orpheus_local/thread_names.py); the main
# thread runs the event loop, and the rest (the reference encoder, job files, Python's own) are few.
THREAD_ROLES = {"orpheus-engine": "engine", "orpheus-codec": "codec", "orpheus-encode": "encoders"}
ROLES = ("event loop", "engine", "codec", "encoders", "other")


def _voluntary_switches(status: Path) -> int:
    """The times a thread gave up its CPU to wait (for a lock, a sleep, a socket), from its /proc
    status file: each is a wake-up later, and on a VM a wake-up costs tens of microseconds."""
    for line in status.read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def thread_totals(pid: int) -> dict[str, tuple[float, int]]:
    """(CPU seconds, wake-ups) so far of a server's threads, summed by role (ROLES; Linux). A thread
    that has ended is no longer counted: the server's threads live as long as it does."""
    totals = dict.fromkeys(ROLES, (0.0, 0))
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, cpu = (task / "comm").read_text().strip(), _stat_cpu_seconds(task / "stat")
            wakeups = _voluntary_switches(task / "status")
        except OSError:  # the thread ended meanwhile
            continue
        role = "event loop" if task.name == str(pid) else THREAD_ROLES.get(name, "other")
        totals[role] = (totals[role][0] + cpu, totals[role][1] + wakeups)
    return totals


def engine_steps(base_url: str) -> tuple[float, float] | None:
    """(steps, seconds) the server's engine has taken so far, from /metrics; None from a server that
    does not count them."""
    text = httpx.get(base_url + "/metrics", timeout=30).text
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples}
    if "orpheus_engine_steps_total" not in values:
        return None
    return values["orpheus_engine_steps_total"], values["orpheus_engine_step_seconds_total"]


def start_server(step_ms: float, slots: int, source: Path = ROOT) -> ServeProcess:
    server = ServeProcess(["--simulated-step-ms", str(step_ms), "--max-slots", str(slots),
                           "--max-in-flight", str(4 * slots), "--log-level", "warning"], source=source)
    server.wait_ready()
    return server


def _client_share(base_url: str, audio_format: str, concurrency: int, requests: int) -> tuple[list, float, float]:
    """One client process's share of a level: its results, its wall time and its CPU time."""
    target = Target(base_url, api="openai", audio_format=audio_format, max_new_tokens=1200)
    cpu = time.process_time()
    [level] = asyncio.run(benchmark_levels(target, [TEXT], [(CLOSED, concurrency, requests, None)], warmup=0,
                                           timeout=300))
    return level.requests, level.summary.wall_seconds, time.process_time() - cpu


CLIENT_NICENESS = 10
STREAMS_PER_CLIENT = 256  # one client process reads at most this many streams at the highest level


def client_processes(concurrency: list[int]) -> int:
    """Enough client processes that none reads more than STREAMS_PER_CLIENT streams. The client
    spends about 1 ms of CPU on a request of 3.7 s of audio, so one process reads 256 streams in time
    on a shared 2-core machine; more processes would only compete with the server for the cores."""
    return -(-max(concurrency) // STREAMS_PER_CLIENT)


def _ready() -> None:
    """Imports done: the pool's processes start before a level is timed. They run at a lower
    priority than the server: where they share its cores, the server's threads are scheduled first,
    as if the clients were on other machines (a client waiting for a core is late to read, but
    the server is not late to send)."""
    os.nice(CLIENT_NICENESS)


def measure_level(pool: ProcessPoolExecutor, processes: int, pid: int, base_url: str, audio_format: str,
                  concurrency: int, requests: int) -> dict:
    """A closed-loop level, its streams shared among `processes` client processes (one Python client
    cannot read hundreds of streams in time on its own: it would measure itself, not the server)."""
    shares = [(concurrency * (i + 1) // processes - concurrency * i // processes,
               requests * (i + 1) // processes - requests * i // processes) for i in range(processes)]
    steps_before = engine_steps(base_url)
    before, threads_before = cpu_seconds(pid), thread_totals(pid)
    futures = [pool.submit(_client_share, base_url, audio_format, c, n) for c, n in shares if c and n]
    outcomes = [f.result() for f in futures]
    cpu = cpu_seconds(pid) - before
    threads_after = thread_totals(pid)
    by_thread = {role: threads_after[role][0] - threads_before[role][0] for role in ROLES}
    wakeups = {role: threads_after[role][1] - threads_before[role][1] for role in ROLES}
    steps_after = engine_steps(base_url)
    step_ms = None
    if steps_before and steps_after and steps_after[0] > steps_before[0]:
        step_ms = round(1000 * (steps_after[1] - steps_before[1]) / (steps_after[0] - steps_before[0]), 2)
    results = [r for rows, _, _ in outcomes for r in rows]
    target = Target(base_url, api="openai", audio_format=audio_format)
    s = summarize(CLOSED, concurrency, results, max(wall for _, wall, _ in outcomes), target.playback_accounted)
    return {
        "format": audio_format, "concurrency": concurrency, "requests": s.requests, "errors": s.errors,
        "audio_s": round(s.audio_seconds, 2), "server_cpu_s": round(cpu, 2),
        "client_cpu_s": round(sum(c for _, _, c in outcomes), 2),
        "server_cpu_ms_per_audio_s": round(1000 * cpu / s.audio_seconds, 2) if s.audio_seconds else None,
        # the same, thread by thread: which of the server's threads spends it
        "server_cpu_ms_per_audio_s_by_thread": {role: round(1000 * seconds / s.audio_seconds, 2)
                                                for role, seconds in by_thread.items()} if s.audio_seconds else None,
        # how often each thread was woken, per second of the level: on a VM each wake-up costs tens
        # of microseconds of CPU on top of the work it wakes for
        "server_wakeups_per_s_by_thread": {role: round(count / s.wall_seconds) for role, count in wakeups.items()}
                                          if s.wall_seconds else None,
        "realtime_streams": s.realtime_streams, "streams": s.streams_accounted,
        "ttfa_p50_ms": None if s.ttfa_p50 is None else round(1000 * s.ttfa_p50),
        "ttfa_p99_ms": None if s.ttfa_p99 is None else round(1000 * s.ttfa_p99),
        "wall_s": round(s.wall_seconds, 2),
        "step_ms_effective": step_ms,
    }


def encoder_ms_per_audio_s(audio_format: str, seconds: float = 10.0, chunk: int = 8192) -> float:
    """CPU milliseconds per second of audio that the format's encoder alone takes, here, in this
    process: the speech-like stand-in's audio in chunks of `chunk` samples (the floor under what the
    server spends on that format)."""
    pcm = SpeechLikeCodec().audio(0, int(seconds * SAMPLE_RATE))
    started = time.process_time()
    encoder = StreamEncoder(audio_format)
    for begin in range(0, len(pcm), chunk):
        encoder.encode(pcm[begin:begin + chunk])
    encoder.finish()
    return round(1000 * (time.process_time() - started) / seconds, 2)


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
    parser.add_argument("--rounds", type=int, default=3, help="requests per stream at each level")
    parser.add_argument("--step-ms", type=float, default=3.0, help="the simulated device's step")
    parser.add_argument("--client-processes", type=int,
                        help=f"client processes sharing each level's streams (default: one per {STREAMS_PER_CLIENT} "
                             "streams of the highest level)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--source", type=Path, default=ROOT,
                        help="the orpheus-local source tree whose server is measured (default: this one)")
    args = parser.parse_args(argv)
    args.client_processes = args.client_processes or client_processes(args.concurrency)
    server = start_server(args.step_ms, max(args.concurrency), args.source.resolve())
    pool = ProcessPoolExecutor(args.client_processes, mp_context=multiprocessing.get_context("spawn"))
    try:
        for future in [pool.submit(_ready) for _ in range(args.client_processes)]:
            future.result()
        rows = []
        for audio_format in args.formats:
            for concurrency in args.concurrency:
                row = measure_level(pool, args.client_processes, server.pid, server.base_url, audio_format,
                                    concurrency, args.rounds * concurrency)
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        pool.shutdown()
        server.stop()
    middle = sorted(args.concurrency)[len(args.concurrency) // 2]
    result = {
        "command": "python bench/host.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "step_ms": args.step_ms, "client_processes": args.client_processes,
        "server_cpu_ms_per_audio_s": {r["format"]: r["server_cpu_ms_per_audio_s"] for r in rows
                                      if r["concurrency"] == middle},
        "server_cpu_ms_per_audio_s_by_thread": {r["format"]: r["server_cpu_ms_per_audio_s_by_thread"] for r in rows
                                                if r["concurrency"] == middle},
        "server_wakeups_per_s_by_thread": {r["format"]: r["server_wakeups_per_s_by_thread"] for r in rows
                                           if r["concurrency"] == middle},
        # The highest concurrency at which every stream played without running dry and the p99 time to
        # first audio stayed under 500 ms; None where playback cannot be followed (compressed formats).
        "realtime_streams": {fmt: _realtime(rows, fmt) for fmt in args.formats},
        # What each format's encoder alone costs on this machine (measured in this process), under
        # the server's figure: pcm and wav are a sample conversion, mp3 and opus a codec.
        "encoder_ms_per_audio_s": {fmt: encoder_ms_per_audio_s(fmt) for fmt in args.formats},
        # The mean wall time of an engine step (sleep, scheduling, handing out the tokens, waiting
        # for the GIL) at the middle concurrency, against step_ms simulated.
        "step_ms_effective": {r["format"]: r["step_ms_effective"] for r in rows if r["concurrency"] == middle},
        "levels": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "levels"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
