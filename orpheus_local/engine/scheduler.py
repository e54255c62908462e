"""Scheduler: waiting and running requests, admission into KV-cache slots, cancellation.

Pure bookkeeping: no tensors. submit() is called from the event loop, everything else from the
engine thread; the lock guards the waiting queue, the only state both sides touch.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque

from ..errors import QueueFullError
from .request import Request, Status


class Scheduler:
    def __init__(self, num_slots: int, max_queue: int):
        self.num_slots = num_slots
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # Lowest free slot first: running slots stay packed at the low end, where decode runs in place.
        self.free_slots = list(range(num_slots))
        self._lock = threading.Lock()
        self.wakeup = threading.Event()

    def submit(self, request: Request) -> None:
        with self._lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests are already waiting for a slot")
            self.waiting.append(request)
        self.wakeup.set()

    def admit(self) -> tuple[list[Request], list[Request]]:
        """Move waiting requests into free slots. Returns (admitted, dropped because cancelled)."""
        admitted, dropped = [], []
        with self._lock:
            while self.waiting and self.free_slots:
                request = self.waiting.popleft()
                if request.cancelled:
                    request.status = Status.CANCELLED
                    dropped.append(request)
                    continue
                request.slot = heapq.heappop(self.free_slots)
                request.status = Status.RUNNING
                admitted.append(request)
        self.running.extend(admitted)
        return admitted, dropped

    def cancelled_running(self) -> list[Request]:
        return [r for r in self.running if r.cancelled]

    def release(self, request: Request, status: Status) -> None:
        """Take a request out of the running batch and give its slot back."""
        self.running.remove(request)
        request.status = status
        heapq.heappush(self.free_slots, request.slot)

    def drain_waiting(self) -> list[Request]:
        with self._lock:
            drained = list(self.waiting)
            self.waiting.clear()
        return drained

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def stats(self) -> dict:
        return {"queued": len(self.waiting), "running": len(self.running), "slots": self.num_slots}
