"""ModelRunner: owns the device. Builds inputs, runs prefill and decode, samples; makes no policy.

Decode runs over the contiguous slot range 0..n-1 in place (n a power-of-two bucket above the highest
running slot), so the cache is never gathered; free slots inside the range compute throwaway rows
that write only into their own, unused slot. Per-slot state lives in device buffers, so on CUDA one
decode step is a graph replay, captured per (n, kv_len) bucket, followed by one host sync.
"""

from __future__ import annotations

import logging

import torch

from orpheus_local import tokens as fmt
from orpheus_local.config import EngineConfig
from orpheus_local.engine.prefix_cache import PrefixCache
from orpheus_local.engine.request import Request
from orpheus_local.model.kv_cache import (
    CUDA_RESERVE_BYTES,
    KVCache,
    bytes_per_token,
    default_slot_count,
)
from orpheus_local.model.llama import LlamaModel
from orpheus_local.model.loader import load_llama
from orpheus_local.model.sampler import Sampler

log = logging.getLogger(__name__)

KV_BUCKET = 256  # attended cache length is rounded up to this: fewer graphs, little wasted reading


class ModelRunner:
    def __init__(self, model: LlamaModel, num_slots: int, max_prompt_tokens: int, max_new_tokens: int,
                 cuda_graphs: bool = True, *, max_reference_tokens: int = 0, prefix_cache_tokens: int = 0):
        """max_reference_tokens: room in each slot for a cloned voice's reference turn before the
        prompt's max_prompt_tokens; prefix_cache_tokens: reference turns' keys and values kept
        between requests (0: every prompt is prefilled whole)."""
        self.model = model
        self.device = model.device
        self.num_slots = num_slots
        self.max_prompt_tokens = max_prompt_tokens
        self.max_reference_tokens = max_reference_tokens
        self.max_len = max_reference_tokens + max_prompt_tokens + max_new_tokens
        self.prefixes = PrefixCache(prefix_cache_tokens)
        self.cache = KVCache(model.config, num_slots, self.max_len, self.device, model.dtype)
        self.sampler = Sampler(num_slots, self.device)
        # Decode inputs, per slot: the last sampled id, its position, and whether the slot is running.
        self.tokens = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.active = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.out = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool = None

    @classmethod
    def load(cls, config: EngineConfig, model_dir, device: str, dtype: str) -> "ModelRunner":
        model = load_llama(model_dir, device, dtype)
        max_len = config.max_reference_tokens + config.max_prompt_tokens + config.max_new_tokens
        prefix_tokens = config.prefix_cache_tokens if config.max_reference_tokens else 0
        # The prefix cache grows as voices are used: its whole budget is kept free from the start.
        reserve = CUDA_RESERVE_BYTES + prefix_tokens * bytes_per_token(model.config, model.dtype)
        slots = config.max_slots or default_slot_count(model.config, max_len, device, model.dtype, reserve)
        log.info("KV cache: %d slots of %d tokens", slots, max_len)
        return cls(model, slots, config.max_prompt_tokens, config.max_new_tokens, config.cuda_graphs,
                   max_reference_tokens=config.max_reference_tokens, prefix_cache_tokens=prefix_tokens)

    # --- prefill: new requests, eager ---
    @torch.inference_mode()
    def prefill(self, requests: list[Request]) -> list[int]:
        """Store the prompts' keys/values and sample each request's first id. A prompt that starts
        with a reference turn gets that turn's keys/values from the prefix cache (or has them
        computed and kept) and prefills only the rest."""
        starts = [self._restore_prefix(r) for r in requests]
        longest = max(len(r.prompt_ids) for r in requests)
        tokens = torch.zeros(len(requests), max(len(r.prompt_ids) - s for r, s in zip(requests, starts)),
                             dtype=torch.long)
        for row, (r, start) in enumerate(zip(requests, starts)):
            tokens[row, : len(r.prompt_ids) - start] = torch.tensor(r.prompt_ids[start:])
            p = r.params
            self.sampler.reset(r.slot, temperature=p.temperature, top_p=p.top_p,
                               repetition_penalty=p.repetition_penalty, top_k=p.top_k,
                               allow_stop=not r.ignore_eos, seed=r.seed, prompt_ids=r.prompt_ids)
        slots = torch.tensor([r.slot for r in requests], device=self.device)
        lengths = torch.tensor([len(r.prompt_ids) for r in requests], device=self.device)
        first = torch.tensor(starts, device=self.device)
        hidden = self.model.prefill(self.cache, tokens.to(self.device), slots, first, lengths - first,
                                    kv_len=min(_round_up(longest, 64), self.max_len))
        ids = self._sample(hidden, slots, self.model.audio_logits)
        self.tokens[slots] = ids
        self.positions[slots] = lengths
        self.active[slots] = 1
        return ids.tolist()

    def _restore_prefix(self, request: Request) -> int:
        """Put the keys/values of the request's reference turn into its slot, from the prefix cache
        or computed now (and kept); the prompt ids they cover (0: none, the whole prompt is prefilled)."""
        if not self.prefixes.max_tokens:
            return 0
        n = fmt.reference_prefix_length(request.prompt_ids)
        if not 0 < n < len(request.prompt_ids):  # the last prompt id is prefilled: it gives the first id
            return 0
        prefix, slot = tuple(request.prompt_ids[:n]), request.slot
        if (kv := self.prefixes.get(prefix)) is not None:
            self.cache.k[:, slot, :, :n], self.cache.v[:, slot, :, :n] = kv
            return n
        one = torch.tensor([slot], device=self.device)
        self.model.prefill(self.cache, torch.tensor([prefix], device=self.device), one, torch.zeros_like(one),
                           torch.tensor([n], device=self.device), kv_len=min(_round_up(n, 64), self.max_len))
        self.prefixes.put(prefix, self.cache.k[:, slot, :, :n].clone(), self.cache.v[:, slot, :, :n].clone())
        return n

    # --- decode: every running slot, one id each ---
    @torch.inference_mode()
    def decode(self, requests: list[Request]) -> list[int]:
        n = _bucket(max(r.slot for r in requests) + 1, self.num_slots)
        longest = max(len(r.prompt_ids) + len(r.generated) for r in requests) + 1
        kv_len = min(_round_up(longest, KV_BUCKET), self.max_len)
        key = (n, kv_len)
        if not self.use_graphs:
            self._decode_step(n, kv_len)
        elif key in self._graphs:
            self._graphs[key].replay()
        else:
            self._decode_step(n, kv_len)  # the real step, which also warms up the kernels
            self._capture(key)
        out = self.out[:n].tolist()  # the one host sync of the step
        return [out[r.slot] for r in requests]

    def release(self, request: Request) -> None:
        """The slot's request left: park its decode inputs so the slot's throwaway rows stay in bounds."""
        slot = request.slot
        self.active[slot] = 0
        self.positions[slot] = 0

    def _decode_step(self, n: int, kv_len: int) -> None:
        slots = torch.arange(n, device=self.device)
        hidden = self.model.decode(self.cache, self.tokens[:n], self.positions[:n], None, kv_len)
        ids = self._sample(hidden, slots, self.model.audio_logits)
        self.out[:n] = ids
        self.tokens[:n] = ids
        self.positions[:n] += self.active[:n]

    def _sample(self, hidden, slots, logits_fn):
        frame_pos = self.sampler.frame_positions(slots)
        return self.sampler.sample(logits_fn(hidden, frame_pos), slots, frame_pos)

    def _capture(self, key: tuple[int, int]) -> None:
        """Record the decode step for this bucket. Capturing runs nothing, so no state moves."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: the codec thread keeps using the GPU while this thread captures.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            self._decode_step(*key)
        self._pool = graph.pool()
        self._graphs[key] = graph
        log.debug("captured decode graph for %d slots, %d positions", *key)


def _bucket(n: int, limit: int) -> int:
    """Smallest power of two >= n, capped at the slot count."""
    return min(1 << (n - 1).bit_length(), limit)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
