"""One generation as the routes see it: admission, PCM chunks with their measurements, and the
core's errors in HTTP terms."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing, contextmanager
from typing import AsyncIterator, Callable

import numpy as np
from fastapi import Request

from orpheus_local.audio.encoders import StreamEncoder, encode_audio
from orpheus_local.memory import release_free_memory
from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.synthesizer import Synthesizer
from orpheus_local.tokens import SAMPLE_RATE

from . import request_log
from .encoding import EncoderPool
from .errors import busy, from_core, generation_failed
from .metrics import Metrics
from .streaming import unless_disconnected

log = logging.getLogger(__name__)

IDLE_TRIM_S = 1.0


class Admission:
    """Counts requests generating or waiting for the engine and refuses more than `limit` (429), or
    any while `overloaded()` gives a reason (None: fine), e.g. a codec too far behind.
    Event loop only: no lock, since acquire and release never run on another thread."""

    def __init__(self, limit: int, overloaded: Callable[[], str | None] | None = None):
        self.limit = limit
        self.overloaded = overloaded
        self.count = 0

    def acquire(self) -> None:
        if self.count >= self.limit:
            raise busy(f"{self.limit} requests are already in flight")
        if self.overloaded is not None and (reason := self.overloaded()) is not None:
            raise busy(reason)
        self.count += 1

    def release(self) -> None:
        self.count -= 1
        if self.count == 0:  # idle: give back the allocator's peak once the last encoder is done
            asyncio.get_running_loop().call_later(IDLE_TRIM_S, self._trim_if_idle)  # releases run in the loop

    def _trim_if_idle(self) -> None:
        if self.count == 0:
            asyncio.get_running_loop().run_in_executor(None, release_free_memory)

    @contextmanager
    def hold(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


async def pcm_chunks(
    synth: Synthesizer, params: SynthesisParams, request_id: str, metrics: Metrics, *, whole_file: bool = False,
    text_field: str = "text",
) -> AsyncIterator[np.ndarray]:
    """synth.stream(), measured, with failures turned into ApiErrors (500s keep their trace in the log).
    whole_file: the audio goes out as one file (same seed, same bytes); else it streams.
    text_field: the route's name for the text, for errors about it."""
    record = request_log.current()
    record.request_id = request_id
    start = time.perf_counter()
    samples = 0

    def count_guard(guard: str, action: str) -> None:
        metrics.guards.labels(guard, action).inc()

    try:
        # aclosing: leaving early cancels the engine request now, not when the generator is collected
        async with aclosing(synth.stream(params, request_id, on_guard=count_guard, whole_file=whole_file)) as stream:
            async for pcm in stream:
                if not samples and pcm.size:
                    record.ttfa_s = time.perf_counter() - start
                    metrics.time_to_first_audio.observe(record.ttfa_s)
                samples += len(pcm)
                yield pcm
        metrics.generation_seconds.observe(time.perf_counter() - start)
    except Exception as exc:
        if (error := from_core(exc, text_field)) is not None:  # busy, not ready, or the input's fault
            raise error from None
        log.exception("generation of request %s failed", request_id)
        raise generation_failed(request_id) from None
    finally:
        record.audio_s, record.generation_s = samples / SAMPLE_RATE, time.perf_counter() - start
        metrics.audio_seconds.inc(record.audio_s)


async def collect(chunks: AsyncIterator[np.ndarray], on_first: Callable[[], None] | None = None) -> np.ndarray:
    """All chunks joined; on_first runs when the first audio arrives."""
    pieces = []
    async with aclosing(chunks):
        async for pcm in chunks:
            if not pieces and on_first is not None:
                on_first()
            pieces.append(pcm)
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


async def whole_file(request: Request, admission: Admission, pool: EncoderPool, chunks: AsyncIterator[np.ndarray],
                     fmt: str, speed: float) -> bytes:
    """One complete file in `fmt` (real header sizes), holding an admission place while generating;
    a client that leaves cancels the generation."""
    with admission.hold():
        pcm = await unless_disconnected(request, collect(chunks))
    return await pool.run(encode_audio, pcm, fmt, SAMPLE_RATE, speed)


async def encoded(admission: Admission, pool: EncoderPool, chunks: AsyncIterator[np.ndarray],
                  encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """Encoded bytes as soon as the encoder has any, holding an admission place meanwhile. Each chunk
    is encoded on the pool, in order: the next waits for the one before; a light encoder (wav, pcm)
    runs here, where a thread hop would cost more than the conversion."""
    with admission.hold():
        async with aclosing(chunks):
            async for pcm in chunks:
                if data := encoder.encode(pcm) if encoder.light else await pool.run(encoder.encode, pcm):
                    yield data
        if data := encoder.finish() if encoder.light else await pool.run(encoder.finish):
            yield data
