"""Gauges of a Ray Serve replica through Ray's metrics export, where each carries its deployment's
and replica's tags: what Prometheus scrapes per node (the proxy's /metrics answers from one replica
at a time)."""

from __future__ import annotations

import asyncio
from typing import Callable

from ray.serve.metrics import Gauge

PERIOD_S = 1.0
DESCRIPTIONS = {
    "requests_in_flight": "requests generating or waiting for the engine",
    "requests_queued": "requests waiting for a slot in the engine",
    "requests_running": "requests holding a slot in the engine",
    "speech_sessions": "open speech sessions",
}


async def export_gauges(read: Callable[[], dict[str, float]]) -> None:
    """Sets orpheus_replica_NAME from read()'s NAME: value pairs (names from DESCRIPTIONS) every PERIOD_S."""
    gauges: dict[str, Gauge] = {}
    while True:
        for name, value in read().items():
            if name not in gauges:
                gauges[name] = Gauge(f"orpheus_replica_{name}", DESCRIPTIONS[name])
            gauges[name].set(value)
        await asyncio.sleep(PERIOD_S)
