"""Synthesizer: the one facade the server, the CLI and the benchmarks use.

text + params -> parts -> prompt ids -> backend (engine or reference) -> audio ids -> frames -> SNAC
-> PCM, the parts' audio joined in order.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import aclosing
from typing import AsyncIterator

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.audio.crossfade import CROSSFADE_SAMPLES
from orpheus_local.audio.snac import SnacCodec
from orpheus_local.audio.worker import CodecWorker
from orpheus_local.config import EngineConfig
from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.guards import GuardLimits
from orpheus_local.pipeline.parts import GuardListener, Part, join_parts
from orpheus_local.text.split import part_chars, split_text
from orpheus_local.weights.checkpoint import (
    load_snac,
    load_tokenizer,
    resolve_model_dir,
    resolve_snac_dir,
)

log = logging.getLogger(__name__)


class Synthesizer:
    """Takes a started backend (engine driver or reference) and a started codec worker; close()
    stops both. load() builds and starts them from a configuration. Its methods are called from the
    event loop (close() from any thread once nothing uses it)."""

    def __init__(self, tokenizer, backend, codec_worker: CodecWorker):
        self.tokenizer = tokenizer
        self.backend = backend
        self.codec_worker = codec_worker
        self.guard_limits = GuardLimits()  # the thresholds of every part's guards

    @classmethod
    def load(cls, config: EngineConfig) -> "Synthesizer":
        device, dtype = config.resolved_device(), config.resolved_dtype()
        if config.demo:
            from orpheus_local.weights.demo import build_demo_checkpoint

            model_dir, snac_dir = build_demo_checkpoint(config.demo_dir)
        else:
            model_dir, snac_dir = resolve_model_dir(config.model), resolve_snac_dir(config.snac)
        tokenizer = load_tokenizer(model_dir)
        codec_worker = CodecWorker(SnacCodec(load_snac(snac_dir, device), device)).start()
        backend = _load_backend(config, model_dir, device, dtype).start()
        log.info("loaded %s (%s, %s) with the %s backend", model_dir, device, dtype, config.backend)
        return cls(tokenizer, backend, codec_worker)

    def prompt_ids(self, params: SynthesisParams) -> list[int]:
        return fmt.build_prompt(self.tokenizer, params.text, params.voice)

    def submit_ids(self, params: SynthesisParams, request_id: str | None = None, *, ignore_eos: bool = False,
                   max_tokens: int = 0):
        """Start one generation; its TokenStream yields whole frames of audio ids and, once done,
        says why it ended (finish_reason). The caller must cancel() it if it stops reading early."""
        return self.backend.submit(self.prompt_ids(params), params, request_id or uuid.uuid4().hex,
                                   ignore_eos=ignore_eos, max_tokens=max_tokens)

    async def stream_ids(
        self, params: SynthesisParams, request_id: str | None = None, *, ignore_eos: bool = False, max_tokens: int = 0
    ) -> AsyncIterator[list[int]]:
        """Audio ids of one generation as the backend produces them; leaving the loop early cancels it.

        ignore_eos and max_tokens force a length: exactly max_new_tokens, or at most max_tokens.
        """
        stream = self.submit_ids(params, request_id, ignore_eos=ignore_eos, max_tokens=max_tokens)
        try:
            async for ids in stream:
                yield ids
        finally:
            stream.cancel()

    async def stream(
        self, params: SynthesisParams, request_id: str | None = None, *, ignore_eos: bool = False,
        on_guard: GuardListener | None = None, whole_file: bool = False,
    ) -> AsyncIterator[np.ndarray]:
        """float32 mono PCM chunks at 24 kHz, in order, as frames are generated.

        Text longer than one part (part_chars(max_new_tokens)) is split at sentences and the parts'
        audio is joined with a crossfade (parts.py). Each part is guarded against running away, and
        on_guard is told when a guard fires; ignore_eos, which forces every part to max_new_tokens,
        turns the guards off. whole_file: the caller returns the audio as one file, so it is made
        independent of timing and of other requests (a seeded request gives the same samples on
        every run), at the cost of first-chunk latency.
        """
        request_id = request_id or uuid.uuid4().hex
        max_chars = part_chars(params.max_new_tokens)
        if len(params.text) <= max_chars:
            texts = [params.text]
        else:  # the segmenter takes up to half a second on the longest texts: off the event loop
            texts = await asyncio.to_thread(split_text, params.text, max_chars)
        limits = None if ignore_eos else self.guard_limits
        parts = [
            Part(self.submit_ids, self.codec_worker.open, params.replace(text=text), request_id, i, limits=limits,
                 ignore_eos=ignore_eos, on_guard=on_guard, whole_file=whole_file)
            for i, text in enumerate(texts)
        ]
        async with aclosing(join_parts(parts, CROSSFADE_SAMPLES)) as audio:
            async for pcm in audio:
                yield pcm

    async def synthesize(self, params: SynthesisParams, request_id: str | None = None, **kw) -> np.ndarray:
        """The whole audio at once: a seeded request gives the same samples on every run."""
        chunks = [c async for c in self.stream(params, request_id, whole_file=True, **kw)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def stats(self) -> dict:
        return self.backend.stats()

    def close(self) -> None:
        self.backend.close()
        self.codec_worker.close()


def _load_backend(config: EngineConfig, model_dir, device: str, dtype: str):
    """The backend named by the configuration, built but not started."""
    if config.backend == "reference":
        from orpheus_local.reference.backend import ReferenceBackend
        from orpheus_local.reference.generator import ReferenceGenerator

        return ReferenceBackend(ReferenceGenerator.load(model_dir, device, dtype), config.max_queue)
    if config.backend == "engine":
        from orpheus_local.engine.core import EngineCore
        from orpheus_local.engine.driver import EngineDriver

        return EngineDriver(EngineCore.load(config, model_dir, device, dtype))
    raise ValueError(f"backend: unknown backend {config.backend!r} (engine or reference)")
