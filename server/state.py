"""ServerState: what every route shares (settings, the synthesizer once it is ready, admission,
jobs, metrics), and the loading that makes it ready."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Callable

from fastapi import Depends, Request

from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.synthesizer import Synthesizer
from orpheus_local.voices import ENGLISH_VOICES, Voices
from orpheus_local.weights.checkpoint import CheckpointError

from .encoding import EncoderPool
from .errors import not_ready, shutting_down, unknown_model
from .generation import Admission
from .job_store import backend_for
from .jobs import JobStore, JobStoreError
from .metrics import Metrics
from .openai_names import OpenAINames
from .settings import ServerSettings
from .voice_store import DEFAULT_FILE as VOICES_FILE
from .voice_store import ClonedVoiceStore

log = logging.getLogger(__name__)

# The shortest generation the API allows: compiles and allocates whatever the first request would.
# Without a voice: a prompt every checkpoint takes, whichever voices it has.
WARMUP = SynthesisParams(text="Hello there.", voice=None, max_new_tokens=100, seed=0)

# One synthesizer (served as the default checkpoint), or the checkpoints served side by side by name,
# the default first; or a function that loads either.
Loaded = Synthesizer | dict[str, Synthesizer]
SynthesizerSource = Loaded | Callable[[], Loaded]


def codec_behind(seconds: float, limit_s: float) -> str | None:
    """Why new requests must wait for an audio decoder `seconds` of work behind, or None within limit_s."""
    return f"the audio decoder is {seconds:.1f} s of work behind" if seconds > limit_s else None


class ServerState:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        # Each served checkpoint's names, its voices as far as the settings tell; replaced by the
        # loaded checkpoints' (load()). openai_names: the default checkpoint's.
        self.checkpoint_names = settings.checkpoint_names()
        self._set_names(lambda _model: None)  # None: the voices as far as the settings tell
        self.created = int(time.time())
        self.metrics = Metrics()
        self.admission = Admission(settings.max_in_flight, overloaded=self._codec_overloaded)
        self.encoders = EncoderPool()
        # Opened at start-up, in load(): nothing is read or written until then.
        self.jobs = JobStore(self.admission, self.encoders, backend_for(settings.jobs_url, settings.state_dir),
                             settings.max_jobs, settings.job_ttl_s)
        self.cloned_voices = ClonedVoiceStore(settings.state_dir / VOICES_FILE)
        self.cloning = asyncio.Lock()  # one reference recording encoded at a time: each takes the CPU for a while
        self.synths: dict[str, Synthesizer] = {}  # served checkpoint name -> its synthesizer, the default first
        self.owns_synth = False
        self.ready = False
        self.loaded = asyncio.Event()  # set once loading has ended, ready or failed
        self.draining = False  # stopping: requests in flight finish, new ones get 503
        self.load_error: str | None = None
        self.speech_sessions = 0  # open on WS /v1/audio/speech/stream
        self.metrics.speech_sessions.set_function(lambda: self.speech_sessions)
        self.metrics.watch(
            in_flight=lambda: self.admission.count,
            queued=lambda: self._engine_total("queued"),
            running=lambda: self._engine_total("running"),
            engine=self._engine_stats,
        )

    @property
    def synth(self) -> Synthesizer | None:
        """The default checkpoint's synthesizer; None before loading."""
        return self.synths.get(self.checkpoint_names[0])

    @synth.setter
    def synth(self, synth: Synthesizer) -> None:
        self.synths[self.checkpoint_names[0]] = synth

    def _engine_stats(self) -> dict:
        """The engines' stats: one's own, or every numeric one summed over the checkpoints."""
        if len(self.synths) == 1:
            return self.synth.stats()
        totals: dict = {}
        for synth in self.synths.values():
            for key, value in synth.stats().items():
                if isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0) + value
        return totals

    def _engine_total(self, key: str) -> float:
        return sum(synth.stats().get(key, 0) for synth in self.synths.values())

    def _codec_overloaded(self) -> str | None:
        """Why new requests must wait for the audio decoder (the furthest behind of the checkpoints'), or None."""
        seconds = max((synth.codec_backlog_s() for synth in self.synths.values()), default=0.0)  # none before loading
        return codec_behind(seconds, self.settings.max_codec_backlog_s)

    def synthesizer(self, model: str | None = None) -> Synthesizer:
        """The synthesizer of the served checkpoint named model (None: the default), or 503 while
        loading (or after loading failed) and while the server stops."""
        if self.draining:
            raise shutting_down()
        if not self.ready:
            raise not_ready()
        return self.synths[model or self.checkpoint_names[0]]

    def model_for(self, requested: str) -> str:
        """The served checkpoint a request's model name selects; 404 for a name that selects none."""
        if (model := self.openai_names.model_for(requested)) is None:
            raise unknown_model(requested, self.checkpoint_names)
        return model

    def problem(self) -> str | None:
        """Why this server cannot serve any more (a checkpoint's thread has stopped), or None."""
        for name, synth in self.synths.items():
            if (problem := synth.problem()) is not None:
                return problem if len(self.synths) == 1 else f"{name}: {problem}"
        return None

    async def load(self, source: SynthesizerSource, on_error: Callable[[BaseException], None] | None,
                   on_ready: Callable[[], None] | None = None) -> None:
        """Open the v2 job store, load (in a thread, so the event loop keeps answering /health), warm
        up, call on_ready, then mark ready."""
        try:
            await self.jobs.open()  # first: a store that cannot be reached fails the start-up at once
            await self.cloned_voices.open()
            if callable(source):
                loaded, self.owns_synth = await asyncio.to_thread(source), True
            else:
                loaded = source
            self.synths = dict(loaded) if isinstance(loaded, dict) else {self.checkpoint_names[0]: loaded}
            self._set_names(self._served_voices)
            if self.settings.warmup:
                started = time.perf_counter()
                for synth in self.synths.values():
                    await synth.synthesize(WARMUP, "warmup")
                log.info("warmed up in %.1f s", time.perf_counter() - started)
        except Exception as exc:
            if isinstance(exc, CheckpointError):
                log.error("cannot load the model: %s", exc)
            elif isinstance(exc, JobStoreError):
                log.error("%s", exc)
            else:
                log.exception("cannot load the model")
            self.load_error = str(exc)
            if on_error is not None:
                on_error(exc)
        else:
            if on_ready is not None:
                on_ready()
            self.ready = True
            log.info("ready to serve")
        finally:
            self.loaded.set()

    def _set_names(self, voices_of: Callable[[str], Voices | None]) -> None:
        """Each served checkpoint's names with voices_of(its name) as its voices; openai_names: the default's."""
        self.names_by_model = {name: self.settings.openai_names(voices_of(name), model=name)
                               for name in self.checkpoint_names}
        self.openai_names = self.names_by_model[self.checkpoint_names[0]]

    async def names_for(self, owner: str | None, voice: str | None, model: str | None = None) -> OpenAINames:
        """The names a request may use with the checkpoint named model (None: the default): the
        served ones, and owner's cloned voice named voice, if any."""
        names = self.names_by_model[model or self.checkpoint_names[0]]
        if voice is None or not voice.strip() or names.served is None or names.served.find(voice) is not None:
            return names
        return names.with_clone(await self.cloned_voices.find(owner, voice))

    def _served_voices(self, model: str) -> Voices:
        """--voices when set, else the loaded checkpoint's (what the settings tell for a stand-in
        synthesizer that has none)."""
        if self.settings.voices is None and (voices := getattr(self.synths[model], "voices", None)) is not None:
            return voices
        return self.settings.served_voices(model) or ENGLISH_VOICES

    async def close(self) -> None:
        self.ready = False
        await self.jobs.close()
        await self.cloned_voices.close()
        self.encoders.close()
        if self.owns_synth and self.synths:
            for synth in self.synths.values():
                await asyncio.to_thread(synth.close)
            log.info("engine closed" if len(self.synths) == 1 else "engines closed")


async def server_state(request: Request) -> ServerState:
    # async: FastAPI runs a plain function dependency on a worker thread, a thread hop per request
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]
