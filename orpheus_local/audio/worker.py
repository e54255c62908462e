"""The codec worker: the open streams' ready windows decoded in batched SNAC calls, a bounded amount
of work per step, the windows a listener waits for most urgently first.

CodecCore is the synchronous part (open, step, has_work): a test drives step() itself. CodecWorker
runs a core on its own thread ("orpheus-codec"), stepping it whenever a stream has news that makes a
window due (its first frames, a full window, its end, a failure or a cancel), at once again while the
last step left windows waiting, and at least every TICK_S while streams are open: a paced stream's
later windows fall due with time, and are found by that tick rather than by a wake-up per frame.

Threads: the event loop opens streams and pushes frames into them; the stepping thread owns the
decoding. A stream's decoder has its own lock (windows.py); the list of open streams, the windows
waiting for a later step and the measured decode cost sit behind the core's lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from typing import Callable

import numpy as np

from orpheus_local.audio.snac import SnacCodec
from orpheus_local.audio.windows import DecodeCost, StreamDecoder, Window
from orpheus_local.errors import NotReadyError
from orpheus_local.handoff import Delivery, Handoff
from orpheus_local.thread_names import name_os_thread

log = logging.getLogger(__name__)

TICK_S = 0.02  # a stream waiting to grow its next chunk is looked at again this often
MAX_FRAMES_PER_STEP = 256  # frames (context included) one step decodes: about one full batch
WHOLE_FILE_LAG_STEPS = 16  # a whole file's window waits behind live windows queued up to this many steps later


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
        return self._failure  # written once, under the lock; a reference is read whole

    def push(self, frames: np.ndarray) -> None:
        if self.decoder.push(frames):  # else the stepping thread's tick finds the window in time
            self._wake()

    def push_ids(self, ids: list[int]) -> None:
        """Whole frames of audio ids (StreamDecoder.push_ids): a bad id fails this stream alone."""
        if self.decoder.push_ids(ids):
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


# A window waiting to be decoded: (priority key, the window, its stream). The key is
# (rank, age, sequence number); the smallest goes first and the sequence number keeps keys unique.
_Queued = tuple[tuple[int, int, int], Window, AudioStream]


class CodecCore:
    """Decodes the open streams' windows, at most max_frames_per_step frames per step (but always
    at least one window), and hands out their chunks at the end of each decode call.

    The order of the windows:
      1. a live stream's first window: nothing else shortens the time to first audio as much;
      2. then the oldest-waiting windows. A paced stream hands out a window when its listener's audio
         in hand is down to the margin (windows.py), so the window that has waited longest is the one
         whose listener is closest to running dry, or furthest past it. Among windows queued at the
         same step, a stream's next window goes behind the other streams' windows (round robin). Age
         order means no window waits behind one queued after it: none starves.
      3. A whole file's windows (decoded alone, nobody listens yet) count as queued
         WHOLE_FILE_LAG_STEPS steps later than they were: they go behind the live windows, yet get
         their turn even while live windows fill every step.
    A stream's windows are taken from its decoder one at a time as they get their turn, and at most
    one waits in the core between steps: frames left in the decoder meanwhile join a larger window.
    """

    def __init__(self, codec: SnacCodec, wake=lambda: None, *, max_frames_per_step: int = MAX_FRAMES_PER_STEP,
                 clock: Callable[[], float] = time.perf_counter):
        if max_frames_per_step < 1:
            raise ValueError("max_frames_per_step must be at least 1")
        self.codec = codec
        self.max_frames_per_step = max_frames_per_step
        self._wake = wake  # called when a stream has news for the stepping thread
        self._clock = clock  # times the decode calls
        self._streams: list[AudioStream] = []
        self._closed = False
        self._lock = threading.Lock()
        # Measured decode cost per frame (exponential average), read by backlog_seconds() and, through
        # the cell they share, by the streams' decoders, to leave room for decoding their next chunk.
        # Written by the stepping thread only.
        self._per_frame: float | None = None
        self._cost = DecodeCost()
        # Per stream, its next window, taken from the decoder but left for a later step by the budget.
        self._waiting: dict[AudioStream, _Queued] = {}
        self._steps = 0
        self._sequence = itertools.count()

    def open(self, noise_key: int | None = None, *, whole_file: bool = False) -> AudioStream:
        """A new stream, on the running event loop. noise_key seeds its codec noise (None: fresh
        noise). whole_file: its audio is returned whole, so it is decoded in fixed windows, the same
        bytes on every run (StreamDecoder.whole_file); otherwise in windows paced for a listener."""
        decoder = (StreamDecoder.whole_file(noise_key, self._cost) if whole_file
                   else StreamDecoder(noise_key=noise_key, cost=self._cost))
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
            self._waiting = {}
        for s in streams:
            s.finish(NotReadyError("the codec worker shut down"))

    def has_work(self) -> bool:
        """Streams are open."""
        with self._lock:
            return bool(self._streams)

    def has_waiting(self) -> bool:
        """The last step left windows for the next one: step again without waiting."""
        with self._lock:
            return bool(self._waiting)

    def backlog_seconds(self) -> float:
        """Decoding work the codec is behind on, in seconds at the measured cost per frame: for each
        stream with a window left waiting by the budget, that window's frames and every frame pushed
        after it. 0 before the first decode has been measured. Any thread; cheap."""
        with self._lock:
            per_frame = self._per_frame
            waiting = list(self._waiting.values())
        if not per_frame:
            return 0.0
        frames = sum(s.decoder.frames_pushed - w.first_frame for _, w, s in waiting)
        return frames * per_frame

    def step(self) -> int:
        """Decode up to max_frames_per_step frames of ready windows, in the order the class docstring
        gives, hand out their chunks, end finished streams. Returns the number of windows decoded."""
        with self._lock:
            streams = list(self._streams)
            waiting = dict(self._waiting)
        self._steps += 1
        # One pass over the open streams. Only those whose decoder is asked for a window (one that
        # cannot wait, or one with a window already waiting) can have run out: the end of a
        # stream's frames makes it look again.
        gone: list[AudioStream] = []
        looked: list[AudioStream] = []
        queue: list[_Queued] = []
        for s in streams:
            if s.cancelled.is_set() or s.failure is not None:
                gone.append(s)
            elif (q := waiting.get(s)) is not None or not s.decoder.can_wait():
                looked.append(s)
                if q is not None or (q := self._take(s)) is not None:
                    queue.append(q)
        heapq.heapify(queue)
        chosen: list[_Queued] = []
        frames = 0
        while queue and (not chosen or frames + len(queue[0][1].frames) <= self.max_frames_per_step):
            item = heapq.heappop(queue)
            chosen.append(item)
            frames += len(item[1].frames)
            if (following := self._next(item[2])) is not None:
                heapq.heappush(queue, following)
        with self._lock:
            self._waiting = {q[2]: q for q in queue} if not self._closed else {}
            left = set(self._waiting)
        # First windows in a call of their own, handed out before the rest is decoded.
        self._decode([(s, w) for (rank, _, _), w, s in chosen if rank == 0])
        self._decode([(s, w) for (rank, _, _), w, s in chosen if rank != 0])
        ended = gone + [s for s in looked if s.failure is not None or (s.decoder.done and s not in left)]
        delivery = Delivery()
        for s in ended:
            delivery.finish(s, s.failure)
        delivery.send()
        if ended:
            ended_set = set(ended)
            with self._lock:
                self._streams = [s for s in self._streams if s not in ended_set]
                for s in ended:
                    self._waiting.pop(s, None)
        return len(chosen)

    def _next(self, stream: AudioStream) -> _Queued | None:
        """The stream's next ready window with its priority key, or None."""
        return None if stream.decoder.can_wait() else self._take(stream)

    def _take(self, stream: AudioStream) -> _Queued | None:
        """_next() for a stream whose decoder cannot wait."""
        try:
            window = stream.decoder.ready_window()
        except ValueError as exc:  # ids pushed that are not audio ids: this stream fails, the rest go on
            stream.fail(exc)
            return None
        if window is None:
            return None
        rank = 0 if window.start == 0 and not window.alone else 1
        age = self._steps + (WHOLE_FILE_LAG_STEPS if window.alone else 0)
        return (rank, age, next(self._sequence)), window, stream

    def _decode(self, batch: list[tuple[AudioStream, Window]]) -> None:
        batch = [(s, w) for s, w in batch if s.failure is None]  # a failed earlier call ended these
        if not batch:
            return
        try:
            started = self._clock()
            chunks = self.codec.decode_windows([w for _, w in batch])
            self._observe(self._clock() - started, sum(len(w.frames) for _, w in batch))
        except Exception as exc:  # fail the streams of this call, keep serving the others
            log.exception("codec decode failed")
            for s, _ in batch:
                s.fail(exc)
        else:
            delivery = Delivery()
            for (s, _), pcm in zip(batch, chunks):
                delivery.put(s, pcm)
            delivery.send()

    def _observe(self, seconds: float, frames: int) -> None:
        per_frame = seconds / max(frames, 1)
        with self._lock:
            self._per_frame = per_frame if self._per_frame is None else 0.8 * self._per_frame + 0.2 * per_frame
        self._cost.per_frame = self._per_frame


