"""Reference generation with transformers `generate()`: the correctness oracle and the baseline.

One request at a time. Sampling follows the request exactly: repetition penalty over prompt and
generated ids, then the Orpheus frame constraint, then temperature, then top_k (when set), then top_p.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import (
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from orpheus_local import tokens as fmt
from orpheus_local.params import SynthesisParams


class FrameConstraint(LogitsProcessor):
    """Allow only the audio ids of the current frame position, and end_of_speech at frame boundaries."""

    def __init__(self, prompt_len: int, allow_stop: bool = True):
        self.prompt_len = prompt_len
        self.allow_stop = allow_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        p = (input_ids.shape[1] - self.prompt_len) % fmt.FRAME_TOKENS
        lo, hi = fmt.position_range(p)
        allowed = torch.full_like(scores, float("-inf"))
        allowed[:, lo:hi] = 0
        if p == 0 and self.allow_stop:
            allowed[:, fmt.END_OF_SPEECH] = 0
        return scores + allowed


class CancelCriteria(StoppingCriteria):
    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class ReferenceGenerator:
    model: LlamaForCausalLM
    device: str

    @classmethod
    def load(cls, model_dir, device: str, dtype: str) -> "ReferenceGenerator":
        model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
        return cls(model.to(device).eval(), device)

    def generate(
        self,
        prompt_ids: list[int],
        params: SynthesisParams,
        *,
        ignore_eos: bool = False,
        max_tokens: int = 0,
        streamer=None,
        cancelled: threading.Event | None = None,
    ) -> list[int]:
        """Sample audio ids for one prompt; returns whole frames only, stop token excluded."""
        processors = LogitsProcessorList([
            RepetitionPenaltyLogitsProcessor(params.repetition_penalty),
            FrameConstraint(len(prompt_ids), allow_stop=not ignore_eos),
            TemperatureLogitsWarper(params.temperature),
            *([TopKLogitsWarper(params.top_k)] if params.top_k else []),
            TopPLogitsWarper(params.top_p),
        ])
        stopping = StoppingCriteriaList([CancelCriteria(cancelled)]) if cancelled else None
        input_ids = torch.tensor([prompt_ids], device=self.device)
        # Neutral built-in settings so that only the processors above shape the distribution.
        with torch.inference_mode(), _seeded(params.seed):
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                max_new_tokens=max_tokens or params.max_new_tokens, min_new_tokens=0,
                eos_token_id=None if ignore_eos else fmt.END_OF_SPEECH, pad_token_id=fmt.PAD,
                logits_processor=processors, stopping_criteria=stopping, streamer=streamer,
            )
        generated = out[0, len(prompt_ids):].tolist()
        if generated and generated[-1] == fmt.END_OF_SPEECH:
            generated.pop()
        return generated[: len(generated) // fmt.FRAME_TOKENS * fmt.FRAME_TOKENS]


class _seeded:
    """Seed torch's global RNG for one generation without disturbing other users of it."""

    _lock = threading.Lock()

    def __init__(self, seed: int | None):
        self.seed = seed

    def __enter__(self):
        if self.seed is None:
            return
        self._lock.acquire()
        self._fork = torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else [])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is None:
            return
        try:
            self._fork.__exit__(*exc)
        finally:
            self._lock.release()
