"""Loopback load: concurrent clients sending a mix of routes and formats, some streamed, each answer
checked for complete audio, with the time to first audio and the status of every request."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import random
import time
import wave
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import av
import httpx
import support.wav

from bench.playback import percentile

V1 = "/v1/orpheus-3b-0.1"
V2 = "/v2/orpheus-3b-0.1"
SPEECH = "/v1/audio/speech"
SAMPLES_PER_FRAME = 2048
# Each fits one part even at the shortest max_new_tokens (16 characters at 100 tokens), so every
# answer is a whole number of frames: a client-side check that the audio is complete.
TEXTS = ("Hello there.", "<sigh> A nap.", "<laugh> No way!", "The quick fox.", "One, two, three.")
# Every route and format; the streamed ones carry most of the time-to-first-audio figures.
KINDS = ("v1", "v1-stream", "v2", "speech-mp3", "speech-opus", "speech-aac", "speech-flac", "speech-wav",
         "speech-pcm", "speech-sse")


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no HTTP answer (a transport error)
    total_s: float
    ttfa_s: float | None = None  # until the first audio bytes (streamed kinds)
    complete: bool = False  # the audio of a 200 decoded whole
    error: str | None = None
    retry_after_s: float = 1.0  # a 429's Retry-After
    final: bool = True  # the last attempt of its request


class Incomplete(Exception):
    pass


def wav_samples(data: bytes) -> int:
    """Samples in a 24 kHz mono 16-bit WAV, whole or streamed; Incomplete if it is not one."""
    try:
        return support.wav.wav_samples(data)
    except (AssertionError, wave.Error, EOFError) as exc:
        raise Incomplete(f"not a whole WAV: {exc}") from None


def whole_frames(samples: int) -> None:
    if samples <= 0 or samples % SAMPLES_PER_FRAME:
        raise Incomplete(f"{samples} samples: not whole frames")


def decoded_samples(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(frame.samples for frame in container.decode(container.streams.audio[0]))


def check_audio(kind: str, data: bytes) -> None:
    """Raise Incomplete unless data is the whole audio a request of this kind should get."""
    fmt = kind.split("-", 1)[1] if kind.startswith("speech-") else "wav"
    if fmt == "wav":
        whole_frames(wav_samples(data))
    elif fmt == "pcm":
        if len(data) % 2:
            raise Incomplete("odd pcm length")
        whole_frames(len(data) // 2)
    elif fmt == "sse":
        events = [json.loads(block[len("data: "):]) for block in data.decode().split("\n\n") if block]
        if not events or events[-1] != {"type": "speech.audio.done"}:
            raise Incomplete("no speech.audio.done event")
        whole_frames(sum(len(base64.b64decode(e["audio"])) for e in events[:-1]) // 2)
    elif decoded_samples(data) <= 0:
        raise Incomplete(f"no audio in the {fmt}")


def request_for(kind: str, text: str, max_new_tokens: int, seed: int) -> tuple[str, dict]:
    if kind.startswith("speech-"):
        fmt = kind.split("-", 1)[1]
        body = {"input": text, "voice": "tara", "max_new_tokens": max_new_tokens, "seed": seed,
                "response_format": "pcm" if fmt == "sse" else fmt}
        if fmt == "sse":
            body["stream_format"] = "sse"
        return SPEECH, body
    body = {"text": text, "voice": "tara", "max_new_tokens": max_new_tokens, "seed": seed}
    if kind == "v1-stream":
        body["stream"] = True
    return (V2 if kind == "v2" else V1), body


async def one_request(client: httpx.AsyncClient, kind: str, text: str, max_new_tokens: int, seed: int,
                      poll_s: float = 0.1) -> Outcome:
    path, body = request_for(kind, text, max_new_tokens, seed)
    started = time.perf_counter()
    outcome = Outcome(kind, None, 0.0)
    try:
        async with client.stream("POST", path, json=body) as response:
            outcome.status = response.status_code
            outcome.retry_after_s = float(response.headers.get("retry-after", 1))
            chunks = []
            async for chunk in response.aiter_bytes():
                if outcome.ttfa_s is None and chunk and response.status_code == 200 and kind != "v2":
                    outcome.ttfa_s = time.perf_counter() - started
                chunks.append(chunk)
        data = b"".join(chunks)
        if outcome.status == 200:
            if kind == "v2":
                data = await _v2_audio(client, json.loads(data), poll_s)
                outcome.ttfa_s = time.perf_counter() - started
            check_audio(kind, data)
            outcome.complete = True
        else:
            outcome.error = data[:200].decode("utf-8", "replace")
    except Incomplete as exc:
        outcome.error = f"incomplete audio: {exc}"
    except (httpx.HTTPError, av.FFmpegError, ValueError, KeyError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.total_s = time.perf_counter() - started
    return outcome


async def _v2_audio(client: httpx.AsyncClient, job: dict, poll_s: float) -> bytes:
    while True:
        status = await client.get(job["status_url"])
        state = status.json()["status"]
        if state == "COMPLETED":
            break
        if status.status_code != 200 or state not in ("QUEUED", "PROCESSING"):
            raise Incomplete(f"job {state}: {status.text[:200]}")
        await asyncio.sleep(poll_s)
    result = (await client.get(job["response_url"])).json()
    audio = await client.get(result["output"])
    audio.raise_for_status()
    return audio.content


async def run_load(base_url: str, *, concurrency: int, requests: int | None = None, duration_s: float | None = None,
                   headers: dict | None = None, kinds=KINDS, max_new_tokens: int = 100, max_attempts: int = 1000,
                   on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """concurrency clients send requests of the given kinds in turn, until `requests` have been sent
    or duration_s has passed. A request answered 429 is sent again after its Retry-After, as a
    well-behaved client does, up to max_attempts times. Returns every attempt's outcome; the last
    attempt of each request has final=True."""
    if requests is None and duration_s is None:
        raise ValueError("give requests, duration_s or both")
    rng = random.Random(0)
    outcomes: list[Outcome] = []
    sent = 0
    deadline = math.inf if duration_s is None else time.monotonic() + duration_s

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while (requests is None or sent < requests) and time.monotonic() < deadline:
            n = sent
            sent += 1
            text = rng.choice(TEXTS)
            for attempt in range(1, max_attempts + 1):
                outcome = await one_request(client, kinds[n % len(kinds)], text, max_new_tokens, n)
                outcome.final = outcome.status != 429 or attempt == max_attempts
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
                if outcome.final:
                    break
                await asyncio.sleep(outcome.retry_after_s)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return outcomes


def optional_percentile(values: list[float], q: float) -> float | None:
    """bench's percentile, None (not nan) for no values: a summary field that may be absent."""
    return percentile(values, q) if values else None


