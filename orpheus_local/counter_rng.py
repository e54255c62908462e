"""Counter-based random numbers: pure functions of integer keys and counters, computed on the device.

A stateful RNG (torch's global generator) gives a request different numbers depending on what else
drew from it first: other requests in the batch, an earlier decode call. Hashing (seed, counter)
instead makes every number a function of the request alone. The sampler's Gumbel noise and the
codec's Gaussian noise both come from here.

Values are int64 tensors holding 32-bit unsigned integers; every product stays below 2**63.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

M32 = 0xFFFFFFFF


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for x < 2**32 without int64 overflow: c is split into 16-bit halves so every
    product stays below 2**48."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & M32


def seed_key(seed: Tensor, domain: int) -> Tensor:
    """[B] 32-bit keys from [B] non-negative 63-bit seeds; `domain` keeps the streams of different
    users of one seed (the sampler, the codec) independent."""
    h = mix32((seed & M32) ^ domain)
    return mix32(h ^ (seed >> 32))  # seeds are non-negative: >> is a logical shift here


def uniform_float32(h: Tensor) -> Tensor:
    """32-bit hashes -> float32 uniform in (0, 1), never 0 or 1 (24 bits, exact in float32)."""
    return ((h >> 8).float() + 0.5) * (1.0 / 2**24)


def normal(h: Tensor) -> Tensor:
    """32-bit hashes -> float32 standard normal values (Box-Muller over two hashes derived from each)."""
    u1 = uniform_float32(mix32(h ^ 0x68E31DA4))
    u2 = uniform_float32(mix32(h ^ 0xB5297A4D))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)
