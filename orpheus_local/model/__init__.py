"""The serving model: a compact Llama over a static per-slot KV cache, and its batched sampler."""

from orpheus_local.model.kv_cache import KVCache, bytes_per_token, default_slot_count
from orpheus_local.model.llama import LlamaConfig, LlamaModel
from orpheus_local.model.sampler import Sampler

__all__ = ["KVCache", "LlamaConfig", "LlamaModel", "Sampler", "bytes_per_token", "default_slot_count"]
