"""Scheduler: waiting and running requests, admission into KV-cache slots, aborts.

Pure bookkeeping: no tensors. add(), abort() and stats() may be called from any thread; everything
else from the thread that steps the engine. One lock guards what both sides touch: the waiting
queue, the running list's membership and the requests' aborted flags.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque

from orpheus_local.engine.request import Request, Status
from orpheus_local.errors import QueueFullError


class Scheduler:
    def __init__(self, num_slots: int, max_queue: int):
        self.num_slots = num_slots
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # Lowest free slot first: running slots stay packed at the low end, where decode runs in place.
        self.free_slots = list(range(num_slots))
        self._lock = threading.Lock()

    def add(self, request: Request, *, continuation: bool = False) -> None:
        """Queue a request; QueueFullError when max_queue are waiting, unless it is a continuation (a
        later part of a request already under way: each has at most a few, so the queue stays bounded)."""
        with self._lock:
            if not continuation and len(self.waiting) >= self.max_queue:
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
            while self.waiting and self.free_slots:
                request = self.waiting.popleft()
                if request.aborted:
                    request.status = Status.CANCELLED
                    dropped.append(request)
                    continue
                request.slot = heapq.heappop(self.free_slots)
                request.status = Status.RUNNING
                admitted.append(request)
            self.running.extend(admitted)
        return admitted, dropped

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
            drained = list(self.waiting)
            self.waiting.clear()
        return drained

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.running or self.waiting)

    def stats(self) -> dict:
        with self._lock:
            return {"queued": len(self.waiting), "running": len(self.running), "slots": self.num_slots}
