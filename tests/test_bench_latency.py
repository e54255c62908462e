"""`orpheus-local bench`: short runs against the demo server on loopback, an unreachable port and a
stub that answers 429; and the audio counting, event parsing and load shapes the numbers rest on."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import random
import struct
import threading
import wave
from contextlib import contextmanager, redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import numpy as np
import pytest
from support.process import free_port, start_server

from bench.audio_meter import AudioError, PcmMeter, WavMeter, meter_for
from bench.latency import main
from bench.load import closed_loop, open_loop
from bench.measure import RequestResult, error_message
from bench.report import CLOSED, summarize
from bench.sse import SpeechEvents
from orpheus_local.audio.encoders import encode_audio, wav_stream_header

KEY = "bench-test-key"
TEXT = "Hello, bench!"  # one part at 100 tokens: 14 frames of audio
SHORT = ["--max-new-tokens", "100", "--seed", "1", "--timeout", "60"]  # the API's shortest generation


@pytest.fixture(scope="module")
def server(demo_dirs, demo_config, tmp_path_factory):
    """Base URL of `orpheus-local serve --demo` requiring API key KEY."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# bench tests\n{KEY}\n")
    process = start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu", "--backend",
                           demo_config.backend, "--api-keys-file", str(keys), "--log-level", "warning")
    try:
        yield process.base_url
    finally:
        process.stop(timeout=30)


@pytest.fixture(scope="module")
def segmind_run(server, tmp_path_factory):
    """A streamed Segmind run at concurrency 1 and 2, three requests each: (out dir, exit code, stdout)."""
    out = tmp_path_factory.mktemp("segmind")
    text_file = out / "texts.txt"
    text_file.write_text(f"\n{TEXT}\n\n")
    return out, *_bench(["--base-url", server, "--api-key", KEY, "--concurrency", "1,2", "--requests", "3",
                         "--text-file", str(text_file), "--out", str(out), *SHORT])


@pytest.fixture(scope="module")
def openai_run(server, tmp_path_factory):
    """OpenAI route, mp3 in server-sent events: decoded with PyAV, no playback accounting."""
    out = tmp_path_factory.mktemp("openai")
    text_file = out / "texts.txt"
    text_file.write_text(f"{TEXT}\n")
    return out, *_bench(["--base-url", f"{server}/v1", "--api", "openai", "--api-key", KEY, "--format", "mp3",
                         "--stream-format", "sse", "--concurrency", "2", "--requests", "2", "--warmup", "0",
                         "--text-file", str(text_file), "--out", str(out), *SHORT])


