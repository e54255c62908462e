"""One voice agent's session on WS /v1/audio/speech/stream: text in as it is written, audio out as
soon as each sentence is complete, in order, and cut off at once on request.

The client sends JSON text frames: session.update, input_text.append, input_text.commit,
response.cancel, session.close. The server answers with binary audio frames and JSON events:
speech.started, speech.done, error, session.closed. Every utterance that starts also ends with
exactly one speech.done; the audio frames between the two are that utterance's, and in a container
format (wav, mp3, opus) they make one complete file.

Two tasks share the session: the receiver applies the client's messages as they come, and the
speaker sends the utterances one after the other. The next utterance is generated while the current
one is sent (LOOKAHEAD), so the listener hears no gap between sentences; its audio waits in memory,
bounded by one utterance's max_new_tokens. Audio reaches the socket only as fast as the client reads
it; a client that stops reading is dropped by the connection's send deadline (server/connections.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ConfigDict, Field

from orpheus_local.audio.encoders import SPEED_MAX, SPEED_MIN, StreamEncoder
from orpheus_local.params import SynthesisParams
from orpheus_local.text.incremental import SentenceBuffer
from orpheus_local.text.split import part_chars
from orpheus_local.tokens import SAMPLE_RATE

from . import request_log
from .auth import key_digest
from .errors import ApiError, invalid
from .generation import encoded, pcm_chunks
from .protocol import Number, Sampling, Voice, parse
from .state import ServerState

log = logging.getLogger(__name__)

ROUTE = "/v1/audio/speech/stream"
SESSION_FORMATS = ("pcm", "wav", "mp3", "opus")
LOOKAHEAD = 1  # utterances generated ahead of the one being sent
MESSAGE_TYPES = ("session.update", "input_text.append", "input_text.commit", "response.cancel", "session.close")


class SessionConfig(Sampling):
    """What session.update may set; validated as the HTTP bodies are, and unknown fields are named."""

    model_config = ConfigDict(extra="forbid")

    voice: Voice | None = Field(None, description="one of the served checkpoint's voices, one of your cloned voices, "
                                                  "or an OpenAI voice name mapped to one; absent: the checkpoint's default")
    response_format: Literal[SESSION_FORMATS] = Field("pcm", description="pcm: s16le 24 kHz mono")
    model: str | None = Field(None, description="the served checkpoint, by any name /v1/audio/speech takes; "
                                                "absent: the default")
    speed: Number = Field(1.0, ge=SPEED_MIN, le=SPEED_MAX, description="playback speed factor")

    def synthesis_params(self, text: str, names) -> SynthesisParams:
        """text spoken with these settings; the session has bounded its length already."""
        return self._synthesis_params("text", text, self.voice, len(text), names)


@dataclass
class _End:
    error: ApiError | None = None


@dataclass(eq=False)
class Utterance:
    id: str
    text: str
    params: SynthesisParams
    response_format: str
    speed: float
    ready_at: float  # perf_counter() when its text was complete
    model: str | None = None  # the served checkpoint that speaks it; None: the default
    audio: asyncio.Queue = field(default_factory=asyncio.Queue)  # encoded bytes, then one _End
    task: asyncio.Task | None = None
    samples: int = 0  # generated, at 24 kHz, before any speed change
    first_audio_s: float | None = None  # from ready_at to its first audio frame sent
    cancelled: bool = False
    ended: bool = False

    def end(self, error: ApiError | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.audio.put_nowait(_End(error))

    def cancel(self) -> None:
        """Stop now: the speaker drops what is queued, the generation's engine slot is freed."""
        self.cancelled = True
        self.end()
        if self.task is not None:
            self.task.cancel()


