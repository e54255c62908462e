"""Synthesizer: the one facade the server, the CLI and the benchmarks use.

text + params -> parts -> prompt ids -> backend (engine or reference) -> audio ids -> frames -> SNAC
-> PCM, the parts' audio joined in order.

Every part is made and checked before the first one starts: a part whose prompt is over the
backend's limit is split further, and one that cannot be is an InputError before any audio, never a
stream cut after its first bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from contextlib import aclosing
from pathlib import Path
from typing import AsyncIterator, Callable

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.audio.crossfade import CROSSFADE_SAMPLES
from orpheus_local.audio.recording import read_recording, reference_ids
from orpheus_local.audio.snac import SnacCodec
from orpheus_local.audio.worker import CodecWorker
from orpheus_local.config import REFERENCE_TOKENS, EngineConfig
from orpheus_local.errors import InputError
from orpheus_local.params import SynthesisParams, VoiceReference
from orpheus_local.pipeline.guards import GuardLimits
from orpheus_local.pipeline.parts import GuardListener, Part, join_parts
from orpheus_local.text.split import (
    MIN_PART_CHARS,
    pack,
    part_chars,
    pieces,
    sentence_starts,
    split_text,
)
from orpheus_local.voices import ENGLISH_VOICES, Voices, checkpoint_voices
from orpheus_local.weights.checkpoint import (
    CheckpointError,
    load_snac,
    load_tokenizer,
    resolve_model_dir,
    resolve_snac_dir,
)

log = logging.getLogger(__name__)


class Synthesizer:
    """Takes a started backend (engine driver or reference) and a started codec worker; close()
    stops both. load() builds and starts them from a configuration. Its methods are called from the
    event loop (close() from any thread once nothing uses it).

    voices: the checkpoint's; a request naming another is an InputError before anything is generated.
    """

    def __init__(self, tokenizer, backend, codec_worker: CodecWorker, voices: Voices = ENGLISH_VOICES):
        self.tokenizer = tokenizer
        self.backend = backend
        self.codec_worker = codec_worker
        self.voices = voices
        self.guard_limits = GuardLimits()  # the thresholds of every part's guards

    @classmethod
    def load(cls, config: EngineConfig) -> "Synthesizer":
        if config.simulated_step_ms is not None:
            return cls.simulated(config)
        return cls.load_from(config, *checkpoint_dirs(config))

    @classmethod
    def load_from(cls, config: EngineConfig, model_dir, snac_dir) -> "Synthesizer":
        """load(), from the directories checkpoint_dirs(config) found."""
        device, dtype = config.resolved_device(), config.resolved_dtype()
        voices = served_voices(config, model_dir)
        config = with_reference_room(config, voices)
        tokenizer = load_tokenizer(model_dir)
        codec_worker = CodecWorker(SnacCodec(load_snac(snac_dir, device), device)).start()
        backend = _load_backend(config, model_dir, device, dtype).start()
        log.info("loaded %s (%s, %s) with the %s backend; voices: %s", model_dir, device, dtype, config.backend,
                 str(voices) or "none")
        return cls(tokenizer, backend, codec_worker, voices)

    @classmethod
    def simulated(cls, config: EngineConfig, default_slots: int = 256) -> "Synthesizer":
        """The real pipeline around a simulated device: every engine step sleeps
        config.simulated_step_ms, the codec costs nothing (for measuring the host side)."""
        from orpheus_local.audio.simulated import SpeechLikeCodec
        from orpheus_local.engine.core import EngineCore
        from orpheus_local.engine.driver import EngineDriver
        from orpheus_local.engine.simulated import SimulatedRunner
        from orpheus_local.weights.demo import build_demo_checkpoint

        model_dir, _ = build_demo_checkpoint(config.demo_dir)
        runner = SimulatedRunner(config.max_slots or default_slots, config.simulated_step_ms / 1000,
                                 max_prompt_tokens=config.max_prompt_tokens)
        backend = EngineDriver(EngineCore(runner, config.max_queue)).start()
        log.info("simulated device: %d slots, %g ms a step, no codec", runner.num_slots, config.simulated_step_ms)
        return cls(load_tokenizer(model_dir), backend, CodecWorker(SpeechLikeCodec()).start(),
                   _voices(model_dir, config))

    def checked(self, params: SynthesisParams) -> SynthesisParams:
        """params with the checkpoint's spelling of its voice; InputError for a voice it lacks, or a
        cloned voice on a checkpoint that does not clone."""
        if params.reference is not None:
            self.voices.check_clones()
        if params.voice is None:
            return params
        voice = self.voices.check(params.voice)
        return params if voice == params.voice else params.replace(voice=voice)

    def prompt_ids(self, params: SynthesisParams) -> list[int]:
        params = self.checked(params)
        return self._prompt(params, params.text)

    def _prompt(self, params: SynthesisParams, text: str) -> list[int]:
        """text's prompt with params' voice: its name before the text, or a cloned voice's reference turn."""
        if (ref := params.reference) is not None:
            return fmt.build_clone_prompt(self.tokenizer, text, ref.transcript, ref.audio_ids)
        return fmt.build_prompt(self.tokenizer, text, params.voice)

    def clone_voice(self, name: str, transcript: str, recording: bytes) -> VoiceReference:
        """A cloned voice from a recording (any format PyAV reads, 3 to 30 s) and its transcript.
        CPU-heavy (decoding, resampling, SNAC): call it off the event loop. InputError when the
        checkpoint does not clone, or the recording or the transcript cannot serve."""
        self.voices.check_clones()
        if not transcript.strip():
            raise InputError("transcript", "is required: the words spoken in the recording")
        reference = VoiceReference(name, transcript.strip(),
                                   tuple(reference_ids(self.codec_worker.core.codec, read_recording(recording))))
        turn = len(fmt.reference_turn(self.tokenizer, reference.transcript, reference.audio_ids))
        if turn > REFERENCE_TOKENS:  # the room the engine makes for a reference turn
            raise InputError("transcript", f"too long: with the recording it takes {turn} tokens, at most "
                                           f"{REFERENCE_TOKENS}; shorten the recording or the transcript")
        return reference

    def submit_ids(self, params: SynthesisParams, request_id: str | None = None, *, ignore_eos: bool = False,
                   max_tokens: int = 0, prompt_ids: list[int] | None = None, continuation: bool = False,
                   on_ids=None):
        """Start one generation; its TokenStream yields whole frames of audio ids and, once done,
        says why it ended (finish_reason). The caller must cancel() it if it stops reading early.

        prompt_ids: the prompt of params, when already built. continuation: a later part or a second
        attempt of a request already under way, which a full queue does not refuse (QueueFullError is
        for a request's first part only, before any of its audio). on_ids: takes the ids on the
        backend's thread instead of the stream (see TokenStream).
        """
        prompt_ids = self.prompt_ids(params) if prompt_ids is None else prompt_ids
        return self.backend.submit(prompt_ids, params, request_id or uuid.uuid4().hex, ignore_eos=ignore_eos,
                                   max_tokens=max_tokens, continuation=continuation, on_ids=on_ids)

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
        audio is joined with a crossfade (parts.py); a part whose prompt is over the backend's
        max_prompt_tokens is split further, and InputError comes before any chunk when a part cannot
        be made to fit, or when the checkpoint has no such voice. Each part is guarded against
        running away, and on_guard is told when a guard fires; ignore_eos, which forces every part to
        max_new_tokens, turns the guards off.
        whole_file: the caller returns the audio as one file, so it is made independent of timing
        and of other requests (a seeded request gives the same samples on every run), at the cost of
        first-chunk latency.
        """
        request_id = request_id or uuid.uuid4().hex
        params = self.checked(params)
        limits = None if ignore_eos else self.guard_limits
        parts = [
            Part(self.submit_ids, self.codec_worker.open, params.replace(text=text), request_id, i,
                 prompt_ids=prompt_ids, limits=limits, ignore_eos=ignore_eos, on_guard=on_guard, whole_file=whole_file)
            for i, (text, prompt_ids) in enumerate(await self._prompted_parts(params))
        ]
        async with aclosing(join_parts(parts, CROSSFADE_SAMPLES)) as audio:
            async for pcm in audio:
                yield pcm

    async def _prompted_parts(self, params: SynthesisParams) -> list[tuple[str, list[int]]]:
        """The request's parts, each with its prompt ids, every prompt within the backend's limit."""
        def encode(text: str) -> list[int]:
            return self._prompt(params, text)

        limit = self.backend.max_prompt_tokens
        if (ref := params.reference) is not None:  # its reference turn comes first, outside the text's limit
            limit += len(fmt.reference_turn(self.tokenizer, ref.transcript, ref.audio_ids))
        parts = []
        for text in await self._split(params.text, part_chars(params.max_new_tokens)):
            parts += await self._fit(text, encode(text), encode, limit)
        return parts

    @staticmethod
    async def _split(text: str, max_chars: int) -> list[str]:
        """split_text, a piece at a time off the event loop (the segmenter holds the GIL for up to
        tens of ms a piece): a listener that leaves stops the splitting within one piece."""
        if len(text) <= max_chars:
            return [text]
        starts = []
        for begin, end in pieces(text):
            starts += await asyncio.to_thread(sentence_starts, text, begin, end)
        return pack(text, starts, max_chars)

    async def _fit(self, text: str, prompt_ids: list[int], encode: Callable[[str], list[int]],
                   limit: int) -> list[tuple[str, list[int]]]:
        """[(text, prompt_ids)] when the prompt fits the limit, else the parts of text split shorter in
        proportion to the excess (emoji and rare scripts take several tokens a character), each fitted
        the same way. The segmenter runs off the event loop, the tokenizer (shared by every request) on it."""
        if len(prompt_ids) <= limit:
            return [(text, prompt_ids)]
        if len(text) <= MIN_PART_CHARS:
            raise InputError("text", f"too long for one generation even when split ({len(prompt_ids)} prompt "
                                     f"tokens for {len(text)} characters, at most {limit})")
        shorter = max(MIN_PART_CHARS, min(len(text) - 1, len(text) * limit // len(prompt_ids)))
        fitted = []
        for part in await asyncio.to_thread(split_text, text, shorter):
            fitted += await self._fit(part, encode(part), encode, limit)
        return fitted

    async def synthesize(self, params: SynthesisParams, request_id: str | None = None, **kw) -> np.ndarray:
        """The whole audio at once: a seeded request gives the same samples on every run."""
        chunks = [c async for c in self.stream(params, request_id, whole_file=True, **kw)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def stats(self) -> dict:
        return self.backend.stats()

    def problem(self) -> str | None:
        """Why this synthesizer cannot serve any more (a thread it needs has stopped), or None."""
        if not self.backend.alive():
            return "the engine thread has stopped"
        if not self.codec_worker.alive():
            return "the audio decoder thread has stopped"
        return None

    def codec_backlog_s(self) -> float:
        """Seconds of audio decoding the codec worker is behind on (any thread; cheap)."""
        return self.codec_worker.backlog_seconds()

    def close(self) -> None:
        self.backend.close()
        self.codec_worker.close()


def checkpoint_dirs(config: EngineConfig) -> tuple[Path, Path]:
    """(model_dir, snac_dir) of the configured checkpoint: the demo's built (once) from its seed, a
    hub id's downloaded, a local one's checked."""
    if config.demo:
        from orpheus_local.weights.demo import build_demo_checkpoint

        return build_demo_checkpoint(config.demo_dir, seed=config.demo_seed)
    return resolve_model_dir(config.model), resolve_snac_dir(config.snac)


def served_voices(config: EngineConfig, model_dir) -> Voices:
    """The voices the checkpoint is served with; the demo's clone too, as it stands in for a
    fine-tune and a pretrained checkpoint."""
    voices = _voices(model_dir, config)
    return voices.with_clones() if config.demo else voices


def with_reference_room(config: EngineConfig, voices: Voices) -> EngineConfig:
    """config with room for a cloned voice's reference turn in every slot when the checkpoint clones."""
    if voices.clones and not config.max_reference_tokens:
        return dataclasses.replace(config, max_reference_tokens=REFERENCE_TOKENS)
    return config


def _voices(model_dir, config: EngineConfig) -> Voices:
    try:
        return checkpoint_voices(model_dir, config.voices)
    except ValueError as exc:  # a voices.json that cannot be read is the checkpoint's fault
        raise CheckpointError(str(exc)) from None


def _load_backend(config: EngineConfig, model_dir, device: str, dtype: str):
    """The backend named by the configuration, built but not started."""
    if config.backend == "reference":
        from orpheus_local.reference.backend import ReferenceBackend
        from orpheus_local.reference.generator import ReferenceGenerator

        return ReferenceBackend(ReferenceGenerator.load(model_dir, device, dtype), config.max_queue,
                                config.max_prompt_tokens)
    if config.backend == "engine":
        from orpheus_local.engine.core import EngineCore
        from orpheus_local.engine.driver import EngineDriver

        return EngineDriver(EngineCore.load(config, model_dir, device, dtype))
    raise ValueError(f"backend: unknown backend {config.backend!r} (engine or reference)")
