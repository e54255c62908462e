"""Prometheus metrics, in a registry of the app's own (two apps in one process never mix counts)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from starlette.types import ASGIApp, Receive, Scope, Send

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("orpheus_http_requests", "HTTP requests answered", ["route", "status"],
                                registry=self.registry)
        self.time_to_first_audio = Histogram(
            "orpheus_time_to_first_audio_seconds", "from generation start to its first audio",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.generation_seconds = Histogram(
            "orpheus_generation_seconds", "wall time of one completed generation", buckets=_DURATION_BUCKETS,
            registry=self.registry)
        self.audio_seconds = Counter("orpheus_audio_seconds", "seconds of audio produced", registry=self.registry)
        self.guards = Counter("orpheus_guard_fired", "guards that caught a runaway part, by guard and action",
                              ["guard", "action"], registry=self.registry)
        self.in_flight = Gauge("orpheus_requests_in_flight", "requests generating or waiting for the engine",
                               registry=self.registry)
        self.queued = Gauge("orpheus_requests_queued", "requests waiting for a slot in the engine",
                            registry=self.registry)
        self.running = Gauge("orpheus_requests_running", "requests holding a slot in the engine (generating)",
                             registry=self.registry)
        self.speech_sessions = Gauge("orpheus_speech_sessions", "open speech sessions (WS /v1/audio/speech/stream)",
                                     registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, open fds, cpu seconds

    def watch(self, in_flight: Callable[[], float], queued: Callable[[], float],
              running: Callable[[], float] | None = None, engine: Callable[[], dict] | None = None) -> None:
        """Read the gauges from their sources at scrape time; engine: the backend's stats(), whose
        `steps` and `step_seconds` (when it counts them) become counters."""
        self.in_flight.set_function(in_flight)
        self.queued.set_function(queued)
        if running is not None:
            self.running.set_function(running)
        if engine is not None:
            self.registry.register(_EngineSteps(engine))


class _EngineSteps:
    """orpheus_engine_steps_total and orpheus_engine_step_seconds_total, read from the engine at scrape
    time: their increase over an interval gives the mean wall time of a step, host work included."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def describe(self):
        return []  # collected only at scrape time: the engine may not exist yet

    def collect(self):
        stats = self.stats()
        if "steps" in stats:
            yield CounterMetricFamily("orpheus_engine_steps", "engine steps taken", value=stats["steps"])
            yield CounterMetricFamily("orpheus_engine_step_seconds", "wall time of the engine's steps, delivery "
                                      "of their tokens included", value=stats["step_seconds"])


class RequestCounter:
    """ASGI middleware counting answered requests by route and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # an exception before the response starts is answered with 500 further out

        async def send_counting(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            # The router leaves the matched route in the scope: its path template keeps label values
            # bounded. Requests answered before routing (401) or matching nothing (404) have none.
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "unrouted"), str(status)).inc()
