"""The parts of one request: generated a window at a time, guarded, streamed in order, crossfaded.

Parts of a request run through the engine together (they batch like separate requests). The part
being listened to streams as it is generated; the parts after it generate meanwhile and wait in
memory for their turn. At most WINDOW parts are generating or waiting at once, so one long request
neither floods the engine's queue nor holds more than a few parts' audio. Only a request's first
part can be refused for a full queue (before any audio): its later parts and second attempts are
continuations, which the backend always accepts (the WINDOW keeps them bounded).

A guard that fires on a part nobody has heard yet generates the part again, once, with a new seed:
a part waiting its turn can always be redone, as can the part being listened to before its first
chunk is out. Audio already sent cannot be taken back, so a guard firing on a part being heard
ends that part there (a budget runaway is cut at the budget), and so does a guard firing on the
second attempt. First-audio latency is that of one generation, as without guards.

Audio returned whole (a file) must not depend on timing: such a part hands out no chunk before all
its attempts are over (so whether it can be redone never depends on how fast the listener reads),
decodes in fixed windows, and stops a repeat at the very frame where the guard fired.

A part that reaches max_new_tokens without end_of_speech is cut there, as the client's cap says; it
is reported as the "length" guard, so that such cuts are seen and counted, never silent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import AsyncIterator, Callable

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.audio.crossfade import Crossfade
from orpheus_local.audio.worker import AudioStream
from orpheus_local.engine.stream import TokenStream
from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.guards import (
    GuardLimits,
    RepeatWatch,
    Runaway,
    SilenceWatch,
    token_budget,
)

log = logging.getLogger(__name__)

WINDOW = 4
ATTEMPTS = 2  # a part that runs away is generated once more, then taken as it comes
_END = object()

# Called with (guard, action) each time a guard fires; action is "regenerate" or "truncate".
GuardListener = Callable[[str, str], None]
# What a part needs from the synthesizer: start a generation (params, engine id, prompt_ids=...,
# continuation=..., ...) (-> its TokenStream), open an audio stream on the codec worker (noise key,
# whole_file=...) (-> its AudioStream).
SubmitIds = Callable[..., TokenStream]
OpenAudio = Callable[..., AudioStream]


def part_seed(seed: int | None, index: int, attempt: int) -> int | None:
    """The request's own seed for its first part's first attempt, seeds derived from it for the
    others (a seeded request stays reproducible); no seed stays no seed (fresh random ones)."""
    if seed is None or index == attempt == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{index}/{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # 0 .. 2**63 - 1


class Part:
    """One part's generation, started by start(); its PCM chunks wait in a queue until chunks()."""

    def __init__(self, submit_ids: SubmitIds, open_audio: OpenAudio, params: SynthesisParams, request_id: str,
                 index: int, *, prompt_ids: list[int], limits: GuardLimits | None, ignore_eos: bool = False,
                 on_guard: GuardListener | None = None, whole_file: bool = False):
        self.submit_ids = submit_ids
        self.open_audio = open_audio
        self.params = params
        self.prompt_ids = prompt_ids  # params' prompt, built once for every attempt
        self.request_id = request_id
        self.index = index
        self.limits = limits  # None: no guards
        self.ignore_eos = ignore_eos
        self.on_guard = on_guard
        self.whole_file = whole_file
        self._queue: asyncio.Queue = asyncio.Queue()  # PCM chunks, then _END or the error
        self._heard = False  # a chunk has been handed out: the part can no longer be redone
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"part-{self.request_id}-{self.index}")

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        if self.whole_file and self._task is not None:
            await asyncio.wait([self._task])  # every attempt over: nothing read can be taken back
        while (item := await self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            self._heard = True
            yield item

    def cancel(self) -> None:
        """Stop generating, now; stop() also waits until the generation has ended."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            for attempt in range(ATTEMPTS):
                runaway = await self._attempt(attempt)
                if runaway is None:
                    break
                if runaway.guard == "length":  # the client's own cap: cut, counted, never redone
                    self._report(runaway, "truncate")
                    break
                again = attempt + 1 < ATTEMPTS and not self._heard
                self._report(runaway, "regenerate" if again else "truncate")
                if not again:
                    break
                while not self._queue.empty():  # nobody heard this attempt: drop it
                    self._queue.get_nowait()
        except Exception as exc:  # the listener raises it when it reaches this part
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(_END)

    async def _attempt(self, attempt: int) -> Runaway | None:
        """Generate and decode the part once, queueing its chunks; the guard that fired, if one did."""
        params = self.params.replace(seed=part_seed(self.params.seed, self.index, attempt))
        first = self.index == attempt == 0
        engine_id = self.request_id if first else f"{self.request_id}-{self.index}.{attempt}"
        audio = self.open_audio(params.seed, whole_file=self.whole_file)
        feeder = asyncio.create_task(self._feed(audio, params, engine_id, continuation=not first))
        silence = SilenceWatch(self.limits) if self.limits else None
        try:
            async for pcm in audio:
                if silence and (runaway := silence.push(pcm)):
                    return runaway
                self._queue.put_nowait(pcm)
            return await feeder
        finally:
            audio.cancel()
            if not feeder.done():
                feeder.cancel()  # the listener left, or the silence guard fired: stop generating
            await asyncio.gather(feeder, return_exceptions=True)

    async def _feed(self, audio, params: SynthesisParams, engine_id: str, *, continuation: bool) -> Runaway | None:
        """Generated ids -> whole frames -> the part's decoder; stops early when the repeat guard fires.

        The frames go into the decoder on the backend's thread as they are made (the decoder and the
        guard's state are touched by that thread alone until the end): at hundreds of streams, a
        wake-up of the event loop per frame would cost more than the frame's work.
        """
        budget = token_budget(params.text, params.max_new_tokens, self.limits) if self.limits else None
        repeats = RepeatWatch(self.limits) if self.limits else None
        fired: list[Runaway] = []

        def take(ids: list[int]) -> bool:  # whole frames, from either backend; False: stop generating
            if repeats and (runaway := repeats.push_ids(ids)):
                ids = ids[:(runaway.at_frame + 1) * fmt.FRAME_TOKENS]  # a repeat stops at the frame that fired
                fired.append(runaway)
            audio.push_ids(ids)  # checked as audio ids when the codec takes them
            return not fired

        ids_stream = None
        try:
            ids_stream = self.submit_ids(params, engine_id, prompt_ids=self.prompt_ids, continuation=continuation,
                                         ignore_eos=self.ignore_eos, max_tokens=budget or 0, on_ids=take)
            async for _ in ids_stream:  # nothing comes: the ids go to take(); this waits for the end
                pass
        except BaseException as exc:
            audio.fail(exc)
            raise
        finally:
            if ids_stream is not None:
                ids_stream.cancel()  # leaving early stops the engine request now
        audio.end_frames()  # (the backends never hand out an incomplete last frame)
        if fired:
            return fired[0]
        if not self.ignore_eos and ids_stream.finish_reason == "length":
            # Stopped at its cap: the guard's budget when one is set (a runaway), else the client's own.
            return (Runaway("budget", f"no end_of_speech within {budget} tokens") if budget else
                    Runaway("length", f"no end_of_speech within max_new_tokens={params.max_new_tokens}"))
        return None

    def _report(self, runaway: Runaway, action: str) -> None:
        then = "generating it again with a new seed" if action == "regenerate" else "ending it there"
        log.warning("request %s, part %d: %s; %s", self.request_id, self.index, runaway, then)
        if self.on_guard is not None:
            self.on_guard(runaway.guard, action)


async def join_parts(parts: list[Part], overlap: int, window: int = WINDOW) -> AsyncIterator[np.ndarray]:
    """The parts' audio in order, crossfaded, starting each part `window` parts ahead of the listener."""
    joiner = Crossfade(overlap)
    try:
        for part in parts[:window]:
            part.start()
        for i, part in enumerate(parts):
            joiner.start_part(last=i == len(parts) - 1)
            async for pcm in part.chunks():
                if (out := joiner.push(pcm)).size:
                    yield out
            if (out := joiner.end_part()).size:
                yield out
            if i + window < len(parts):
                parts[i + window].start()
    finally:
        # Cancelled first, without an await: a caller cancelled through an anyio scope (Starlette's
        # watch for a client's disconnect) is cancelled again at each await, before stop() could run.
        for part in parts:
            part.cancel()
        await asyncio.gather(*(part.stop() for part in parts))
