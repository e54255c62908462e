"""Engine: the step loop on its own thread. submit() returns a TokenStream for asyncio consumers.

One step = schedule (cancel, admit) -> run (prefill the admitted, decode every running slot)
-> route each sampled token to its request.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from .. import format as fmt
from ..config import EngineConfig
from ..errors import GenerationError, InputError, NotReadyError
from ..params import SynthesisParams
from .request import Request, Status
from .runner import ModelRunner
from .scheduler import Scheduler
from .stream import TokenStream

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, runner: ModelRunner, max_queue: int):
        self.runner = runner
        self.scheduler = Scheduler(runner.num_slots, max_queue)
        self.max_prompt_tokens = runner.max_prompt_tokens
        self.steps = 0
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="orpheus-engine", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, config: EngineConfig, model_dir, device: str, dtype: str) -> "Engine":
        runner = ModelRunner.load(config, model_dir, device, dtype)
        return cls(runner, config.max_queue)

    # --- event-loop side ---
    def submit(self, prompt_ids: list[int], params: SynthesisParams, request_id: str, *, ignore_eos: bool = False,
               max_tokens: int = 0) -> TokenStream:
        """Queue a request. ignore_eos and max_tokens force a length (benchmarks, guards)."""
        if self._closing:
            raise NotReadyError("the engine is shutting down")
        if len(prompt_ids) > self.max_prompt_tokens:
            raise InputError(f"text: too long for one generation ({len(prompt_ids)} prompt tokens, at most {self.max_prompt_tokens})")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        stream = TokenStream(request_id)
        self.scheduler.submit(Request(request_id, prompt_ids, params, stream, seed, ignore_eos, max_tokens=max_tokens))
        return stream

    def stats(self) -> dict:
        return self.scheduler.stats()

    def close(self) -> None:
        self._closing = True
        self.scheduler.wakeup.set()
        self._thread.join(timeout=30)

    # --- engine thread ---
    def _loop(self) -> None:
        while not self._closing:
            if not self.scheduler.has_work():
                self.scheduler.wakeup.wait(timeout=0.5)
                self.scheduler.wakeup.clear()
                continue
            try:
                self.step()
            except Exception:  # a failure of the batched step fails the requests in it, not the engine
                log.exception("engine step failed")
                for request in list(self.scheduler.running):
                    self._finish(request, Status.FAILED, GenerationError(request.request_id))
        for request in list(self.scheduler.running) + self.scheduler.drain_waiting():
            if request.status is Status.RUNNING:
                self._finish(request, Status.CANCELLED)
            else:
                request.stream.finish(NotReadyError("the engine shut down"))

    def step(self) -> None:
        for request in self.scheduler.cancelled_running():
            self._finish(request, Status.CANCELLED)
        admitted, dropped = self.scheduler.admit()
        for request in dropped:
            request.stream.finish()
        if admitted:
            try:
                tokens = self.runner.prefill(admitted)
            except Exception:  # only the requests in this prefill fail; the running batch goes on
                log.exception("prefill failed for %s", [r.request_id for r in admitted])
                for request in admitted:
                    self._finish(request, Status.FAILED, GenerationError(request.request_id))
            else:
                self._route(admitted, tokens)
        # Every running slot decodes, the ones just prefilled included: the runner steps all active
        # slots together, so the engine must route a token to each of them.
        if self.scheduler.running:
            running = list(self.scheduler.running)
            self._route(running, self.runner.decode(running))
        self.steps += 1

    def _route(self, requests: list[Request], tokens: list[int]) -> None:
        now = time.perf_counter()
        for request, token in zip(requests, tokens):
            try:
                self._accept(request, token, now)
            except Exception:  # a failure while handing over one request's tokens fails it alone
                log.exception("request %s failed", request.request_id)
                self._finish(request, Status.FAILED, GenerationError(request.request_id))

    def _accept(self, request: Request, token: int, now: float) -> None:
        if request.first_token_at is None:
            request.first_token_at = now
        if token == fmt.END_OF_SPEECH:
            self._finish(request, Status.FINISHED, reason="stop")
            return
        request.generated.append(token)
        if len(request.generated) % fmt.FRAME_TOKENS == 0:
            request.stream.put(request.generated[-fmt.FRAME_TOKENS:])  # consumers want whole frames
        if request.budget_left() <= 0:
            self._finish(request, Status.FINISHED, reason="length")

    def _finish(self, request: Request, status: Status, error: BaseException | None = None,
                reason: str | None = None) -> None:
        if request.status is not Status.RUNNING:  # already finished earlier in this step
            return
        self.scheduler.release(request, status)
        self.runner.release(request)
        request.stream.finish(error, reason)
