"""One timed request: time to first audio, total time, audio seconds, playback stalls, or why it failed."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp

from .audio_meter import AudioError, meter_for
from .playback import playback
from .sse import SpeechEvents
from .target import Target

# Failure kinds that have no HTTP status; a refused or failed request is recorded by its status code.
CONNECT, TIMEOUT, TRANSPORT, BAD_AUDIO, NO_AUDIO = "connect", "timeout", "transport", "bad audio", "no audio"


@dataclass
class RequestResult:
    index: int  # order the request was sent in, within its level
    sent_at: float  # seconds after the level started
    status: int | None = None  # HTTP status; None when no response came
    error: str | None = None  # None on success; else the status code as text or a failure kind
    message: str | None = None  # the server's error message, or the exception's
    ttfa: float | None = None  # seconds from sending to the first audio byte
    total: float | None = None  # seconds from sending to the last byte
    audio_seconds: float | None = None
    samples: int | None = None  # decoded samples per channel, at sample_rate
    sample_rate: int | None = None
    rtfx: float | None = None  # audio seconds per second of total time
    chunks: int = 0  # reads that carried audio (completed samples, for wav and pcm)
    underruns: int | None = None  # None where playback cannot be accounted (whole file, compressed)
    stall_seconds: float | None = None
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


async def measure(session: aiohttp.ClientSession, target: Target, text: str, index: int, origin: float,
                  timeout: float) -> RequestResult:
    """Send one request and time it; every failure becomes a result, never an exception.

    origin: the level's start (perf_counter), for sent_at. timeout bounds the whole exchange.
    """
    start = time.perf_counter()
    result = RequestResult(index=index, sent_at=start - origin)
    try:
        await asyncio.wait_for(_exchange(session, target, text, start, result), timeout)
    except asyncio.TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
        _fail(result, TIMEOUT, f"no complete answer within {timeout:g} s")
    except aiohttp.ClientConnectorError as exc:
        _fail(result, CONNECT, str(exc) or type(exc).__name__)
    except aiohttp.ClientError as exc:  # the connection broke, or the response was not valid HTTP
        _fail(result, TRANSPORT, str(exc) or type(exc).__name__)
    except AudioError as exc:
        _fail(result, BAD_AUDIO, str(exc))
    return result


def _fail(result: RequestResult, error: str, message: str) -> None:
    result.error, result.message = error, message
    # A failed request's partial timings would skew the percentiles of the successful ones.
    result.ttfa = result.total = result.audio_seconds = result.rtfx = result.underruns = result.stall_seconds = None
    result.samples = result.sample_rate = None


async def _exchange(session: aiohttp.ClientSession, target: Target, text: str, start: float,
                    result: RequestResult) -> None:
    async with session.post(target.url, json=target.body(text), headers=target.headers()) as response:
        result.status = response.status
        if response.status != 200:
            _fail(result, str(response.status), error_message(await response.read()))
            return
        received = _Reception(meter_for(target.response_format))
        events = SpeechEvents() if target.sse else None
        async for data in response.content.iter_any():  # each read as it arrives
            now = time.perf_counter()
            result.bytes += len(data)
            received.add(events.feed(data) if events else data, now)
        if events:
            received.add(events.finish(), time.perf_counter())
    end = time.perf_counter()
    decoded = await asyncio.to_thread(received.meter.finish)  # PyAV decoding would stall other streams' clocks
    if not decoded.samples:
        _fail(result, NO_AUDIO, "the response held no audio samples")
        return
    result.ttfa, result.total = received.first_audio - start, end - start
    result.samples, result.sample_rate, result.audio_seconds = decoded.samples, decoded.sample_rate, decoded.seconds
    result.rtfx = decoded.seconds / result.total
    result.chunks = received.chunks
    if target.playback_accounted:
        played = playback(start, received.arrivals, received.durations)
        result.underruns, result.stall_seconds = played.underruns, played.stall_seconds


class _Reception:
    """Audio as it arrives: reads that carried audio, when the first came, and for wav and pcm how
    many seconds each read completed."""

    def __init__(self, meter):
        self.meter = meter
        self.arrivals: list[float] = []
        self.durations: list[float] = []
        self.first_audio: float | None = None
        self.chunks = 0

    def add(self, audio: bytes, now: float) -> None:
        seconds = self.meter.feed(audio)
        if seconds:
            self.arrivals.append(now)
            self.durations.append(seconds)
        # Compressed audio cannot be counted per read: its encoded bytes stand for audio.
        if seconds or (seconds is None and audio):
            self.chunks += 1
            self.first_audio = self.first_audio or now


def error_message(body: bytes) -> str:
    """The message of Segmind's {"error": "..."} or OpenAI's {"error": {"message": ...}}, else the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:200]
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else text[:200]
