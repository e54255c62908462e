"""A compact Llama 3 for serving: forward passes over a static per-slot KV cache, logits for just the
ids the sampler may pick.

Numerics follow transformers' LlamaForCausalLM (RMSNorm in float32, rotate-half RoPE with llama3
frequency scaling, cos/sin in float32 then cast), so both agree to float rounding on the same weights.
Weights load straight from the Hugging Face safetensors (loader.py); q/k/v and gate/up are fused at
load time so a layer runs four matmuls.

Shapes: N rows (sequences) of T tokens, H hidden size, Hq / Hkv query / key-value heads of size D,
G = Hq // Hkv query heads per KV head, L cache positions attended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orpheus_local import tokens as fmt
from orpheus_local.model.kv_cache import KVCache


@dataclass(frozen=True)
class LlamaConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None  # llama3 parameters; None for plain RoPE
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, cfg: dict) -> "LlamaConfig":
        """From a Hugging Face config.json dict."""
        # transformers >= 5 writes rope_parameters (rope_theta inside); older releases rope_scaling.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        kind = rope.pop("rope_type", rope.pop("type", "default"))
        if kind not in ("default", "llama3"):
            raise ValueError(f"unsupported RoPE type {kind!r}")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("Llama layers with biases are not supported")
        heads = cfg["num_attention_heads"]
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=rope if kind == "llama3" else None,
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        )


def rope_inv_freq(config: LlamaConfig) -> Tensor:
    """RoPE inverse frequencies [D/2], float32 on CPU, with llama3 scaling when configured."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    context = s["original_max_position_embeddings"]
    # Wavelengths longer than the original context are stretched by `factor`, short ones kept as
    # trained, and the band between interpolated smoothly.
    wavelen = 2 * math.pi / inv_freq
    stretched = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * stretched / factor + smooth * stretched
    in_band = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(in_band, blended, stretched)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [N, T, heads, D], cos/sin [N, T, 1, D]; rotate-half layout, as the checkpoint expects."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@dataclass
