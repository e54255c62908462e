"""Scheduler: waiting and running requests, admission into KV-cache slots, aborts.

Pure bookkeeping: no tensors. add(), abort() and stats() may be called from any thread; everything
else from the thread that steps the engine. One lock guards what both sides touch: the waiting
queues, the running list's membership and the requests' aborted flags.

Two waiting queues: new requests (a request's first part, which someone waits to hear) and
continuations (the later parts of requests already under way, generated ahead of their listener).
Free slots go to new requests first, so that a long text's parts queued ahead do not delay everyone
else's first audio; a continuation that has waited MAX_CONTINUATION_WAIT admissions goes first, so
that its listener, who has audio in hand meanwhile, does not run dry. And continuations never take
the last num_slots // 8 free slots (at least one): a slot, once taken, is held for a whole part, so
without that reserve a few long texts fill every slot and a new request waits for a part to end.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque

from orpheus_local.engine.request import Request, Status
from orpheus_local.errors import QueueFullError

# Admissions (one per engine step) a continuation waits at most behind new requests: about 1.5 s of
# audio at 86 tokens a second, well inside what its listener has in hand.
MAX_CONTINUATION_WAIT = 128


class Scheduler:
    def __init__(self, num_slots: int, max_queue: int):
        self.num_slots = num_slots
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()  # new requests
        self.continuing: deque[tuple[int, Request]] = deque()  # (admission count when added, request)
        self._admissions = 0
        self.running: list[Request] = []
        # Lowest free slot first: running slots stay packed at the low end, where decode runs in place.
        self.free_slots = list(range(num_slots))
        self.reserved_for_new = max(1, num_slots // 8) if num_slots > 1 else 0
        self._lock = threading.Lock()

    def add(self, request: Request, *, continuation: bool = False) -> None:
        """Queue a request; QueueFullError when max_queue new requests are waiting. A continuation (a
        later part of a request already under way: each has at most a few, so its queue stays
        bounded) is never refused."""
        with self._lock:
            if continuation:
                self.continuing.append((self._admissions, request))
                return
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests are already waiting for a slot")
            self.waiting.append(request)

    def abort(self, request: Request) -> None:
        """Mark a request to leave at the next step, wherever it is."""
        with self._lock:
            request.aborted = True

    def admit(self) -> tuple[list[Request], list[Request]]:
        """Move waiting requests into free slots. Returns (admitted, dropped because aborted)."""
        admitted, dropped = [], []
        with self._lock:
            self._admissions += 1
            while self.free_slots and (request := self._next_waiting()) is not None:
                if request.aborted:
                    request.status = Status.CANCELLED
                    dropped.append(request)
                    continue
                request.slot = heapq.heappop(self.free_slots)
                request.status = Status.RUNNING
                admitted.append(request)
            self.running.extend(admitted)
        return admitted, dropped

    def _next_waiting(self) -> Request | None:
        """The request to admit into a free slot: a new one, unless none waits or the oldest
        continuation has waited its longest; a continuation only outside the reserved slots."""
        continuation_fits = self.continuing and len(self.free_slots) > self.reserved_for_new
        if continuation_fits and (not self.waiting or
                                  self._admissions - self.continuing[0][0] >= MAX_CONTINUATION_WAIT):
            return self.continuing.popleft()[1]
        return self.waiting.popleft() if self.waiting else None

    def aborted_running(self) -> list[Request]:
        with self._lock:
            return [r for r in self.running if r.aborted]

    def release(self, request: Request, status: Status) -> None:
        """Take a request out of the running batch and give its slot back."""
        with self._lock:
            self.running.remove(request)
        request.status = status
        heapq.heappush(self.free_slots, request.slot)

    def drain_waiting(self) -> list[Request]:
        with self._lock:
            drained = [*self.waiting, *(request for _, request in self.continuing)]
            self.waiting.clear()
            self.continuing.clear()
        return drained

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.running or self.waiting or self.continuing)

    def stats(self) -> dict:
        with self._lock:
            return {"queued": len(self.waiting) + len(self.continuing), "running": len(self.running),
                    "slots": self.num_slots}
