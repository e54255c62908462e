"""EngineDriver: runs an EngineCore on its own thread and hands each request's ids to asyncio.

    driver = EngineDriver(EngineCore.load(...)).start()
    stream = driver.submit(prompt_ids, params, "request-1")     # on the event loop
    async for ids in stream: ...                                # whole frames; stream.cancel() aborts

Threads: the event loop calls submit(), stats() and close(); the engine thread ("orpheus-engine")
owns the core's step() and delivers into the streams. The registry of open streams and the closing
flag are shared and sit behind one lock, so a request submitted while the driver closes is either
ended by the close or refused with NotReadyError: it never waits forever.
"""

from __future__ import annotations

import logging
import threading
import time

from orpheus_local.engine.core import EngineCore
from orpheus_local.engine.request import Request, StepOutput
from orpheus_local.engine.stream import TokenStream
from orpheus_local.errors import GenerationError, NotReadyError
from orpheus_local.handoff import Delivery
from orpheus_local.params import SynthesisParams
from orpheus_local.thread_names import name_os_thread

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # an idle engine thread looks at its closing flag this often


class EngineDriver:
    def __init__(self, core: EngineCore):
        self.core = core
        self._streams: dict[Request, TokenStream] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Steps taken and their wall time, delivery included: on a device, the effective step time
        # against the device's own shows what the host adds (written by the engine thread only).
        self._steps = 0
        self._step_seconds = 0.0

    def start(self) -> "EngineDriver":
        self._thread = threading.Thread(target=self._run, name="orpheus-engine", daemon=True)
        self._thread.start()
        return self

    # --- event-loop side ---
    def submit(self, prompt_ids: list[int], params: SynthesisParams, request_id: str, *, ignore_eos: bool = False,
               max_tokens: int = 0, continuation: bool = False, on_ids=None) -> TokenStream:
        """Queue a request; its ids arrive on the returned stream (see EngineCore.add), or go to
        on_ids on the engine thread (see TokenStream)."""
        with self._lock:
            if self._closing or self._thread is None:
                raise NotReadyError("the engine is not running")
            request = self.core.add(prompt_ids, params, request_id, ignore_eos=ignore_eos, max_tokens=max_tokens,
                                    continuation=continuation)
            stream = TokenStream(request_id, on_cancel=lambda: self._abort(request), on_ids=on_ids)
            self._streams[request] = stream
        self._wake.set()
        return stream

    @property
    def max_prompt_tokens(self) -> int:
        return self.core.max_prompt_tokens

    def alive(self) -> bool:
        """The engine thread is running (started and not closed)."""
        return self._thread is not None and self._thread.is_alive() and not self._closing

    def stats(self) -> dict:
        """The scheduler's counts, and `steps` / `step_seconds`: engine steps so far and their wall time."""
        return {**self.core.stats(), "steps": self._steps, "step_seconds": self._step_seconds}

    def close(self) -> None:
        """End every request (cancelled, or NotReadyError for those still waiting) and stop the thread."""
        with self._lock:
            self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _abort(self, request: Request) -> None:
        self.core.abort(request)
        self._wake.set()

    # --- engine thread ---
    def _run(self) -> None:
        name_os_thread()  # the name given to its Thread
        while not self._closing:
            if not self.core.has_work():
                self._wake.wait(timeout=IDLE_WAIT_S)
                self._wake.clear()
                continue
            started = time.perf_counter()
            self._deliver(self._step())
            self._step_seconds += time.perf_counter() - started
            self._steps += 1
        with self._lock:  # no submit() gets past the closing flag from here on
            outputs = self.core.abort_all()
        self._deliver(outputs, waiting_error=NotReadyError("the engine shut down"))

    def _step(self) -> list[StepOutput]:
        try:
            return self.core.step()
        except Exception:  # a fault outside prefill and decode: end every request, keep the thread
            log.exception("engine step failed; ending every request")
            outputs = self.core.abort_all()
            for out in outputs:
                out.error = GenerationError(out.request.request_id)
            return outputs

    def _deliver(self, outputs: list[StepOutput], waiting_error: BaseException | None = None) -> None:
        """Hand a step's outputs to their streams: one wake-up of the event loop for all of them."""
        delivery = Delivery()
        with self._lock:
            streams = [(out, self._streams.pop(out.request, None) if out.finished else self._streams.get(out.request))
                       for out in outputs]
        for out, stream in streams:
            if stream is None:
                continue
            if out.ids:
                delivery.put(stream, out.ids)
            if out.finished:
                error = out.error
                if error is None and out.request.slot is None and waiting_error is not None:
                    error = waiting_error  # never admitted: it waited for a slot when the engine stopped
                stream.finish_reason = out.reason
                delivery.finish(stream, error)
        delivery.send()