@dataclass
class Summary:
    requests: int  # each counted once, however often it was sent again after a 429
    attempts: int
    by_status: dict  # over every attempt; "None" for no HTTP answer
    served: int  # requests answered 200 with complete audio
    ttfa_p50_s: float | None  # streamed requests: until their first audio bytes
    ttfa_p99_s: float | None
    latency_p99_s: float | None  # requests served: from their last attempt to the end of the audio

    @classmethod
    def of(cls, outcomes: list[Outcome]) -> "Summary":
        served = [o for o in outcomes if o.status == 200 and o.complete]
        streamed = [o.ttfa_s for o in served if o.ttfa_s is not None and o.kind not in ("v1", "v2")]
        return cls(
            requests=sum(o.final for o in outcomes),
            attempts=len(outcomes),
            by_status=dict(sorted(Counter(str(o.status) for o in outcomes).items())),
            served=len(served),
            ttfa_p50_s=optional_percentile(streamed, 50),
            ttfa_p99_s=optional_percentile(streamed, 99),
            latency_p99_s=optional_percentile([o.total_s for o in served], 99),
        )

    def line(self) -> str:
        def s(value):
            return "-" if value is None else f"{value:.2f} s"

        return (f"{self.requests} requests in {self.attempts} attempts, {self.served} served with complete audio; "
                f"attempts by status {self.by_status}; time to first audio (streamed) p50 {s(self.ttfa_p50_s)}, "
                f"p99 {s(self.ttfa_p99_s)}; latency p99 {s(self.latency_p99_s)}")


def parse_metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition: name -> value."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            samples[name] = float(value)
    return samples
