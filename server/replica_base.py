"""What the server's Ray Serve deployments share (replicas.py, checkpoint_replicas.py): a replica
process's start, the health and close of a replica that holds an engine, the HTTP app of an ingress
replica, and the gauges each exports through Ray's metrics, where they carry their deployment's and
replica's tags: what Prometheus scrapes per node (the proxy's /metrics answers from one replica at a
time)."""

from __future__ import annotations

import asyncio
from typing import Callable

from ray import serve
from ray.serve.metrics import Gauge

from .app import build_app
from .logs import configure_replica_logging
from .process_tuning import settle_heap, tune_for_serving
from .settings import ServerSettings
from .state import SynthesizerSource

HEALTH_CHECK_PERIOD_S = 5.0
GAUGES_PERIOD_S = 1.0
GAUGES = {
    "requests_in_flight": "requests generating or waiting for the engine",
    "requests_queued": "requests waiting for a slot in the engine",
    "requests_running": "requests holding a slot in the engine",
    "speech_sessions": "open speech sessions",
}


def replica_settings(settings: dict) -> ServerSettings:
    """A replica's first steps: its settings, the server's loggers to its stderr, the interpreter
    tuned as a single server's is."""
    parsed = ServerSettings(**settings)
    configure_replica_logging(parsed.log_level, parsed.log_format)
    tune_for_serving()
    return parsed


async def export_gauges(read: Callable[[], dict[str, float]]) -> None:
    """Sets orpheus_replica_NAME from read()'s NAME: value pairs (names from GAUGES) every GAUGES_PERIOD_S."""
    gauges: dict[str, Gauge] = {}
    while True:
        for name, value in read().items():
            if name not in gauges:
                gauges[name] = Gauge(f"orpheus_replica_{name}", GAUGES[name])
            gauges[name].set(value)
        await asyncio.sleep(GAUGES_PERIOD_S)


class HoldsEngine:
    """A replica whose `synth` is its own engine and codec: healthy while their threads run."""

    async def check_health(self) -> None:
        """Ray's health check: raising marks this replica unhealthy, and Ray replaces it."""
        if (problem := self.synth.problem()) is not None:
            raise RuntimeError(problem)

    def engine_gauges(self) -> dict:
        stats = self.synth.stats()
        return {"requests_queued": stats.get("queued", 0), "requests_running": stats.get("running", 0)}

    def __del__(self):
        self.synth.close()


class ServesTheApp:
    """An ingress replica: the HTTP app around what serve_app() was given, built once Ray asks for it,
    every answer carrying this replica's id."""

    settings: ServerSettings

    def serve_app(self, source: SynthesizerSource) -> None:
        """Call at the end of __init__, once source is loaded and warmed up (the heap then settles, as a
        single server's does before it is ready)."""
        settle_heap()
        self._app_source = source
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._orpheus_app = None
        self._exporting = asyncio.create_task(export_gauges(self._gauges))

    def __serve_build_asgi_app__(self):
        # loaded and warmed up already: the app is ready from its first request
        self._orpheus_app = build_app(self._app_source, self.settings.model_copy(update={"warmup": False}),
                                      replica_id=self._replica_id)
        return self._orpheus_app

    def engine_gauges(self) -> dict:
        return {}  # the engines are other replicas'

    def _gauges(self) -> dict:
        if self._orpheus_app is None:
            return {}
        state = self._orpheus_app.state.server
        return {"requests_in_flight": state.admission.count, "speech_sessions": state.speech_sessions,
                **self.engine_gauges()}