def _bench(argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of a run; by hand, as capsys cannot serve module-scoped fixtures."""
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


def test_short_run_writes_consistent_json_csv_and_png(server, segmind_run):
    out, code, stdout = segmind_run
    assert code == 0, stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["target"]["url"] == f"{server}/v1/orpheus-3b-0.1"
    assert KEY not in (out / "results.json").read_text()

    # The audio the server sends for this request, decoded independently of the benchmark.
    answer = httpx.post(f"{server}/v1/orpheus-3b-0.1", headers={"x-api-key": KEY}, timeout=60,
                        json={"text": TEXT, "max_new_tokens": 100, "seed": 1})
    with wave.open(io.BytesIO(answer.content)) as w:
        samples = w.getnframes()

    levels = doc["levels"]
    assert [(lv["summary"]["mode"], lv["summary"]["load"]) for lv in levels] == [(CLOSED, 1), (CLOSED, 2)]
    for level in levels:
        s, requests = level["summary"], level["requests"]
        assert s["requests"] == len(requests) == 3
        assert s["succeeded"] + sum(s["errors"].values()) == s["requests"] and s["errors"] == {}
        assert s["ttfa_p50"] <= s["ttfa_p95"] <= s["ttfa_p99"] and s["total_p50"] <= s["total_p95"] <= s["total_p99"]
        assert s["streams_accounted"] == 3 and 0 <= s["realtime_streams"] <= 3
        assert s["audio_seconds"] == pytest.approx(3 * samples / 24000)
        for r in requests:
            assert (r["status"], r["samples"], r["sample_rate"]) == (200, samples, 24000)
            assert r["audio_seconds"] == samples / 24000
            assert 0 < r["ttfa"] <= r["total"] and r["rtfx"] == pytest.approx(r["audio_seconds"] / r["total"])
            assert r["chunks"] >= 1 and r["underruns"] is not None and r["stall_seconds"] >= 0

    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    flat = [r for level in levels for r in level["requests"]]
    assert [float(row["ttfa"]) for row in rows] == [r["ttfa"] for r in flat]
    assert {int(row["samples"]) for row in rows} == {samples}

    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "concurrency 1" in stdout and "concurrency 2" in stdout and "ttfa p50" in stdout


def test_openai_sse_mp3_is_decoded_for_its_duration(openai_run):
    out, code, stdout = openai_run
    assert code == 0, stdout
    level = json.loads((out / "results.json").read_text())["levels"][0]
    summary, requests = level["summary"], level["requests"]
    assert summary["succeeded"] == 2 and summary["realtime"] is None and summary["streams_accounted"] == 0
    for r in requests:
        # mp3 at 24 kHz: whole frames of 1152 samples around the model's 14 x 2048.
        assert r["sample_rate"] == 24000 and abs(r["samples"] - 14 * 2048) < 2 * 1152
        assert r["underruns"] is None and r["audio_seconds"] == r["samples"] / 24000


def test_missing_api_key_is_counted_as_401(server, tmp_path, capsys):
    code = main(["--base-url", server, "--concurrency", "1,2", "--requests", "2", "--warmup", "0",
                 "--out", str(tmp_path), *SHORT])
    assert code == 1
    out = capsys.readouterr().out
    assert "401: 4 requests (Missing Authorization or x-api-key in header)" in out
    levels = json.loads((tmp_path / "results.json").read_text())["levels"]
    for level in levels:
        assert level["summary"]["errors"] == {"401": 2} and level["summary"]["error_rate"] == 1.0
        assert all(r["status"] == 401 and r["ttfa"] is None for r in level["requests"])


def test_unreachable_url_is_counted_as_connect_errors(tmp_path, capsys):
    code = main(["--base-url", f"http://127.0.0.1:{free_port()}", "--concurrency", "2", "--requests", "3",
                 "--out", str(tmp_path)])
    assert code == 1
    assert "connect: 3 requests" in capsys.readouterr().out
    summary = json.loads((tmp_path / "results.json").read_text())["levels"][0]["summary"]
    assert (summary["requests"], summary["succeeded"], summary["errors"]) == (3, 0, {"connect": 3})
    assert summary["ttfa_p50"] is None and (tmp_path / "results.csv").is_file()


class _TooManyRequests(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"error": "too many requests in flight"}).encode()
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("retry-after", "1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def stub_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """The base URL of a server on loopback answering with `handler`, stopped on leaving."""
    stub = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{stub.server_port}"
    finally:
        stub.shutdown()
        stub.server_close()


def test_429_answers_are_counted_by_status(tmp_path, capsys):
    with stub_server(_TooManyRequests) as base_url:
        code = main(["--base-url", base_url, "--api", "openai", "--rate", "50", "--requests", "5",
                     "--out", str(tmp_path)])
    assert code == 1
    assert "429: 5 requests (too many requests in flight)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "results.json").read_text())["levels"][0]["summary"]
    assert (summary["mode"], summary["load"], summary["errors"], summary["error_rate"]) == ("open", 50, {"429": 5}, 1.0)


class _CutMidStream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"1000\r\n" + bytes(100))  # a chunk of 4096 bytes announced, 100 sent
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_stream_cut_short_is_counted_as_a_transport_error(tmp_path, capsys):
    with stub_server(_CutMidStream) as base_url:
        code = main(["--base-url", base_url, "--api", "openai", "--format", "pcm", "--concurrency", "2",
                     "--requests", "3", "--warmup", "0", "--out", str(tmp_path)])
    assert code == 1
    assert "transport: 3 requests" in capsys.readouterr().out
    summary = json.loads((tmp_path / "results.json").read_text())["levels"][0]["summary"]
    assert (summary["requests"], summary["succeeded"], summary["errors"]) == (3, 0, {"transport": 3})


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://example.com", "http://", "http://h:99999", "http://[::1"])
def test_a_base_url_that_is_not_http_is_refused_before_any_request(url, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--base-url", url])
    assert exit_.value.code == 2
    assert "--base-url must be an http:// or https:// URL" in capsys.readouterr().err


def test_compare_prints_both_runs(segmind_run, openai_run, capsys):
    a, b = segmind_run[0] / "results.json", openai_run[0] / "results.json"
    assert main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"a: {a}" in out and f"b: {b}" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("concurrency", " "))]
    # concurrency 1: run a only; concurrency 2: run a, then run b on a row of its own
    assert [(row[1], row[2]) if row[0] == "concurrency" else row[0] for row in rows] == [("1", "a"), ("2", "a"), "b"]


def test_compare_refuses_a_file_that_is_not_a_run(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert main(["--compare", str(other), str(other)]) == 2
    assert "not a benchmark results file" in capsys.readouterr().err


# --- what the numbers rest on -------------------------------------------------------------------


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        out.append(data[pos:pos + n])
        pos += n
    return out + [data[pos:]]


def test_wav_stream_is_counted_per_read_with_split_header_and_samples():
    body = wav_stream_header() + b"\x01\x00" * 4800  # 0.2 s
    meter = WavMeter()
    seconds = [meter.feed(part) for part in _split(body, [10, 30, 5, 1000, 2])]
    assert seconds[:2] == [0.0, 0.0]  # header still incomplete
    assert sum(seconds) == pytest.approx(0.2) and meter.finish().samples == 4800
    assert seconds[3:5] == [500 / 24000, 1 / 24000]  # a sample split across reads counts once complete


def test_whole_wav_file_counts_only_its_data_chunk():
    pcm = np.zeros(3000, np.float32)
    wav = encode_audio(pcm, "wav")
    # A LIST chunk before the data and trailing bytes after it, as some encoders write.
    listed = wav[:36] + b"LIST" + struct.pack("<I", 5) + b"hello\x00" + wav[36:] + b"junk"
    meter = WavMeter()
    meter.feed(listed)
    assert meter.finish().samples == 3000
    with pytest.raises(AudioError):
        WavMeter().feed(b"ID3" + b"\x00" * 20)


def test_pcm_and_compressed_meters():
    pcm = PcmMeter()
    assert pcm.feed(b"\x00" * 4801) == 2400 / 24000 and pcm.feed(b"\x00") == 1 / 24000
    flac = meter_for("flac")
    assert flac.feed(encode_audio(np.zeros(4096, np.float32), "flac")) is None
    assert flac.finish().samples == 4096
    with pytest.raises(AudioError):
        meter_for("mp3").finish()


def test_speech_events_yield_audio_across_reads():
    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\r\n\r\n".encode()

    body = (event({"type": "speech.audio.delta", "audio": base64.b64encode(b"abc").decode()})
            + b": keep-alive\n\n"
            + event({"type": "speech.audio.delta", "audio": base64.b64encode(b"de").decode()})
            + event({"type": "speech.audio.done"}))
    events = SpeechEvents()
    assert b"".join(events.feed(part) for part in _split(body, [7, 40, 1, 33])) + events.finish() == b"abcde"
    with pytest.raises(AudioError):
        SpeechEvents().feed(b'data: {"type": "speech.audio.delta", "audio": "!!"}\n\n')


def test_error_messages_of_both_apis():
    assert error_message(b'{"error": "Missing key"}') == "Missing key"
    assert error_message(b'{"error": {"message": "Rate limited", "type": "x"}}') == "Rate limited"
    assert error_message(b"<html>Bad gateway</html>") == "<html>Bad gateway</html>"


class FakeTime:
    """A clock that moves only when the code under test sleeps on it (or a test advances it)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # the other tasks run at the start of the sleep, as during a real one
        self.now += seconds


async def test_closed_loop_keeps_the_concurrency_and_stops_at_the_count_or_the_time():
    in_flight, peak = 0, 0
    clock = FakeTime()
    issued_at = []

    async def send(i):
        nonlocal in_flight, peak
        issued_at.append(clock())
        in_flight += 1
        peak = max(peak, in_flight)
        await clock.sleep(0.01)
        in_flight -= 1
        return i

    assert await closed_loop(send, 3, requests=10) == list(range(10)) and peak == 3
    clock.now, issued_at = 0.0, []
    results = await closed_loop(send, 2, duration=0.1, clock=clock)
    assert results == list(range(len(results))) and len(results) >= 10
    assert max(issued_at) < 0.1 <= clock()  # every request started in time; it stopped once time was up


async def test_open_loop_arrivals_follow_the_seeded_poisson_schedule():
    clock = FakeTime()
    sent = []

    async def send(i):
        sent.append(clock())
        return i

    assert await open_loop(send, rate=200, requests=40, clock=clock, sleep=clock.sleep) == list(range(40))
    draws = random.Random(0)
    expected = np.cumsum([0.0] + [draws.expovariate(200) for _ in range(39)])
    np.testing.assert_allclose(sent, expected, rtol=0, atol=1e-12)  # exactly the schedule of seed 0
    clock.now, sent = 0.0, []
    count = len(await open_loop(send, rate=100, duration=0.2, clock=clock, sleep=clock.sleep))
    draws = random.Random(0)
    due = np.cumsum([draws.expovariate(100) for _ in range(200)])
    assert count == 1 + int(np.sum(due < 0.2)) and max(sent) < 0.2


def test_summary_counts_and_realtime_rule():
    def ok(i, ttfa, underruns):
        return RequestResult(index=i, sent_at=0, status=200, ttfa=ttfa, total=1.0, audio_seconds=2.0, rtfx=2.0,
                             underruns=underruns, stall_seconds=0.0)

    results = [ok(0, 0.1, 0), ok(1, 0.2, 0), RequestResult(index=2, sent_at=0, status=429, error="429")]
    s = summarize(CLOSED, 3, results, wall_seconds=2.0, streamed=True)
    assert (s.requests, s.succeeded, s.errors, s.realtime_streams, s.realtime) == (3, 2, {"429": 1}, 2, False)
    assert s.rtfx_aggregate == 2.0 and s.ttfa_p50 == pytest.approx(0.15)
    s = summarize(CLOSED, 2, results[:2], wall_seconds=2.0, streamed=True)
    assert s.realtime is True and summarize(CLOSED, 2, results[:2], 2.0, streamed=False).realtime is None
