"""SNAC decoding on one device: windows of many streams in batched calls.

Driving many streams from one codec worker thread (see windows.py for the windows):

    decoder = StreamDecoder()            # one per request
    decoder.push(frames)                 # [n, 7] codes, as the model generates them (any thread)
    decoder.finish()                     # after the last frame
    ...
    # worker, every step (at least every ~20 ms while streams are open), within a frame budget:
    ready = [(s, w) for s in streams for w in iter(s.decoder.ready_window, None)]
    pcm = codec.decode_windows([w for _, w in ready])   # one batched decode for many streams
    for (s, _), chunk in zip(ready, pcm):
        s.send(chunk)
    # a stream is complete when s.decoder.done
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from orpheus_local import tokens as fmt
from orpheus_local.audio.noise import SeededNoise, new_noise_key
from orpheus_local.audio.windows import StreamDecoder, Window


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

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """float32 mono 24 kHz samples -> [F, 7] codes, F = ceil(samples / 2048) (SNAC pads the
        end with silence). The encoder has no noise and no state: it needs no lock."""
        audio = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            codes = self.model.encode(audio[None, None])  # [1, F], [1, 2F], [1, 4F]
        return fmt.codes_to_frames([c[0].cpu().numpy() for c in codes])

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
