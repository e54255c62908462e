"""GracefulServer: uvicorn's server, stopping the way an orchestrator expects.

On the first SIGTERM or SIGINT the server keeps listening, but /ready and new generation requests
answer 503 with Retry-After (a load balancer sends the traffic elsewhere) while the requests in flight
finish, for the grace period at most. Then the listener closes, what is left is cancelled, the engine
is closed and the process exits with status 0. A second signal exits at once, with 128 + its number.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:  # the state module imports torch: `serve --help` stays fast without it
    from .state import ServerState

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After the drain, for connections still sending their last bytes or idling in keep-alive.
CLOSE_TIMEOUT_S = 5.0


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, grace_s: float):
        config.timeout_graceful_shutdown = CLOSE_TIMEOUT_S
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self.stop_requested_at: float | None = None  # time.monotonic() of the first signal
        self.drain_logged = False

    @contextmanager
    def capture_signals(self):
        # uvicorn's own handlers raise the signal again once shut down, so a stop by SIGTERM would
        # end in death by SIGTERM; a drained stop is a normal one, and exits 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: flags only (the event loop may be anywhere); on_tick does the rest."""
        if self.stop_requested_at is not None:
            os.write(2, f"{signal.Signals(sig).name} again: exiting now\n".encode())
            os._exit(128 + sig)
        self.stop_requested_at = time.monotonic()
        self.state.draining = True

    async def on_tick(self, counter: int) -> bool:
        """Called by uvicorn ten times a second; True stops the server."""
        if await super().on_tick(counter):
            return True
        if self.stop_requested_at is None:
            return False
        in_flight = self.state.admission.count
        if not self.drain_logged:
            self.drain_logged = True
            log.info("stopping: %d requests in flight get up to %g s to finish; a second signal exits at once",
                     in_flight, self.grace_s)
        if in_flight == 0:
            log.info("no request in flight: shutting down")
            return True
        if time.monotonic() - self.stop_requested_at >= self.grace_s:
            log.warning("grace period over: cancelling %d requests still in flight", in_flight)
            self.config.timeout_graceful_shutdown = 0  # uvicorn cancels what is left at once
            return True
        return False
