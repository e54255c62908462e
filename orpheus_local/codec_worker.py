"""CodecWorker: one thread that decodes the ready windows of every open stream in batched calls.

The event loop pushes frames into a stream's StreamDecoder and wakes the worker; the worker decodes
all streams' ready windows together (SNAC batches windows of equal length) and hands each PCM chunk
back to its stream's asyncio queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from .codec import SnacCodec, StreamDecoder
from .memory import release_free_memory

log = logging.getLogger(__name__)

_END = object()
TICK_S = 0.02  # a stream waiting to grow its next chunk is looked at again this often
# glibc keeps the peak of a busy spell (decoder activations: hundreds of MB under load, and more
# after each spell); once nothing has been decoded for this long, it is handed back to the system.
TRIM_AFTER_IDLE_S = 1.0


class AudioStream:
    """One request's decoder and its queue of PCM chunks (consumed with `async for`)."""

    def __init__(self, worker: "CodecWorker", loop: asyncio.AbstractEventLoop, decoder: StreamDecoder):
        self.decoder = decoder
        self._worker = worker
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self.error: BaseException | None = None
        self.closed = False

    def push(self, frames: np.ndarray) -> None:
        self.decoder.push(frames)
        self._worker.wake()

    def finish(self) -> None:
        self.decoder.finish()
        self._worker.wake()

    def close(self) -> None:
        """The consumer left: stop decoding for this stream."""
        self.closed = True
        self._worker.wake()

    def _deliver(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed
            self.closed = True

    def __aiter__(self):
        return self

    async def __anext__(self) -> np.ndarray:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        return item


class CodecWorker:
    def __init__(self, codec: SnacCodec):
        self.codec = codec
        self._streams: list[AudioStream] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.decode_calls = 0
        self._per_frame: float | None = None
        self._thread = threading.Thread(target=self._run, name="orpheus-codec", daemon=True)
        self._thread.start()

    def open(self, noise_key: int | None = None, *, whole_file: bool = False) -> AudioStream:
        """A new stream. noise_key seeds its codec noise (None: fresh noise). whole_file: its audio is
        returned whole, so it is decoded in fixed windows, the same bytes on every run (see
        StreamDecoder.whole_file); otherwise in windows paced to reach the listener early."""
        decoder = StreamDecoder.whole_file(noise_key) if whole_file else StreamDecoder(noise_key=noise_key)
        stream = AudioStream(self, asyncio.get_running_loop(), decoder)
        with self._lock:
            self._streams.append(stream)
        return stream

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _observe(self, seconds: float, frames: int, streams: list[AudioStream]) -> None:
        """Track the codec's cost per frame, so streams leave room to decode their next chunk."""
        per_frame = seconds / max(frames, 1)
        self._per_frame = per_frame if self._per_frame is None else 0.8 * self._per_frame + 0.2 * per_frame
        for s in streams:
            s.decoder.decode_seconds_per_frame = self._per_frame

    def _run(self) -> None:
        last_busy: float | None = None  # since the last trim
        while not self._stopping:
            self._wake.wait(timeout=TICK_S)
            self._wake.clear()
            with self._lock:
                streams = list(self._streams)
            if streams:
                last_busy = time.monotonic()
            elif last_busy is not None and time.monotonic() - last_busy > TRIM_AFTER_IDLE_S:
                last_busy = None
                release_free_memory()
            ready = [(s, w) for s in streams if not s.closed for w in iter(s.decoder.ready_window, None)]
            if ready:
                try:
                    started = time.perf_counter()
                    chunks = self.codec.decode_windows([w for _, w in ready])
                    self.decode_calls += 1
                    self._observe(time.perf_counter() - started, sum(len(w.frames) for _, w in ready), streams)
                except Exception as exc:  # fail the streams of this batch, keep serving the others
                    log.exception("codec decode failed")
                    for s, _ in ready:
                        s.error, s.closed = exc, True
                else:
                    for (s, _), pcm in zip(ready, chunks):
                        s._deliver(pcm)
            finished = [s for s in streams if s.closed or s.decoder.done]
            for s in finished:
                s._deliver(_END)
            if finished:
                with self._lock:
                    self._streams = [s for s in self._streams if s not in finished]