class MessagePacer:
    """At most `rate` messages a second on average, bursts of `rate` allowed: a client sending
    faster is read more slowly (its socket fills and its sends wait), nothing is refused."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate, self.clock = rate, clock
        self.tokens, self.last = rate, clock()

    def delay(self) -> float:
        """Seconds to wait before handling the next message (0: now); takes its token."""
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class SessionClosed(Exception):
    """The session ends: the client left, or was told why in an event."""


class SpeechSession:
    def __init__(self, ws: WebSocket, state: ServerState):
        self.ws, self.state, self.settings = ws, state, state.settings
        self.id = uuid.uuid4().hex[:16]
        self.fields: dict = {}  # what session.update has set so far
        self.config = SessionConfig()
        self.names = state.openai_names  # with the caller's cloned voice, once session.update names one
        self.model: str | None = None  # the checkpoint session.update chose; None: the default
        self.text = SentenceBuffer(part_chars(self.config.max_new_tokens))
        self.queue: deque[Utterance] = deque()  # complete, not yet being sent, in order
        self.current: Utterance | None = None
        self.closing = False
        self.changed = asyncio.Event()  # wakes the speaker
        self.send_lock = asyncio.Lock()  # one frame at a time from the two tasks
        self.pacer = MessagePacer(self.settings.session_messages_per_s)
        self._numbers = itertools.count(1)

    async def run(self) -> None:
        """Serve until the client closes, session.close has been honoured, or the session idles out."""
        receiver = asyncio.create_task(self._receive())
        speaker = asyncio.create_task(self._speak())
        try:
            done, _ = await asyncio.wait({receiver, speaker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not isinstance(task.exception(), (SessionClosed, WebSocketDisconnect, OSError, type(None))):
                    raise task.exception()
        finally:
            for task in (receiver, speaker):
                task.cancel()
            for u in self._utterances():
                u.cancel()
            await asyncio.gather(receiver, speaker, *(u.task for u in self._utterances() if u.task),
                                 return_exceptions=True)

    def _utterances(self) -> list[Utterance]:
        return ([self.current] if self.current else []) + list(self.queue)

    # --- the client's messages ---
    async def _receive(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self.settings.session_idle_timeout_s)
            except asyncio.TimeoutError:
                if self.current or self.queue:
                    continue  # still speaking: the client is listening, not idle
                await self._close_with(1000, f"idle for {self.settings.session_idle_timeout_s:g} s")
            if message["type"] == "websocket.disconnect":
                raise SessionClosed()
            if delay := self.pacer.delay():
                await asyncio.sleep(delay)
            try:
                await self._handle(message)
            except ApiError as exc:
                await self._send_error(exc)

    async def _handle(self, message: dict) -> None:
        if message.get("text") is None:
            raise ApiError(400, "binary frames are not accepted: send JSON text frames", code="invalid_message")
        try:
            body = json.loads(message["text"])
        except ValueError as exc:
            raise ApiError(400, f"malformed JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "a message must be a JSON object with a type", code="invalid_message")
        kind = body.pop("type", None)
        if kind not in MESSAGE_TYPES:
            raise invalid("type", f"unknown message type {kind!r}; one of {', '.join(MESSAGE_TYPES)}")
        if self.closing and kind != "response.cancel":
            raise invalid("type", f"{kind} after session.close: the session only finishes what it has")
        if kind == "session.update":
            await self._update(body)
        elif kind == "input_text.append":
            self._hold(body.get("text"))
            self.text.append(body["text"])
            await self._enqueue(self.text.take())
        elif kind == "input_text.commit":
            await self._enqueue(self.text.flush())
        elif kind == "response.cancel":
            self._cancel()
        else:
            await self._enqueue(self.text.flush())
            self.closing = True
            self.changed.set()

    async def _update(self, changes: dict) -> None:
        config = parse(SessionConfig, {**self.fields, **changes})  # the old settings stay on an error
        model = self.state.model_for(config.model) if config.model is not None else None
        names = await self.state.names_for(key_digest(self.ws.state), config.voice, model)
        config.synthesis_params("Hi.", names)  # a voice the checkpoint has (or the caller's clone), before it is needed
        self.fields.update(changes)
        self.config, self.names, self.model = config, names, model
        self.text.max_chars = part_chars(config.max_new_tokens)

    def _hold(self, text) -> None:
        """Check that text may be appended: a string, within what a session may hold unspoken."""
        if not isinstance(text, str) or not text:
            raise invalid("text", "must be a non-empty string")
        held = len(self.text) + sum(len(u.text) for u in self._utterances())
        limit = self.settings.max_text_chars
        if held + len(text) > limit:
            raise ApiError(413, f"text: {held} characters are waiting to be spoken and this session may hold "
                                f"{limit}; wait for speech.done events before sending more", param="text",
                           code="text_too_long")

    async def _enqueue(self, parts: list[str]) -> None:
        for text in parts:
            try:
                params = self.config.synthesis_params(text, self.names)
            except ApiError as exc:  # an unknown tag, say: that part is not spoken, the session goes on
                await self._send_error(exc)
                continue
            self.queue.append(Utterance(
                f"{self.id}-{next(self._numbers)}", text, params, self.config.response_format, self.config.speed,
                time.perf_counter(), self.model))
        self._start_generations()
        self.changed.set()

    def _cancel(self) -> None:
        """Barge-in: the utterance being sent stops now (its speech.done says cancelled), the ones
        waiting are dropped unheard, and so is the buffered text."""
        self.text.clear()
        for u in self._utterances():
            u.cancel()
        self.queue.clear()

    # --- generation ---
    def _start_generations(self) -> None:
        for u in self._utterances()[:1 + LOOKAHEAD]:
            if u.task is None and not u.cancelled:
                u.task = asyncio.create_task(self._generate(u))

    async def _generate(self, u: Utterance) -> None:
        record = request_log.open_record(ROUTE, u.id)
        record.method, record.status = "WS", 200
        try:
            synth = self.state.synthesizer(u.model)
            chunks = self._counted(u, pcm_chunks(synth, u.params, u.id, self.state.metrics))
            encoder = StreamEncoder(u.response_format, speed=u.speed)
            async with aclosing(encoded(self.state.admission, self.state.encoders, chunks, encoder)) as audio:
                async for data in audio:
                    u.audio.put_nowait(data)
        except ApiError as exc:
            record.status = exc.status
            u.end(exc)
        except asyncio.CancelledError:
            record.status = 499
            raise
        finally:
            u.end()
            record.write()

    @staticmethod
    async def _counted(u: Utterance, chunks: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
        async with aclosing(chunks):
            async for pcm in chunks:
                u.samples += len(pcm)
                yield pcm

    # --- what the client hears ---
    async def _speak(self) -> None:
        while True:
            while not self.queue:
                if self.closing:
                    await self._close_with(1000, "closed by the client")
                self.changed.clear()
                await self.changed.wait()
            u = self.current = self.queue.popleft()
            self._start_generations()
            await self._send_json({"type": "speech.started", "utterance_id": u.id, "text": u.text})
            error = await self._send_audio(u)
            if error is not None and not u.cancelled:
                await self._send_error(error, u.id)
            status = "cancelled" if u.cancelled else "failed" if error is not None else "completed"
            await self._send_json({
                "type": "speech.done", "utterance_id": u.id, "status": status, "samples": u.samples,
                "audio_s": round(u.samples / SAMPLE_RATE / u.speed, 3),
                "first_audio_ms": None if u.first_audio_s is None else round(u.first_audio_s * 1000, 1),
            })
            self.current = None

    async def _send_audio(self, u: Utterance) -> ApiError | None:
        """Send u's audio as it comes; its error, if it failed."""
        while not isinstance(item := await u.audio.get(), _End):
            if u.cancelled:
                continue
            if u.first_audio_s is None:
                u.first_audio_s = time.perf_counter() - u.ready_at
            async with self.send_lock:
                await self.ws.send_bytes(item)
        return item.error

    async def _send_json(self, event: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(event))

    async def _send_error(self, error: ApiError, utterance_id: str | None = None) -> None:
        event = {"type": "error", "message": error.message, "param": error.param, "code": error.code}
        if utterance_id is not None:
            event["utterance_id"] = utterance_id
        await self._send_json(event)

    async def _close_with(self, code: int, reason: str) -> None:
        """Say why in session.closed, close the socket, end the session."""
        await self._send_json({"type": "session.closed", "reason": reason})
        await self.ws.close(code, reason)
        raise SessionClosed()
