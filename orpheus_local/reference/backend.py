"""ReferenceBackend: serves requests one at a time through ReferenceGenerator, on its own thread
once started; the same submit() / stats() / close() as the engine's driver."""

from __future__ import annotations

import queue
import threading

import torch

from orpheus_local import tokens as fmt
from orpheus_local.engine.stream import TokenStream
from orpheus_local.errors import InputError, NotReadyError, QueueFullError
from orpheus_local.params import SynthesisParams
from orpheus_local.reference.generator import ReferenceGenerator
from orpheus_local.thread_names import name_os_thread


class _StreamerToTokenStream:
    """transformers streamer that forwards the new audio ids to a TokenStream in whole frames, as the
    engine does (an incomplete last frame is never handed out)."""

    def __init__(self, stream):
        self.stream = stream
        self._prompt_seen = False
        self._pending: list[int] = []
        self.stopped = False  # end_of_speech was sampled

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        values = value.reshape(-1).tolist()
        self.stopped = self.stopped or fmt.END_OF_SPEECH in values
        self._pending.extend(i for i in values if fmt.is_audio_id(i))
        whole = len(self._pending) // fmt.FRAME_TOKENS * fmt.FRAME_TOKENS
        if whole:
            self.stream.put(self._pending[:whole])
            del self._pending[:whole]

    def end(self) -> None:
        pass


class ReferenceBackend:
    """Threads: the event loop calls submit(), stats() and close(); the worker thread
    ("orpheus-reference") runs the generations. The closing flag and the queue's admission sit
    behind one lock, so a request submitted while the backend closes is ended or refused, never
    left waiting.

    The same limits as the engine's: a prompt over max_prompt_tokens is an InputError, and a
    request finding max_queue waiting is refused unless it is a continuation (EngineCore.add)."""

    def __init__(self, generator: ReferenceGenerator, max_queue: int, max_prompt_tokens: int):
        self.generator = generator
        self.max_queue = max_queue
        self.max_prompt_tokens = max_prompt_tokens
        self._queue: queue.Queue = queue.Queue()  # bounded by submit(), which lets continuations past
        self._lock = threading.Lock()
        self._closing = False
        self._running = 0  # written by the worker thread only
        self._thread: threading.Thread | None = None

    def start(self) -> "ReferenceBackend":
        self._thread = threading.Thread(target=self._run, name="orpheus-reference", daemon=True)
        self._thread.start()
        return self

    def submit(self, prompt_ids: list[int], params: SynthesisParams, request_id: str, *, ignore_eos: bool = False,
               max_tokens: int = 0, continuation: bool = False, on_ids=None) -> TokenStream:
        # A cloned voice's reference turn is not counted: transformers' cache has no fixed length.
        text_tokens = len(prompt_ids) - fmt.reference_prefix_length(prompt_ids)
        if text_tokens > self.max_prompt_tokens:
            raise InputError("text", f"too long for one generation ({text_tokens} prompt tokens, "
                                     f"at most {self.max_prompt_tokens})")
        stream = TokenStream(request_id, on_ids=on_ids)
        with self._lock:
            if self._closing or self._thread is None:
                raise NotReadyError("the reference backend is not running")
            if not continuation and self._queue.qsize() >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests are already waiting")
            self._queue.put_nowait((stream, prompt_ids, params, ignore_eos, max_tokens))
        return stream

    def alive(self) -> bool:
        """The worker thread is running (started and not closed)."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict:
        return {"queued": self._queue.qsize(), "running": self._running}

    def close(self) -> None:
        with self._lock:
            self._closing = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        name_os_thread()  # the name given to its Thread
        while not self._closing:
            try:
                stream, prompt_ids, params, ignore_eos, max_tokens = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
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
        with self._lock:  # no submit() gets past the closing flag from here on
            while not self._queue.empty():
                self._queue.get_nowait()[0].finish(NotReadyError("the reference backend shut down"))
