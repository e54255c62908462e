"""One log line per request: its id, route, status, time to first audio, audio seconds and RTFx.

The AccessLog middleware opens a RequestRecord for every HTTP request and writes it once the
response is complete; the generation (server/generation.py) fills in its measurements through
current(). A v2 job generates after its submitting request has been answered: it opens a record of
its own (server/jobs.py), written when the job ends.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from .connections import CUT_KEY

log = logging.getLogger("server.requests")

# Probes and scrapes come every few seconds: their lines are debug, so that info stays readable.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


@dataclass
class RequestRecord:
    route: str
    method: str | None = None
    request_id: str | None = None
    status: int | None = None
    ttfa_s: float | None = None  # from generation start to its first audio
    audio_s: float | None = None
    generation_s: float | None = None  # wall time of the generation, for RTFx
    cut: str | None = None  # the server closed the connection: "receive timeout" or "slow reader"
    started: float = field(default_factory=time.perf_counter)

    def fields(self) -> dict:
        rtfx = self.audio_s / self.generation_s if self.audio_s and self.generation_s else None
        cut = {"cut": self.cut} if self.cut else {}
        return {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "ttfa_s": _rounded(self.ttfa_s, 3),
            "audio_s": _rounded(self.audio_s, 3),
            "rtfx": _rounded(rtfx, 2),
            "duration_s": _rounded(time.perf_counter() - self.started, 3),
            **cut,
        }

    def write(self) -> None:
        level = logging.DEBUG if self.route in _QUIET_ROUTES else logging.INFO
        log.log(level, "request", extra={"fields": self.fields()})


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


_current: ContextVar[RequestRecord | None] = ContextVar("request_record", default=None)


def current() -> RequestRecord:
    """The record of the request or job being served; outside both, one that nobody writes."""
    record = _current.get()
    return RequestRecord(route="-") if record is None else record


def open_record(route: str, request_id: str) -> RequestRecord:
    """A record for work that outlives the request that started it (a v2 job): set as current in
    this task only, and written by the caller when the work ends."""
    record = RequestRecord(route=route, request_id=request_id)
    _current.set(record)
    return record


class AccessLog:
    """ASGI middleware writing one RequestRecord per HTTP request, after its response is sent."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        record = RequestRecord(route=scope["path"], method=scope["method"])
        token = _current.set(record)

        async def send_noting_status(message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            _current.reset(token)
            # The matched route's template: one spelling for every job id; a path that matched
            # nothing keeps its own.
            if (route := scope.get("route")) is not None:
                record.route = route.path
            record.cut = scope.get(CUT_KEY)
            if record.status is None:
                record.status = 500  # an exception before the response started: answered with 500 further out
            record.write()