class CodecWorker:
    """Runs a CodecCore on its own thread; start() it, close() it."""

    def __init__(self, codec: SnacCodec, *, max_frames_per_step: int = MAX_FRAMES_PER_STEP):
        self._wake_event = threading.Event()
        self.core = CodecCore(codec, self._wake, max_frames_per_step=max_frames_per_step)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> "CodecWorker":
        self._thread = threading.Thread(target=self._run, name="orpheus-codec", daemon=True)
        self._thread.start()
        return self

    def open(self, noise_key: int | None = None, *, whole_file: bool = False) -> AudioStream:
        return self.core.open(noise_key, whole_file=whole_file)

    def alive(self) -> bool:
        """The codec thread is running (started and not closed)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def backlog_seconds(self) -> float:
        """CodecCore.backlog_seconds(): any thread."""
        return self.core.backlog_seconds()

    def _wake(self) -> None:
        # Called for every pushed frame: setting an event that is set already would take its lock
        # for nothing. A wake skipped here is covered: the thread clears the event before it steps.
        if not self._wake_event.is_set():
            self._wake_event.set()

    def close(self) -> None:
        self._stopping = True
        self._wake_event.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.core.close()

    def _run(self) -> None:
        name_os_thread()  # the name given to its Thread
        while not self._stopping:
            if not self.core.has_waiting():  # windows left by the last step's budget: no pause
                self._wake_event.wait(timeout=TICK_S if self.core.has_work() else None)
            self._wake_event.clear()
            if not self._stopping:
                self.core.step()
