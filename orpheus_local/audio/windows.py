"""Streaming windows: one stream's frames -> the windows to decode, so that the chunks played in order
are the one-shot decode.

A frame is 7 codes = 2048 samples. SNAC's decoder is convolutional: a sample depends on the codes up
to 2.25 frames away on either side (measured on the 24 kHz architecture: farther context changes
nothing; a window edge one frame away leaves an error 34 dB below the signal, two frames away 70 dB).
A streamed chunk is therefore decoded inside a window of context frames, and only its samples kept.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.audio.noise import new_noise_key

FRAME_SECONDS = fmt.SAMPLES_PER_FRAME / fmt.SAMPLE_RATE


class DecodeCost:
    """The codec's measured decode time per frame, one cell shared by the decoders of its streams:
    whoever decodes writes it once per call instead of handing it to every stream."""

    __slots__ = ("per_frame",)

    def __init__(self, per_frame: float = 0.0):
        self.per_frame = per_frame


@dataclass(frozen=True)
class Window:
    """Frames to decode together; the samples of frames [left, left + count) are the chunk."""

    frames: np.ndarray  # [left + count + right, 7] codes
    left: int  # context frames before the chunk
    count: int  # frames whose audio is emitted
    start: int  # index in the stream of the chunk's first frame
    noise_key: int = 0  # the stream's noise seed: its noise is a function of (key, block, position)
    alone: bool = False  # decode in a call of its own: its samples must not depend on a batch

    @property
    def first_frame(self) -> int:
        """Index in the stream of frames[0]."""
        return self.start - self.left


class StreamDecoder:
    """One stream's frames -> windows whose chunks, played in order, are the one-shot decode.

    Right context holds every chunk back until right_context more frames exist. The delay is the
    same for every chunk, so after the first it costs no playback margin; it sets the first-audio
    depth. With one frame the first chunk (frame 0) leaves once 2 frames (14 tokens) exist, and the
    seams stay well above 40 dB (55 dB SNR over a 12 s stream). Left context costs compute, not
    latency, so it gets two frames. Frame 0 needs no left context and, after finish(), the last frame
    no right context: the one-shot decode sees zero padding there too. So every frame is heard and
    a stream of F frames gives exactly 2048 * F samples.

    After the first chunk, chunks grow while the listener has audio in hand: a chunk waits for more
    frames only as long as the audio already emitted outlasts collecting them (at the measured
    generation rate, less margin_s for decoding and delivery). Fewer, longer windows cost less
    context and per-call work. Sizes are powers of two (up to max_chunk) so that windows of different
    streams often have equal length and batch together.

    fixed=True is for audio returned whole (a file, not a stream): chunks of exactly max_chunk
    frames, the last one shorter, each window decoded alone. Every window edge is then a function of
    the frame count only, never of timing or of other streams, so a seeded request gives the same
    bytes on every run; three frames of context on each side cover the decoder's reach (2.25 frames),
    so the seams are far below the 16-bit step. Latency does not matter there: nobody listens yet.

    noise_key seeds the stream's codec noise (None: a fresh key). cost: the codec's measured decode
    cost, shared with the other streams it decodes (None: this decoder's own, zero until set).
    push(), push_ids() and finish() may be called from another thread than ready_window().
    """

    def __init__(self, *, left_context: int = 2, right_context: int = 1, max_chunk: int = 32,
                 margin_s: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 noise_key: int | None = None, fixed: bool = False, cost: DecodeCost | None = None):
        self.left_context, self.right_context = left_context, right_context
        self.max_chunk, self.margin_s, self._clock = max_chunk, margin_s, clock
        self.noise_key = new_noise_key() if noise_key is None else noise_key
        self.fixed = fixed
        self._lock = threading.Lock()
        self._buf = np.zeros((0, fmt.FRAME_TOKENS), dtype=np.int64)  # frames from index _base on
        self._ids: list[int] = []  # frames after those, pushed as ids and not yet converted
        self._base = 0
        self._pushed = self._emitted = 0
        self._finished = False
        self._first_push: tuple[float, int] | None = None  # (time, frames in that push)
        self._first_emit_time = 0.0
        # Clock time before which no window can fall due unless frames or the end arrive (which reset
        # it): lets whoever decodes skip this stream on a tick without taking its lock.
        self._look_at = 0.0
        # Measured codec cost, kept up to date by whoever decodes the windows (the codec worker).
        self._cost = cost or DecodeCost()
        self._look_cost = 0.0  # the cost _look_at was worked out with

    @classmethod
    def whole_file(cls, noise_key: int | None = None, cost: DecodeCost | None = None) -> "StreamDecoder":
        """Fixed windows for audio returned whole: the same frames and key give the same samples."""
        return cls(left_context=3, right_context=3, max_chunk=32, noise_key=noise_key, fixed=True, cost=cost)

    @property
    def frames_pushed(self) -> int:
        return self._pushed

    @property
    def decode_seconds_per_frame(self) -> float:
        return self._cost.per_frame

    @decode_seconds_per_frame.setter
    def decode_seconds_per_frame(self, seconds: float) -> None:
        self._cost.per_frame = seconds  # for every decoder sharing the cost

    def can_wait(self) -> bool:
        """No window can be due now: ready_window() would say None. Lock-free and cheap, for a
        worker that looks at hundreds of streams on every tick."""
        look_at = self._look_at
        if look_at == math.inf:  # waiting for a frame, whose push wakes up for it if it is then due
            return True
        # A decode cost risen since the look widens the margin, which may bring the window forward.
        return look_at > self._clock() and self._cost.per_frame <= 1.25 * self._look_cost

    @property
    def done(self) -> bool:
        """finish() was called and every frame has been handed out in a window."""
        return self._finished and self._emitted == self._pushed

    def push(self, frames: np.ndarray) -> bool:
        """Append [n, 7] codes. True when a window may be due because of them: the first window, a
        full one, or the next one of a listener down to its margin whose last look found no frame
        ready. Other windows of a paced stream fall due with time, not with frames: whoever decodes
        looks at them on a timer, and need not be woken for every frame."""
        frames = np.asarray(frames, dtype=np.int64).reshape(-1, fmt.FRAME_TOKENS)
        with self._lock:
            self._buf = np.concatenate([self._frames(), frames])
            return self._added(len(frames))

    def push_ids(self, ids: list[int]) -> bool:
        """Append whole frames of audio ids, as push() does codes. They become codes (and are checked:
        ValueError for an id outside its position's range) when the next window is taken, a window's
        worth at a time instead of a frame at a time."""
        with self._lock:
            self._ids += ids
            return self._added(len(ids) // fmt.FRAME_TOKENS)

    def _added(self, count: int) -> bool:
        assert not self._finished, "push() after finish()"
        if self._first_push is None:
            self._first_push = (self._clock(), count)
        self._pushed += count
        ready = self._pushed - self._emitted - self.right_context
        due = ready >= self.max_chunk or (not self._emitted and ready >= 1 and not self.fixed)
        waiting_for_frames = self._look_at == math.inf  # the last look found no frame ready
        if waiting_for_frames and not due and self._emitted and ready >= 1 and not self.fixed:
            # A listener down to the margin (just after the first chunk, or on a slow step) needs
            # this frame's window now: a wake-up, not the worker's next tick, up to TICK_S later.
            due = self._must_emit()
        if due or waiting_for_frames:  # a window may be due now: look again
            self._look_at = 0.0
        return due

    def _frames(self) -> np.ndarray:
        """The buffered codes, the ids pushed since converted and appended."""
        if self._ids:
            ids, self._ids = self._ids, []
            self._buf = np.concatenate([self._buf, fmt.ids_to_frames(ids)])
        return self._buf

    def finish(self) -> None:
        """No more frames: the rest is emitted without waiting for right context."""
        with self._lock:
            self._finished = True
            self._look_at = 0.0

    def ready_window(self) -> Window | None:
        """The next window to decode now, or None (call again on the next tick)."""
        with self._lock:
            count = self._next_count()
            if not count:
                return None
            start, end = self._emitted, self._emitted + count
            lo = max(0, start - self.left_context)
            hi = min(self._pushed, end + self.right_context)
            window = Window(self._frames()[lo - self._base:hi - self._base], start - lo, count, start,
                            self.noise_key, alone=self.fixed)
            if start == 0:
                self._first_emit_time = self._clock()
            self._emitted = end
            keep_from = max(0, end - self.left_context)  # history the next window needs
            self._buf = self._buf[keep_from - self._base:]
            self._base = keep_from
            return window

    def _next_count(self) -> int:
        """Frames the next chunk emits now; 0: wait."""
        available = self._pushed - self._emitted
        if self._finished:
            return min(available, self.max_chunk)
        ready = available - self.right_context  # frames whose right context has arrived
        if self.fixed:
            if ready >= self.max_chunk:
                return self.max_chunk
            self._look_at = math.inf  # only frames make the next window due
            return 0
        if ready < 1:
            self._look_at = math.inf
            return 0
        if self._emitted and ready < self.max_chunk and not self._must_emit():
            self._look_at = self._earliest_due()
            return 0
        return 1 << (min(ready, self.max_chunk).bit_length() - 1)

    def _must_emit(self) -> bool:
        """Would waiting for one more frame let the listener's buffered audio fall below the margin?"""
        now = self._clock()
        buffered = self._emitted * FRAME_SECONDS - (now - self._first_emit_time)
        # The chunk must also be decoded and delivered before the audio runs out: on a slow codec
        # (a CPU) a large window takes a good part of a second.
        window = self._pushed - self._emitted + self.left_context + self.right_context
        margin = self.margin_s + self.decode_seconds_per_frame * window
        if buffered <= margin:
            return True
        first_time, first_count = self._first_push
        elapsed = now - first_time
        rate = (self._pushed - first_count) / elapsed if elapsed > 0 else math.inf  # frames per second
        return rate * (buffered - margin) < 1  # not one more frame before the margin is reached

    def _earliest_due(self) -> float:
        """A time before which _must_emit() stays False if no frame arrives: a frame can only delay
        it (the rate rises), unless it makes the window full, which resets the look. Taken with
        the margin of the largest window that is not full, and halved towards now, as the measured
        decode cost may still rise."""
        now = self._clock()
        self._look_cost = self._cost.per_frame
        largest = self.max_chunk + self.left_context + self.right_context
        margin = self.margin_s + self.decode_seconds_per_frame * largest
        # With P frames since the first push at t0, and the audio in hand at time T being C - T (the
        # margin taken off), the rule fires once P * (C - T) < T - t0, that is after (P*C + t0) / (P + 1).
        first_time, first_count = self._first_push
        frames = self._pushed - first_count
        in_hand_until = self._emitted * FRAME_SECONDS + self._first_emit_time - margin
        due = (frames * in_hand_until + first_time) / (frames + 1)
        return now + (due - now) / 2 if due > now else now
