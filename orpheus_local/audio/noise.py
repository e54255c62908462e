"""SNAC's decoder noise, made reproducible: a pure function of the stream, not of the global RNG.

SNAC's NoiseBlocks add linear(x) * n with n ~ N(0, 1) drawn from torch's global generator on every
call, so the same codes decode to different audio each time, and differently in windows than in one
call. Here n at a block's time step comes from a counter-based hash of (the stream's noise key, the
block, the absolute step in the stream): decoded alone or in a batch, in one call or in windows, a
stream gets the same noise. The noise itself (its distribution, where it enters) is SNAC's own.
"""

from __future__ import annotations

import itertools
import math
import secrets
from typing import Sequence

import torch
from torch import Tensor, nn

from orpheus_local import tokens as fmt
from orpheus_local.counter_rng import mix32, normal, seed_key


def new_noise_key() -> int:
    """A fresh noise seed, for a stream whose request gave none."""
    return secrets.randbits(63)


class SeededNoise:
    """The noise of every noise block of one SNAC decoder, computed for a whole decode call at once.

    prepare() runs before each call: for each row (a window of W frames starting at frame f0 of its
    stream, with the stream's key) and each block b, the noise at the block's step t is
    normal(hash(key, b, f0 * steps_per_frame[b] + t)): one batched hash on the device, no loop
    over frames. The blocks then read their slice.
    """

    _DOMAIN = 0x5EED_C0DE  # keeps codec noise independent of the sampler's noise from the same seed

    def __init__(self, steps_per_frame: list[int], device: torch.device):
        self.steps_per_frame = steps_per_frame
        self.device = device
        self.noise: list[Tensor] = []  # per block: [B, W * steps_per_frame[b]] float32

    @classmethod
    def install(cls, model: nn.Module, device: torch.device) -> "SeededNoise":
        """Replace the model's NoiseBlocks by blocks that read from one SeededNoise, and return it."""
        from snac.layers import DecoderBlock, NoiseBlock

        # The latent has SAMPLES_PER_FRAME / prod(rates) steps per frame; each block upsamples it.
        rates = list(model.decoder_rates)
        steps = fmt.SAMPLES_PER_FRAME // math.prod(rates)
        source = cls([], device)
        for block in (m for m in model.modules() if isinstance(m, DecoderBlock)):
            steps *= rates[len(source.steps_per_frame)]
            layers = block.block
            for i, layer in enumerate(layers):
                if isinstance(layer, NoiseBlock):
                    layers[i] = _NoiseFromSource(layer.linear, source, len(source.steps_per_frame))
            source.steps_per_frame.append(steps)
        return source

    def prepare(self, keys: Sequence[int], first_frames: Sequence[int], frames: int) -> None:
        """The noise of the next decode call: row i is `frames` frames from frame first_frames[i] of
        the stream with noise key keys[i]."""
        dev = self.device
        key = seed_key(torch.tensor(keys, dtype=torch.int64, device=dev), self._DOMAIN)  # [B]
        counts = [frames * s for s in self.steps_per_frame]
        block = torch.repeat_interleave(torch.arange(len(counts), device=dev), torch.tensor(counts, device=dev))
        starts = torch.tensor([0, *itertools.accumulate(counts)][:-1], device=dev)
        step = torch.arange(sum(counts), device=dev) - starts[block]  # [T]: step inside the window
        per_frame = torch.tensor(self.steps_per_frame, device=dev)[block]
        first = torch.tensor(first_frames, dtype=torch.int64, device=dev)
        position = first[:, None] * per_frame + step  # [B, T]: absolute step in the stream
        block_key = mix32(key[:, None] ^ torch.arange(len(counts), device=dev))  # [B, blocks]
        h = mix32(mix32(block_key[:, block] ^ position))
        self.noise = list(normal(h).split(counts, dim=1))


class _NoiseFromSource(nn.Module):
    """SNAC's NoiseBlock, x + linear(x) * noise, with the noise its SeededNoise prepared."""

    def __init__(self, linear: nn.Module, source: SeededNoise, index: int):
        super().__init__()
        self.linear = linear
        self.source = source
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        noise = self.source.noise[self.index]  # [B, T]
        return x + self.linear(x) * noise[:, None, :].to(x.dtype)
