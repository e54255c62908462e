"""`orpheus-local bench`: latency benchmark of any server speaking Segmind's Orpheus route or OpenAI's
speech route: time to first audio, RTFx, streams that stay real-time, errors, per load level.

    orpheus-local bench --base-url http://127.0.0.1:8000 --concurrency 1,4,16,64 --out runs/local
    orpheus-local bench --base-url https://api.segmind.com/v1 --api-key KEY --no-stream --out runs/cloud
    orpheus-local bench --compare runs/local/results.json runs/cloud/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from tqdm import tqdm

from .clients import open_session
from .corpus import CORPUS, load_texts
from .load import closed_loop, open_loop
from .measure import measure
from .report import (
    CLOSED,
    OPEN,
    comparison,
    error_lines,
    level_label,
    realtime_capacity,
    summarize,
    table,
)
from .results_file import Level, Run, read_summaries, write_csv, write_json
from .target import APIS, Target

OPENAI_FORMATS = ("wav", "pcm", "mp3", "opus", "aac", "flac")
DEFAULT_OPEN_DURATION = 30.0  # seconds of arrivals per rate when neither --requests nor --duration is given


def _positive_ints(value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None
    if min(levels) < 1:
        raise argparse.ArgumentTypeError("every level must be at least 1")
    return levels


def _positive_floats(value: str) -> list[float]:
    try:
        rates = [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None
    if not all(r > 0 and math.isfinite(r) for r in rates):
        raise argparse.ArgumentTypeError("every rate must be above 0")
    return rates


def _positive(kind):
    def parse(value: str):
        number = kind(value)
        if not (number > 0 and math.isfinite(number)):  # an infinite duration would never stop
            raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {value}")
        return number
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orpheus-local bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="Writes OUT/results.json, OUT/results.csv and OUT/latency.png, and prints a summary per level.\n"
               "Exit status: 0 when any request succeeded, 1 when none did, 2 for bad arguments.",
    )
    target = p.add_argument_group("target")
    target.add_argument("--base-url", metavar="URL",
                        help="server root, with or without a trailing /v1 (e.g. http://127.0.0.1:8000)")
    target.add_argument("--api", choices=APIS, default="segmind",
                        help="segmind: POST /v1/orpheus-3b-0.1 (WAV); openai: POST /v1/audio/speech "
                             "(default: %(default)s)")
    target.add_argument("--api-key", metavar="KEY",
                        help="sent as x-api-key (segmind) or Authorization: Bearer (openai)")
    target.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                        help='segmind: ask for a chunked WAV with "stream": true, or the whole file '
                             "(default: stream)")
    target.add_argument("--format", dest="audio_format", choices=OPENAI_FORMATS, default="wav",
                        help="openai response_format; wav and pcm allow playback accounting (default: %(default)s)")
    target.add_argument("--stream-format", choices=("audio", "sse"), default="audio",
                        help="openai: raw audio bytes or server-sent events (default: %(default)s)")
    target.add_argument("--model", default="orpheus", help="openai model field (default: %(default)s)")
    target.add_argument("--voice", help="voice to ask for (default: the server's)")
    target.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="most audio tokens per request (default: the server's)")
    target.add_argument("--seed", type=int, help="sampling seed, an orpheus-local extension (default: none sent)")
    target.add_argument("--text-file", type=Path, metavar="FILE",
                        help="one text per line, used in turn (default: built-in corpus)")

    load = p.add_argument_group("load (each level is bounded and stops by itself)")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument("--concurrency", type=_positive_ints, default=[1, 4, 16, 64], metavar="N[,N...]",
                       help="closed loop: requests kept in flight, one level each (default: 1,4,16,64)")
    shape.add_argument("--rate", type=_positive_floats, metavar="R[,R...]",
                       help="open loop instead: Poisson arrivals, requests per second, one level each (e.g. 0.5,2)")
    budget = load.add_mutually_exclusive_group()
    budget.add_argument("--requests", type=_positive(int), metavar="N",
                        help="requests per level (default: 4 per concurrent request and at least 16; "
                             f"with --rate, {DEFAULT_OPEN_DURATION:g} s of arrivals)")
    budget.add_argument("--duration", type=_positive(float), metavar="S",
                        help="seconds per level in which requests are started")
    load.add_argument("--warmup", type=int, default=1, metavar="N",
                      help="uncounted requests sent first, one at a time (default: %(default)s)")
    load.add_argument("--timeout", type=_positive(float), default=300.0, metavar="S",
                      help="seconds one request may take in all (default: %(default)s)")

    output = p.add_argument_group("output")
    output.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                        help="output directory (default: %(default)s)")
    output.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"),
                        help="print two runs' results side by side and exit")
    return p


def _plan(args) -> list[tuple[str, float, int | None, float | None]]:
    """(mode, load, requests, duration) for each level."""
    unbounded = args.requests is None and args.duration is None
    if args.rate:
        duration = DEFAULT_OPEN_DURATION if unbounded else args.duration
        return [(OPEN, rate, args.requests, duration) for rate in args.rate]
    return [(CLOSED, c, max(16, 4 * c) if unbounded else args.requests, args.duration) for c in args.concurrency]


async def _run_level(session: aiohttp.ClientSession, target: Target, texts: list[str], mode: str, load: float,
                     requests: int | None, duration: float | None, timeout: float) -> Level:
    bar = tqdm(total=requests, desc=level_label(mode, load), unit="req", disable=None, file=sys.stderr)
    failed = 0
    origin = time.perf_counter()

    async def send(index: int):
        nonlocal failed
        result = await measure(session, target, texts[index % len(texts)], index, origin, timeout)
        failed += not result.ok
        bar.set_postfix(errors=failed, refresh=False)
        bar.update(1)
        return result

    if mode == CLOSED:
        results = await closed_loop(send, int(load), requests, duration)
    else:
        results = await open_loop(send, load, requests, duration)
    wall = time.perf_counter() - origin
    bar.close()
    return Level(summarize(mode, load, results, wall, target.playback_accounted), results)


async def benchmark_levels(target: Target, texts: list[str], plan, warmup: int, timeout: float) -> list[Level]:
    async with open_session() as session:
        warm = []
        for i in range(warmup):
            warm.append(await measure(session, target, texts[i % len(texts)], i, time.perf_counter(), timeout))
        if any(not r.ok for r in warm):
            print(f"warm-up: {sum(not r.ok for r in warm)} of {warmup} failed; "
                  + "; ".join(error_lines(warm)), file=sys.stderr)
        return [await _run_level(session, target, texts, *level, timeout) for level in plan]


def _describe(target: Target) -> str:
    if target.api == "segmind":
        how = "streamed wav" if target.stream else "whole wav file"
    else:
        how = f"{target.audio_format}" + (" in sse events" if target.sse else "")
    return f"{target.api} {target.url} ({how})"


def run_benchmark(args, texts: list[str]) -> int:
    target = Target(
        base_url=args.base_url, api=args.api, api_key=args.api_key, stream=args.stream,
        audio_format=args.audio_format, stream_format=args.stream_format, model=args.model,
        voice=args.voice, max_new_tokens=args.max_new_tokens, seed=args.seed,
    )
    plan = _plan(args)
    for mode, load, requests, _ in plan:
        if mode == CLOSED and requests is not None and requests < load:
            print(f"note: concurrency {load} with {requests} requests never has more than {requests} in flight",
                  file=sys.stderr)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"benchmarking {_describe(target)}", flush=True)
    levels = asyncio.run(benchmark_levels(target, texts, plan, args.warmup, args.timeout))

    summaries = [level.summary for level in levels]
    meta = {
        "target": target.describe(), "started_at": started,
        "texts": str(args.text_file) if args.text_file else f"built-in corpus ({len(CORPUS)} texts)",
        "warmup": args.warmup, "timeout": args.timeout,
        "plan": [{"mode": mode, "load": load, "requests": requests, "duration": duration}
                 for mode, load, requests, duration in plan],
    }
    run = Run(meta, levels, realtime_capacity(summaries))
    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / "results.json", args.out / "results.csv"]
    write_json(written[0], run)
    write_csv(written[1], run)
    try:
        from .plots import plot_latency
    except ImportError as exc:  # matplotlib missing: the numbers still stand
        print(f"no plot: {exc}", file=sys.stderr)
    else:
        written.append(args.out / "latency.png")
        plot_latency(summaries, written[-1], _describe(target))

    print(table(summaries))
    if run.realtime_capacity is not None:
        print(f"real-time streams: {run.realtime_capacity} (highest concurrency with no underrun "
              "and p99 time to first audio under 500 ms)")
    errors = error_lines([r for level in levels for r in level.requests])
    if errors:
        print("errors:\n  " + "\n  ".join(errors))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0 if any(s.succeeded for s in summaries) else 1


def compare(paths: list[Path]) -> int:
    runs = []
    for name, path in zip("ab", paths):
        try:
            meta, levels = read_summaries(path)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        target = meta.get("target", {})
        print(f"{name}: {path}: {target.get('api')} {target.get('url')}, started {meta.get('started_at')}")
        runs.append((name, levels))
    print(comparison(*runs))
    capacities = [(name, realtime_capacity(levels)) for name, levels in runs]
    if any(c is not None for _, c in capacities):
        print("real-time streams: " + ", ".join(f"{name} {'-' if c is None else c}" for name, c in capacities))
    return 0


def _http_url(text: str) -> bool:
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args.compare)
    if not args.base_url:
        parser.error("--base-url is required (or --compare A.json B.json)")
    if not _http_url(args.base_url):
        parser.error(f"--base-url must be an http:// or https:// URL, got {args.base_url!r}")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    try:
        texts = load_texts(args.text_file) if args.text_file else list(CORPUS)
    except (OSError, ValueError) as exc:
        parser.error(f"--text-file: {exc}")
    return run_benchmark(args, texts)
