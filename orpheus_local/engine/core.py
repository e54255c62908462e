"""EngineCore: add / step / abort / has_work. The caller drives it; it starts no thread.

One step = schedule (aborts, admission) -> run (prefill the admitted, decode every running slot
together) -> route each sampled id to its request. step() returns an output for each request with
news (a whole frame of ids, or its end), so a test drives the engine step by step and a driver
(driver.py) hands the outputs to asyncio.

Threads: add() and abort() may be called from any thread (the scheduler's lock); step() from one
thread at a time, which then owns the runner and every request's state.
"""

from __future__ import annotations

import logging
import secrets

from orpheus_local import tokens as fmt
from orpheus_local.config import EngineConfig
from orpheus_local.engine.request import Request, Status, StepOutput
from orpheus_local.engine.runner import ModelRunner
from orpheus_local.engine.scheduler import Scheduler
from orpheus_local.errors import GenerationError, InputError
from orpheus_local.params import SynthesisParams

log = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, runner: ModelRunner, max_queue: int):
        self.runner = runner
        self.scheduler = Scheduler(runner.num_slots, max_queue)
        self.max_prompt_tokens = runner.max_prompt_tokens
        self.max_reference_tokens = runner.max_reference_tokens

    @classmethod
    def load(cls, config: EngineConfig, model_dir, device: str, dtype: str) -> "EngineCore":
        return cls(ModelRunner.load(config, model_dir, device, dtype), config.max_queue)

    def add(self, prompt_ids: list[int], params: SynthesisParams, request_id: str = "", *,
            ignore_eos: bool = False, max_tokens: int = 0, continuation: bool = False) -> Request:
        """Queue a request (QueueFullError when the queue is full, unless it is a continuation of a
        request already under way: see Scheduler.add). ignore_eos and max_tokens force a length:
        exactly max_new_tokens, or at most max_tokens (benchmarks, guards)."""
        reference = fmt.reference_prefix_length(prompt_ids)
        if reference > self.max_reference_tokens:
            raise InputError("voice", f"the cloned voice's reference is too long ({reference} tokens, at most "
                                      f"{self.max_reference_tokens} on this checkpoint)")
        if len(prompt_ids) - reference > self.max_prompt_tokens:
            raise InputError("text", f"too long for one generation ({len(prompt_ids) - reference} prompt tokens, "
                                     f"at most {self.max_prompt_tokens})")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        request = Request(request_id, prompt_ids, params, seed, ignore_eos, max_tokens)
        self.scheduler.add(request, continuation=continuation)
        return request

    def abort(self, request: Request) -> None:
        """The request leaves at the next step; its slot is free after that step."""
        self.scheduler.abort(request)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def stats(self) -> dict:
        return self.scheduler.stats()

    def step(self) -> list[StepOutput]:
        outputs: dict[Request, StepOutput] = {}

        def output(request: Request) -> StepOutput:
            return outputs.setdefault(request, StepOutput(request))

        for request in self.scheduler.aborted_running():
            self._finish(output(request), Status.CANCELLED)
        admitted, dropped = self.scheduler.admit()
        for request in dropped:
            output(request).finished = True
        if admitted:
            try:
                ids = self.runner.prefill(admitted)
            except Exception:  # only the requests in this prefill fail; the running batch goes on
                log.exception("prefill failed for %s", [r.request_id for r in admitted])
                for request in admitted:
                    self._finish(output(request), Status.FAILED, GenerationError(request.request_id))
            else:
                self._route(admitted, ids, output)
        # Every running slot decodes, the ones just prefilled included: the runner steps all active
        # slots together, so a token goes to each of them.
        if running := list(self.scheduler.running):
            try:
                ids = self.runner.decode(running)
            except Exception:  # a failed decode step fails its batch; the engine goes on
                log.exception("decode step failed")
                for request in running:
                    self._finish(output(request), Status.FAILED, GenerationError(request.request_id))
            else:
                self._route(running, ids, output)
        return list(outputs.values())

    def abort_all(self) -> list[StepOutput]:
        """End every request (shutdown): the running ones cancelled, the waiting ones dropped."""
        outputs = [StepOutput(r) for r in list(self.scheduler.running)]
        for out in outputs:
            self._finish(out, Status.CANCELLED)
        return outputs + [StepOutput(r, finished=True) for r in self.scheduler.drain_waiting()]

    def _route(self, requests: list[Request], ids: list[int], output) -> None:
        """Take each request's sampled id. An output is made only for news (a whole frame, or the
        end): six steps in seven have none for a request. At hundreds of streams this loop is most of
        the engine's host-side work, so it stays flat: no call per id unless there is news."""
        stop, frame = fmt.END_OF_SPEECH, fmt.FRAME_TOKENS
        for request, token in zip(requests, ids):
            try:
                if token == stop:
                    self._finish(output(request), Status.FINISHED, reason="stop")
                    continue
                generated = request.generated
                generated.append(token)
                n = len(generated)
                if n % frame == 0:
                    output(request).ids.extend(generated[-frame:])  # consumers want whole frames
                if n >= request.limit:
                    self._finish(output(request), Status.FINISHED, reason="length")
            except Exception:  # a failure while handing over one request's ids fails it alone
                log.exception("request %s failed", request.request_id)
                self._finish(output(request), Status.FAILED, GenerationError(request.request_id))

    def _finish(self, out: StepOutput, status: Status, error: BaseException | None = None,
                reason: str | None = None) -> None:
        request = out.request
        if request.status is not Status.RUNNING:  # already finished earlier in this step
            return
        self.scheduler.release(request, status)
        self.runner.release(request)
        out.finished, out.reason, out.error = True, reason, error
