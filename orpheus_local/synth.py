"""Synthesizer: the one facade the server, the CLI and the benchmarks use.

text + params -> prompt ids -> backend (engine or reference) -> audio ids -> frames -> SNAC -> PCM.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from . import format as fmt
from .checkpoint import load_snac, load_tokenizer, resolve_model_dir, resolve_snac_dir
from .codec import SnacCodec
from .codec_worker import CodecWorker
from .config import EngineConfig
from .params import SynthesisParams

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model_dir: str
    snac_dir: str
    device: str
    dtype: str
    demo: bool


class Synthesizer:
    sample_rate = fmt.SAMPLE_RATE

    def __init__(self, tokenizer, backend, codec, info: LoadedModel):
        self.tokenizer = tokenizer
        self.backend = backend
        self.codec = codec
        self.codec_worker = CodecWorker(codec)
        self.info = info

    @classmethod
    def load(cls, config: EngineConfig) -> "Synthesizer":
        device, dtype = config.resolved_device(), config.resolved_dtype()
        if config.demo:
            from .demo import build_demo_checkpoint

            model_dir, snac_dir = build_demo_checkpoint(config.demo_dir)
        else:
            model_dir, snac_dir = resolve_model_dir(config.model), resolve_snac_dir(config.snac)
        tokenizer = load_tokenizer(model_dir)
        codec = SnacCodec(load_snac(snac_dir, device), device)
        backend = _load_backend(config, model_dir, device, dtype)
        info = LoadedModel(str(model_dir), str(snac_dir), device, dtype, config.demo)
        log.info("loaded %s (%s, %s) with the %s backend", model_dir, device, dtype, config.backend)
        return cls(tokenizer, backend, codec, info)

    def prompt_ids(self, params: SynthesisParams) -> list[int]:
        return fmt.build_prompt(self.tokenizer, params.text, params.voice)

    async def stream_ids(
        self, params: SynthesisParams, request_id: str | None = None, *, ignore_eos: bool = False
    ) -> AsyncIterator[list[int]]:
        """Audio ids as the backend produces them; leaving the loop early cancels the request."""
        stream = self.backend.submit(
            self.prompt_ids(params), params, request_id or uuid.uuid4().hex, ignore_eos=ignore_eos
        )
        try:
            async for ids in stream:
                yield ids
        finally:
            stream.cancel()

    async def stream(
        self, params: SynthesisParams, request_id: str | None = None, *, ignore_eos: bool = False
    ) -> AsyncIterator[np.ndarray]:
        """float32 mono PCM chunks at 24 kHz, in order, as frames are generated."""
        audio = self.codec_worker.open()
        feeder = asyncio.create_task(self._feed(audio, params, request_id, ignore_eos))
        try:
            async for pcm in audio:
                yield pcm
            await feeder  # raises the generation's error, if any
        finally:
            audio.close()
            if not feeder.done():
                feeder.cancel()  # the consumer left: stop generating
            await asyncio.gather(feeder, return_exceptions=True)

    async def _feed(self, audio, params: SynthesisParams, request_id: str | None, ignore_eos: bool) -> None:
        """Generated ids -> whole frames -> the stream's decoder."""
        pending: list[int] = []
        try:
            async for ids in self.stream_ids(params, request_id, ignore_eos=ignore_eos):
                pending.extend(ids)
                whole = len(pending) // fmt.FRAME_TOKENS * fmt.FRAME_TOKENS
                if whole:
                    audio.push(fmt.ids_to_frames(pending[:whole]))
                    del pending[:whole]
        except BaseException as exc:
            audio.error = exc
            audio.close()
            raise
        audio.finish()  # an incomplete last frame (cut by max_new_tokens) is dropped

    async def synthesize(self, params: SynthesisParams, request_id: str | None = None, **kw) -> np.ndarray:
        chunks = [c async for c in self.stream(params, request_id, **kw)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def stats(self) -> dict:
        return self.backend.stats()

    def close(self) -> None:
        self.backend.close()
        self.codec_worker.close()


def _load_backend(config: EngineConfig, model_dir, device: str, dtype: str):
    if config.backend == "reference":
        from .engine.reference import ReferenceBackend, ReferenceGenerator

        return ReferenceBackend(ReferenceGenerator.load(model_dir, device, dtype), config.max_queue)
    if config.backend == "engine":
        from .engine.engine import Engine

        return Engine.load(config, model_dir, device, dtype)
    raise ValueError(f"backend: unknown backend {config.backend!r} (engine or reference)")
