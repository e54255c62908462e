"""Batched constrained sampling: one call picks the next id of every running slot.

Works on LlamaModel.audio_logits' [B, 4097] columns (the 4096 audio ids of the row's frame position,
then end_of_speech), in transformers' order: repetition penalty, temperature, top-k (when set), top-p
(keeping at least one id), then a draw. end_of_speech is allowed only at a frame boundary, and never
for a request whose length is forced (ignore_eos).

The draw is Gumbel-max with counter-based noise: noise(seed, step, column) is a pure hash, so a
request with a given seed gets the same ids alone or beside any other requests, in any row order.
Per-slot state lives on the device and every step is fixed-shape tensor work (CUDA-graph friendly).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from orpheus_local import tokens as fmt
from orpheus_local.counter_rng import M32, mix32, seed_key

COLUMNS = fmt.CODEBOOK_SIZE + 1  # per row: 4096 audio ids + end_of_speech
STOP_COLUMN = fmt.CODEBOOK_SIZE
AUDIO_IDS = fmt.FRAME_TOKENS * fmt.CODEBOOK_SIZE
SEEN_STOP = AUDIO_IDS  # index of end_of_speech in the presence mask, after the 7*4096 audio ids

class Sampler:
    """Per-slot sampling parameters, seeds, step counters and presence masks."""

    def __init__(self, num_slots: int, device: str | torch.device = "cpu"):
        self.temperature = torch.ones(num_slots, device=device)
        self.top_p = torch.ones(num_slots, device=device)
        self.penalty = torch.ones(num_slots, device=device)
        self.top_k = torch.full((num_slots,), COLUMNS, dtype=torch.int64, device=device)  # COLUMNS: no top-k
        self.allow_stop = torch.ones(num_slots, dtype=torch.bool, device=device)
        self.seed = torch.zeros(num_slots, dtype=torch.int64, device=device)
        self.step = torch.zeros(num_slots, dtype=torch.int64, device=device)  # ids sampled so far
        # seen[s, i]: audio id AUDIO_BASE + i (or end_of_speech at SEEN_STOP) is in slot s's prompt or
        # output. Only these ids can get logits, so only they need tracking for the penalty.
        self.seen = torch.zeros(num_slots, AUDIO_IDS + 1, dtype=torch.bool, device=device)

    def reset(self, slot: int, *, temperature: float, top_p: float, repetition_penalty: float,
              seed: int, top_k: int | None = None, allow_stop: bool = True, prompt_ids: Iterable[int] = ()) -> None:
        """Start a new request in `slot` (its seed chosen by the engine: the request's, or a fresh one).
        allow_stop=False: end_of_speech is never picked (a forced length)."""
        self.temperature[slot] = temperature
        self.top_p[slot] = top_p
        self.penalty[slot] = repetition_penalty
        self.top_k[slot] = top_k or COLUMNS
        self.allow_stop[slot] = allow_stop
        self.seed[slot] = seed
        self.step[slot] = 0
        self.seen[slot] = False
        seen = [_seen_index(i) for i in prompt_ids if fmt.is_audio_id(i) or i == fmt.END_OF_SPEECH]
        if seen:
            self.seen[slot, torch.tensor(seen, device=self.seen.device)] = True

    def frame_positions(self, slots: Tensor) -> Tensor:
        """[B] frame position (0..6) of each slot's next id: generation starts on a frame boundary."""
        return self.step[slots] % fmt.FRAME_TOKENS

    def warp(self, logits: Tensor, slots: Tensor, frame_pos: Tensor) -> Tensor:
        """logits [B, 4097] -> float32 scores the draw samples from; ids that may not be picked are -inf."""
        scores = logits.float()
        is_stop = torch.arange(COLUMNS, device=scores.device) == STOP_COLUMN
        no_stop = (frame_pos != 0) | ~self.allow_stop[slots]  # [B]
        scores = scores.masked_fill(is_stop & no_stop[:, None], float("-inf"))

        seen = self.seen[slots[:, None], _presence_columns(frame_pos)]  # [B, 4097]
        penalty = self.penalty[slots, None]
        scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)

        scores = scores / self.temperature[slots, None]

        ascending, order = scores.sort(dim=-1)
        # Top-k: drop every id below the k-th highest score (ties with it stay, as in transformers).
        kth = ascending.gather(1, COLUMNS - self.top_k[slots, None])
        below_k = ascending < kth
        ascending = ascending.masked_fill(below_k, float("-inf"))
        # Top-p: drop the least likely ids while the mass dropped stays within 1 - top_p.
        dropped = below_k | (ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - self.top_p[slots, None])
        dropped[:, -1] = False  # always keep the most likely id
        return scores.masked_fill(dropped.scatter(1, order, dropped), float("-inf"))

    def sample(self, logits: Tensor, slots: Tensor, frame_pos: Tensor) -> Tensor:
        """logits [B, 4097] from audio_logits, slots [B], frame_pos [B] -> next ids [B] (vocabulary ids,
        int64, on the device). Advances each slot's step and records the ids for the penalty."""
        scores = self.warp(logits, slots, frame_pos)
        # Gumbel-max: argmax(score + Gumbel noise) is an exact draw from softmax(score).
        noise = gumbel_noise(self.seed[slots], self.step[slots], COLUMNS)
        column = (scores + noise).argmax(dim=-1)
        is_stop = column == STOP_COLUMN
        audio_index = frame_pos * fmt.CODEBOOK_SIZE + column
        ids = torch.where(is_stop, fmt.END_OF_SPEECH, fmt.AUDIO_BASE + audio_index)
        # A tensor value, not Python's True: a CPU scalar would be a host copy inside a CUDA graph.
        self.seen[slots, torch.where(is_stop, SEEN_STOP, audio_index)] = torch.ones_like(is_stop)
        self.step[slots] += 1
        return ids


def _seen_index(token_id: int) -> int:
    return SEEN_STOP if token_id == fmt.END_OF_SPEECH else token_id - fmt.AUDIO_BASE


def _presence_columns(frame_pos: Tensor) -> Tensor:
    """[B, 4097] presence-mask index of each logits column."""
    audio = frame_pos[:, None] * fmt.CODEBOOK_SIZE + torch.arange(fmt.CODEBOOK_SIZE, device=frame_pos.device)
    return torch.cat([audio, torch.full_like(audio[:, :1], SEEN_STOP)], dim=1)


def gumbel_noise(seed: Tensor, step: Tensor, columns: int) -> Tensor:
    """[B, columns] float32 standard Gumbel noise, a pure function of (seed, step, column)."""
    h = mix32(seed_key(seed, 0x9E3779B9) ^ (step & M32))
    h = mix32(mix32(h[:, None] ^ torch.arange(columns, device=seed.device)))
    u = (h.double() + 0.5) / 2.0**32  # uniform in (0, 1), never 0 or 1
    return (-torch.log(-torch.log(u))).float()
