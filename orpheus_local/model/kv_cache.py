"""Static per-slot KV cache: one fixed row of keys and values per concurrent sequence.

Allocated once, so decode steps keep fixed shapes (CUDA graphs) and never allocate cache memory.
Its length is the longest request the server accepts (prompt + max_new_tokens), never the model's
max_position_embeddings (131072 for Orpheus: gigabytes per slot for nothing).
"""

from __future__ import annotations

import torch

DEFAULT_CPU_SLOTS = 8
MAX_SLOTS = 256  # beyond this one H100 cannot keep every stream real time anyway
CUDA_RESERVE_BYTES = 2 << 30  # left free for activations, the codec and CUDA graphs


def bytes_per_token(config, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cache bytes one token of context takes: keys and values over every layer."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * dtype.itemsize


def default_slot_count(config, max_len: int, device: str | torch.device, dtype: torch.dtype,
                       reserve_bytes: int = CUDA_RESERVE_BYTES) -> int:
    """Slots that fit in the free memory of a CUDA device (call after the weights are loaded);
    a fixed DEFAULT_CPU_SLOTS elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_CPU_SLOTS
    free, _total = torch.cuda.mem_get_info(device)
    fit = (free - reserve_bytes) // (bytes_per_token(config, dtype) * max_len)
    return int(max(1, min(MAX_SLOTS, fit)))


class KVCache:
    """k and v: [layers, slots, kv_heads, max_len, head_dim]; slot s holds one sequence's keys and
    values at positions 0..max_len-1. The dtype must be the model's."""

    def __init__(self, config, slots: int, max_len: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        shape = (config.num_layers, slots, config.num_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
