"""Reference generation with transformers `generate()`: the correctness oracle and the baseline.

One request at a time. Sampling follows the request exactly: repetition penalty over prompt and
generated ids, then the Orpheus frame constraint, then temperature, then top_k (when set), then top_p.
"""

from __future__ import annotations

import queue
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

from .. import format as fmt
from ..errors import QueueFullError
from ..params import SynthesisParams
from .stream import TokenStream


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


class _StreamerToTokenStream:
    """transformers streamer that forwards each new audio id to a TokenStream."""

    def __init__(self, stream):
        self.stream = stream
        self._prompt_seen = False
        self.stopped = False  # end_of_speech was sampled

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        values = value.reshape(-1).tolist()
        self.stopped = self.stopped or fmt.END_OF_SPEECH in values
        ids = [i for i in values if fmt.is_audio_id(i)]
        if ids:
            self.stream.put(ids)

    def end(self) -> None:
        pass


class ReferenceBackend:
    """Serves requests one at a time through ReferenceGenerator on a worker thread."""

    def __init__(self, generator: ReferenceGenerator, max_queue: int):
        self.generator = generator
        self._queue: "queue.Queue" = queue.Queue(maxsize=max_queue)
        self._running = 0
        self._thread = threading.Thread(target=self._run, name="orpheus-reference", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: SynthesisParams, request_id: str, *, ignore_eos: bool = False,
               max_tokens: int = 0):

        stream = TokenStream(request_id)
        try:
            self._queue.put_nowait((stream, prompt_ids, params, ignore_eos, max_tokens))
        except queue.Full:
            raise QueueFullError(f"{self._queue.maxsize} requests are already waiting") from None
        return stream

    def stats(self) -> dict:
        return {"queued": self._queue.qsize(), "running": self._running}

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            stream, prompt_ids, params, ignore_eos, max_tokens = item
            if stream.cancelled.is_set():
                stream.finish()
                continue
            self._running = 1
            try:
                streamer = _StreamerToTokenStream(stream)
                self.generator.generate(
                    prompt_ids, params, ignore_eos=ignore_eos, max_tokens=max_tokens,
                    streamer=streamer, cancelled=stream.cancelled,
                )
                stream.finish(reason=None if stream.cancelled.is_set() else "stop" if streamer.stopped else "length")
            except Exception as exc:  # one failing request must not stop the worker
                stream.finish(exc)
            finally:
                self._running = 0
