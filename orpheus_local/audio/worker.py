"""The codec worker: every open stream's ready windows decoded together, in batched SNAC calls.

CodecCore is the synchronous part (open, step, has_work): a test drives step() itself. CodecWorker
runs a core on its own thread ("orpheus-codec"), stepping it whenever a stream has news and at
least every TICK_S while streams are open (a stream may be waiting to grow its next chunk).

Threads: the event loop opens streams and pushes frames into them; the stepping thread owns the
decoding. A stream's decoder has its own lock (windows.py); the list of open streams sits behind
the core's lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from orpheus_local.audio.snac import SnacCodec
from orpheus_local.audio.windows import StreamDecoder
from orpheus_local.errors import NotReadyError
from orpheus_local.handoff import Handoff

log = logging.getLogger(__name__)

TICK_S = 0.02  # a stream waiting to grow its next chunk is looked at again this often


class AudioStream(Handoff[np.ndarray]):
    """One stream: frames go in (push, end_frames, or fail), PCM chunks come out (`async for`).

    The event loop calls push(), end_frames(), fail() and cancel(); the codec's stepping thread
    reads the decoder (which has its own lock) and `failure` (behind this stream's lock)."""

    def __init__(self, decoder: StreamDecoder, wake, loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(loop, on_cancel=wake)
        self.decoder = decoder
        self._wake = wake
        self._lock = threading.Lock()
        self._failure: BaseException | None = None  # the stream ends with it

    @property
    def failure(self) -> BaseException | None:
        with self._lock:
            return self._failure

    def push(self, frames: np.ndarray) -> None:
        self.decoder.push(frames)
        self._wake()

    def end_frames(self) -> None:
        """No more frames: the rest is decoded, then the stream ends."""
        self.decoder.finish()
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The frames' producer (or the codec) failed: stop decoding and end the stream with `error`."""
        with self._lock:
            self._failure = self._failure or error
        self._wake()


class CodecCore:
    def __init__(self, codec: SnacCodec, wake=lambda: None):
        self.codec = codec
        self._wake = wake  # called when a stream has news for the stepping thread
        self._streams: list[AudioStream] = []
        self._closed = False
        self._lock = threading.Lock()
        # Measured decode cost per frame (exponential average), read by the streams' decoders to
        # leave room for decoding their next chunk. Written by the stepping thread only.
        self._per_frame: float | None = None

    def open(self, noise_key: int | None = None, *, whole_file: bool = False) -> AudioStream:
        """A new stream, on the running event loop. noise_key seeds its codec noise (None: fresh
        noise). whole_file: its audio is returned whole, so it is decoded in fixed windows, the same
        bytes on every run (StreamDecoder.whole_file); otherwise in windows paced for a listener."""
        decoder = StreamDecoder.whole_file(noise_key) if whole_file else StreamDecoder(noise_key=noise_key)
        stream = AudioStream(decoder, self._wake)
        with self._lock:
            if self._closed:
                raise NotReadyError("the codec worker is shut down")
            self._streams.append(stream)
        return stream

    def close(self) -> None:
        """End every open stream with NotReadyError and refuse new ones: nobody waits forever."""
        with self._lock:
            self._closed = True
            streams, self._streams = self._streams, []
        for s in streams:
            s.finish(NotReadyError("the codec worker shut down"))

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._streams)

    def step(self) -> int:
        """Decode every ready window in batched calls, hand out the chunks, end finished streams.
        Returns the number of windows decoded."""
        with self._lock:
            streams = list(self._streams)
        live = [s for s in streams if not s.cancelled.is_set() and s.failure is None]
        ready = [(s, w) for s in live for w in iter(s.decoder.ready_window, None)]
        if ready:
            try:
                started = time.perf_counter()
                chunks = self.codec.decode_windows([w for _, w in ready])
                self._observe(time.perf_counter() - started, sum(len(w.frames) for _, w in ready), live)
            except Exception as exc:  # fail the streams of this batch, keep serving the others
                log.exception("codec decode failed")
                for s, _ in ready:
                    s.fail(exc)
            else:
                for (s, _), pcm in zip(ready, chunks):
                    s.put(pcm)
        ended = [s for s in streams if s.cancelled.is_set() or s.failure is not None or s.decoder.done]
        for s in ended:
            s.finish(s.failure)
        if ended:
            with self._lock:
                self._streams = [s for s in self._streams if s not in ended]
        return len(ready)

    def _observe(self, seconds: float, frames: int, streams: list[AudioStream]) -> None:
        per_frame = seconds / max(frames, 1)
        self._per_frame = per_frame if self._per_frame is None else 0.8 * self._per_frame + 0.2 * per_frame
        for s in streams:
            s.decoder.decode_seconds_per_frame = self._per_frame


class CodecWorker:
    """Runs a CodecCore on its own thread; start() it, close() it."""

    def __init__(self, codec: SnacCodec):
        self._wake_event = threading.Event()
        self.core = CodecCore(codec, self._wake_event.set)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> "CodecWorker":
        self._thread = threading.Thread(target=self._run, name="orpheus-codec", daemon=True)
        self._thread.start()
        return self

    def open(self, noise_key: int | None = None, *, whole_file: bool = False) -> AudioStream:
        return self.core.open(noise_key, whole_file=whole_file)

    def close(self) -> None:
        self._stopping = True
        self._wake_event.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.core.close()

    def _run(self) -> None:
        while not self._stopping:
            self._wake_event.wait(timeout=TICK_S if self.core.has_work() else None)
            self._wake_event.clear()
            if not self._stopping:
                self.core.step()