class _Batch:
    """What every layer needs for one forward pass; built once per pass."""

    cos: Tensor  # [N, T, 1, D]
    sin: Tensor
    mask: Tensor  # [N, 1, G*T, L] bool: query may attend the key position
    rows: Tensor | None  # [N] cache slot of each row; None: rows are slots 0..N-1 (no gather)
    kv_len: int  # L
    keep: Tensor | None  # flat indices into N*T of the tokens to store; None: all of them
    store_slots: Tensor  # [M] slot and position where each stored token goes
    store_pos: Tensor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # One fused kernel on CUDA (statistics in float32 whatever the activation dtype); the
        # decode step runs 57 of these, so seven small kernels each would cost more than the math.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.c = c
        self.qkv_proj = nn.Linear(c.hidden_size, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x: Tensor, batch: _Batch, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        """x [N, T, H]; k_cache/v_cache [slots, Hkv, max_len, D] of this layer, updated in place."""
        c = self.c
        n, t, _ = x.shape
        kv_width = c.num_kv_heads * c.head_dim
        qk, v = self.qkv_proj(x).split([(c.num_heads + c.num_kv_heads) * c.head_dim, kv_width], dim=-1)
        # Queries and keys rotate together: one set of RoPE kernels per layer instead of two.
        qk = apply_rope(qk.view(n, t, c.num_heads + c.num_kv_heads, c.head_dim), batch.cos, batch.sin)
        q, k = qk.split([c.num_heads, c.num_kv_heads], dim=2)
        k = k.flatten(0, 1)
        v = v.reshape(n * t, c.num_kv_heads, c.head_dim)
        if batch.keep is not None:
            k, v = k[batch.keep], v[batch.keep]
        k_cache[batch.store_slots, :, batch.store_pos] = k  # [M, Hkv, D] into their slots
        v_cache[batch.store_slots, :, batch.store_pos] = v
        keys, values = _rows_of(k_cache, batch, n), _rows_of(v_cache, batch, n)
        return self.o_proj(_attend(q, keys, values, batch.mask, c.head_dim**-0.5))


def _rows_of(cache: Tensor, batch: _Batch, n: int) -> Tensor:
    """The first L positions of each row's slot: [slots, Hkv, max_len, D] -> [N, Hkv, L, D]."""
    head = cache[:, :, : batch.kv_len]
    return head[:n] if batch.rows is None else head.index_select(0, batch.rows)


def _attend(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
    """q [N, T, Hq, D], keys/values [N, Hkv, L, D], mask [N, 1, G*T, L] -> [N, T, Hq*D]."""
    n, t, hq, d = q.shape
    hkv = keys.shape[1]
    g = hq // hkv
    # Fold the G query heads sharing a KV head into the query axis (head h = kv * G + g, as in
    # transformers' repeat_kv): one plain SDPA call, and K/V are never copied per query head.
    q = q.view(n, t, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(n, hkv, g * t, d)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return out.view(n, hkv, g, t, d).permute(0, 3, 1, 2, 4).reshape(n, t, hq * d)


class MLP(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x: Tensor, batch: _Batch, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch, k_cache, v_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Llama decoder. Call prefill() for prompts, decode() for one token per running sequence, then
    audio_logits() (or logits()) on the hidden states they return."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        tied = config.tie_word_embeddings
        self.lm_head = None if tied else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def prefill(self, cache: KVCache, tokens: Tensor, slots: Tensor, starts: Tensor, lengths: Tensor,
                kv_len: int | None = None) -> Tensor:
        """Run prompts (or prompt chunks) for several slots at once and store their keys/values.

        tokens [N, T] right-padded ids; slots [N] cache slot of each row; starts [N] position of each
        row's first token (0 for a new sequence, its current length to continue one); lengths [N] real
        tokens per row. kv_len: cache positions attended, at least max(starts + lengths) (default all).
        Returns the final hidden state of each row's last real token, [N, H].
        """
        n, t = tokens.shape
        offsets = torch.arange(t, device=tokens.device)
        positions = starts[:, None] + offsets  # [N, T]
        # Store only real tokens: padding could run past the end of its slot.
        keep = (offsets < lengths[:, None]).flatten().nonzero().squeeze(1)  # a host sync; prefill only
        store_slots = slots.repeat_interleave(t)[keep]
        store_pos = positions.flatten()[keep]
        batch = self._batch(positions, slots, kv_len or cache.max_len, keep, store_slots, store_pos)
        x = self._run(cache, tokens, batch)  # [N, T, H]
        return self.norm(x[torch.arange(n, device=x.device), lengths - 1])

    def decode(self, cache: KVCache, tokens: Tensor, positions: Tensor, slots: Tensor | None = None,
               kv_len: int | None = None) -> Tensor:
        """One token per row: tokens [B], positions [B] (each row's length before this token),
        slots [B] cache slots, or None when row i is slot i (attends the cache in place, no gather).

        Fixed shapes, no host syncs and no branching on tensor values: a CUDA graph can be captured
        per (B, kv_len, slots given or not). kv_len: cache positions attended, above every position.
        Returns the final hidden states [B, H].
        """
        store_slots = torch.arange(tokens.shape[0], device=tokens.device) if slots is None else slots
        batch = self._batch(positions[:, None], slots, kv_len or cache.max_len, None, store_slots, positions)
        return self.norm(self._run(cache, tokens[:, None], batch)[:, 0])

    def logits(self, hidden: Tensor) -> Tensor:
        """Full-vocabulary logits [..., V] (for tests and the reference path)."""
        return F.linear(hidden, self.head_weight)

    def audio_logits(self, hidden: Tensor, frame_pos: Tensor) -> Tensor:
        """Logits of the only ids the sampler may pick: hidden [B, H], frame_pos [B] in 0..6 ->
        [B, 4097]. Column c < 4096 is audio id AUDIO_BASE + p*4096 + c, column 4096 end_of_speech
        (left as is: the sampler masks it off frame boundaries)."""
        w = self.head_weight
        audio = w[fmt.AUDIO_BASE : fmt.AUDIO_LAST + 1].view(fmt.FRAME_TOKENS, fmt.CODEBOOK_SIZE, -1)
        stop = F.linear(hidden, w[fmt.END_OF_SPEECH : fmt.END_OF_SPEECH + 1])  # [B, 1]
        b = hidden.shape[0]
        if b < fmt.FRAME_TOKENS:
            # Few rows: gather each row's own 4096 weight rows (fewer bytes than all 7 blocks).
            codes = torch.bmm(audio[frame_pos], hidden[:, :, None]).squeeze(-1)
        else:
            # Many rows: read every block once for all rows, then keep each row's own block.
            every = F.linear(hidden, audio.flatten(0, 1)).view(b, fmt.FRAME_TOKENS, fmt.CODEBOOK_SIZE)
            codes = every[torch.arange(b, device=hidden.device), frame_pos]
        return torch.cat([codes, stop], dim=1)

    @property
    def head_weight(self) -> Tensor:
        """[V, H]: the embedding table when tied."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def _batch(self, positions: Tensor, rows: Tensor | None, kv_len: int, keep: Tensor | None,
               store_slots: Tensor, store_pos: Tensor) -> _Batch:
        n, t = positions.shape
        freqs = positions[..., None].float() * self.inv_freq  # [N, T, D/2], float32 as in training
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None]  # [N, T, 1, D]: broadcast over heads
        # Causal within each row's own slot: a query at position p sees cache positions 0..p.
        visible = torch.arange(kv_len, device=positions.device) <= positions[..., None]  # [N, T, L]
        g = self.config.num_heads // self.config.num_kv_heads
        mask = visible[:, None, None].expand(n, 1, g, t, kv_len).reshape(n, 1, g * t, kv_len)
        return _Batch(emb.cos().to(self.dtype), emb.sin().to(self.dtype), mask, rows, kv_len, keep,
                      store_slots, store_pos)

    def _run(self, cache: KVCache, tokens: Tensor, batch: _Batch) -> Tensor:
        x = self.embed_tokens(tokens)
        for layer, k_cache, v_cache in zip(self.layers, cache.k, cache.v):
            x = layer(x, batch, k_cache, v_cache)
        return x
