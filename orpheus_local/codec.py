"""SNAC decoding: one-shot, and streaming with context frames, batched across streams.

A frame is 7 codes = 2048 samples. SNAC's decoder is convolutional: a sample depends on the codes up
to 2.25 frames away on either side (measured on the 24 kHz architecture: farther context changes
nothing; a window edge one frame away leaves an error 34 dB below the signal, two frames away 70 dB).
A streamed chunk is therefore decoded inside a window of context frames, and only its samples kept.

Driving many streams from one codec worker thread:

    decoder = StreamDecoder()            # one per request
    decoder.push(frames)                 # [n, 7] codes, as the model generates them (any thread)
    decoder.finish()                     # after the last frame
    ...
    # worker, every tick (at least every ~20 ms while streams are open):
    ready = [(s, w) for s in streams for w in iter(s.decoder.ready_window, None)]
    pcm = codec.decode_windows([w for _, w in ready])   # one batched decode for all streams
    for (s, _), chunk in zip(ready, pcm):
        s.send(chunk)
    # a stream is complete when s.decoder.done
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import format as fmt
from .codec_noise import SeededNoise, new_noise_key

FRAME_SECONDS = fmt.SAMPLES_PER_FRAME / fmt.SAMPLE_RATE


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


class SnacCodec:
    """A float32 SNAC on one device. Takes ownership of the model and prepares it for inference.

    The decoder's noise blocks are kept (they are part of the trained decoder's sound), but their
    noise is a pure function of (the stream's noise key, the block, the absolute sample position at
    that block's rate) instead of the global RNG: the same codes and key give the same noise decoded
    alone or in a batch, in one call or in windows. noise=False removes the blocks (tests, benchmarks).
    max_batch_frames bounds the frames of one decode call: activations take about 1.3 GiB for 512
    frames, and batches that large already run at full efficiency on an H100.
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", *, noise: bool = True,
                 max_batch_frames: int = 512):
        _bake_weight_norm(model)
        self.device = torch.device(device)
        self._noise = SeededNoise.install(model, self.device) if noise else None
        if not noise:
            _remove_noise(model)
        self.model = model.to(self.device, torch.float32).eval()
        self.max_batch_frames = max_batch_frames
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._lock = threading.Lock()  # one decode call at a time: the noise inputs are per call

    def decode(self, frames: np.ndarray, noise_key: int | None = None) -> np.ndarray:
        """[F, 7] codes -> float32 [2048 * F] PCM, the whole utterance in one call.
        noise_key: the seed of the noise (None: a fresh one)."""
        frames = np.asarray(frames, dtype=np.int64).reshape(-1, fmt.FRAME_TOKENS)
        if not len(frames):
            return np.zeros(0, dtype=np.float32)
        key = new_noise_key() if noise_key is None else noise_key
        return self.decode_windows([Window(frames, 0, len(frames), 0, key, alone=True)])[0]

    def decode_windows(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Each window's chunk, float32 [2048 * count], in order.

        Windows of equal length share a decode call; padding shorter ones would change their edges.
        A window marked alone gets a call of its own: kernels may compute a row differently for
        another batch size, and its samples must not depend on what else is being decoded.
        """
        out: list[np.ndarray | None] = [None] * len(windows)
        groups: dict[object, list[int]] = defaultdict(list)
        for i, w in enumerate(windows):
            groups[("alone", i) if w.alone else len(w.frames)].append(i)
        for idx in groups.values():
            per_call = max(1, self.max_batch_frames // len(windows[idx[0]].frames))
            for b in range(0, len(idx), per_call):
                group = [windows[i] for i in idx[b:b + per_call]]
                pcm = self._decode_batch(group)
                for i, w, row in zip(idx[b:b + per_call], group, pcm):
                    out[i] = row[w.left * fmt.SAMPLES_PER_FRAME:(w.left + w.count) * fmt.SAMPLES_PER_FRAME]
        return out

    def _decode_batch(self, windows: list[Window]) -> np.ndarray:
        """Windows of one length W -> float32 [B, 2048 * W]."""
        frames = np.stack([w.frames for w in windows])  # [B, W, 7]
        with self._lock, torch.inference_mode(), self._stream_context():
            if self._noise is not None:
                self._noise.prepare([w.noise_key for w in windows], [w.first_frame for w in windows],
                                    frames.shape[1])
            codes = [torch.from_numpy(c).to(self.device) for c in fmt.frames_to_codes(frames)]
            audio = self.model.decode(codes)  # [B, 1, 2048 * W]
            return audio[:, 0].float().cpu().numpy()

    def _stream_context(self):
        # On CUDA the codec runs on its own stream, so decoding overlaps the model's decode steps
        # instead of queueing behind them.
        if self._stream is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self._stream)


def _bake_weight_norm(model: nn.Module) -> None:
    # Weight norm recomputes every weight from (g, v) on each forward: 80 MB of work per call that
    # inference does not need.
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _remove_noise(model: nn.Module) -> None:
    from snac.layers import NoiseBlock

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, NoiseBlock):
                setattr(module, name, nn.Identity())


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

    noise_key seeds the stream's codec noise (None: a fresh key). push() and finish() may be called
    from another thread than ready_window().
    """

    def __init__(self, *, left_context: int = 2, right_context: int = 1, max_chunk: int = 32,
                 margin_s: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 noise_key: int | None = None, fixed: bool = False):
        self.left_context, self.right_context = left_context, right_context
        self.max_chunk, self.margin_s, self._clock = max_chunk, margin_s, clock
        self.noise_key = new_noise_key() if noise_key is None else noise_key
        self.fixed = fixed
        self._lock = threading.Lock()
        self._buf = np.zeros((0, fmt.FRAME_TOKENS), dtype=np.int64)  # frames from index _base on
        self._base = 0
        self._pushed = self._emitted = 0
        self._finished = False
        self._first_push: tuple[float, int] | None = None  # (time, frames in that push)
        self._first_emit_time = 0.0
        # Measured codec cost, kept up to date by whoever decodes the windows (the codec worker).
        self.decode_seconds_per_frame = 0.0

    @classmethod
    def whole_file(cls, noise_key: int | None = None) -> "StreamDecoder":
        """Fixed windows for audio returned whole: the same frames and key give the same samples."""
        return cls(left_context=3, right_context=3, max_chunk=32, noise_key=noise_key, fixed=True)

    @property
    def frames_pushed(self) -> int:
        return self._pushed

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    @property
    def done(self) -> bool:
        """finish() was called and every frame has been handed out in a window."""
        return self._finished and self._emitted == self._pushed

    def push(self, frames: np.ndarray) -> None:
        """Append [n, 7] codes."""
        frames = np.asarray(frames, dtype=np.int64).reshape(-1, fmt.FRAME_TOKENS)
        with self._lock:
            assert not self._finished, "push() after finish()"
            if self._first_push is None:
                self._first_push = (self._clock(), len(frames))
            self._buf = np.concatenate([self._buf, frames])
            self._pushed += len(frames)

    def finish(self) -> None:
        """No more frames: the rest is emitted without waiting for right context."""
        with self._lock:
            self._finished = True

    def ready_window(self) -> Window | None:
        """The next window to decode now, or None (call again on the next tick)."""
        with self._lock:
            count = self._next_count()
            if not count:
                return None
            start, end = self._emitted, self._emitted + count
            lo = max(0, start - self.left_context)
            hi = min(self._pushed, end + self.right_context)
            window = Window(self._buf[lo - self._base:hi - self._base], start - lo, count, start,
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
            return self.max_chunk if ready >= self.max_chunk else 0
        if ready < 1:
            return 0
        if self._emitted and ready < self.max_chunk and not self._must_emit():
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


def iter_stream(codec: SnacCodec, frame_batches: Iterable[np.ndarray],
                decoder: StreamDecoder | None = None) -> Iterator[np.ndarray]:
    """PCM chunks of one stream as its [n, 7] frame batches arrive (a single-stream convenience)."""
    decoder = decoder or StreamDecoder()
    for frames in frame_batches:
        decoder.push(frames)
        yield from _drain(codec, decoder)
    decoder.finish()
    yield from _drain(codec, decoder)


def _drain(codec: SnacCodec, decoder: StreamDecoder) -> Iterator[np.ndarray]:
    while (window := decoder.ready_window()) is not None:
        yield codec.decode_windows([window])[0]
