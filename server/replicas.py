"""`orpheus-local serve --replicas N`: the same app on N Ray Serve replicas behind Ray's HTTP proxy.

Each replica is one process holding its own engine and codec (one GPU each on CUDA, one CPU core
each otherwise) and serving the whole FastAPI app: every route, contract and stream is the same as
one server's, and every response carries X-Replica-Id. Ray's proxy listens on --host/--port and
sends each request to the replica with the fewest requests under way; a replica takes at most
--max-in-flight at once (the engine's admission limit), and as many requests as all replicas can
take wait in Ray's queue, beyond which the proxy answers 503. --max-replicas turns on Ray's autoscaling between --replicas and it,
aiming at --target-ongoing-requests per replica.

A replica is healthy while its engine and codec threads run (Synthesizer.problem()); Ray replaces
one that is not, or whose process died. SIGTERM (or SIGINT) deletes the application: each replica
stops taking requests, finishes those under way for --shutdown-grace-s at most, and closes its
engine; then the command exits 0.

`serve run deploy/serve.yaml` builds the same application from a config file (build_application).
With several checkpoints (--model given more than once) each is a deployment of its own behind a
front that serves the app: see checkpoint_replicas.py.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

import ray
from ray import serve

from .replica_base import (
    HEALTH_CHECK_PERIOD_S,
    HoldsEngine,
    ServesTheApp,
    replica_settings,
)
from .settings import ServerSettings
from .state import WARMUP

log = logging.getLogger(__name__)

APP_NAME = "orpheus"


@serve.deployment(name="OrpheusReplica", health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=30)
@serve.ingress()
class OrpheusReplica(HoldsEngine, ServesTheApp):  # HoldsEngine first: its engine_gauges are this engine's
    """One replica: loads and warms up its synthesizer before Ray sends it any request."""

    async def __init__(self, settings: dict):
        # torch is imported in the replica only
        from orpheus_local.pipeline.synthesizer import Synthesizer

        self.settings = replica_settings(settings)
        self.synth = await asyncio.to_thread(Synthesizer.load, self.settings.engine_config())
        if self.settings.warmup:
            await self.synth.synthesize(WARMUP, "warmup")
        self.serve_app(self.synth)


def deployment_options(settings: ServerSettings, gpus: bool) -> dict:
    """Ray Serve options from the server's settings."""
    options = {
        "max_ongoing_requests": settings.max_in_flight,
        # as many waiting, at most, as all the replicas can take at once; then the proxy answers 503
        "max_queued_requests": settings.max_in_flight * max(settings.replicas, settings.max_replicas or 0),
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s,
        "ray_actor_options": {"num_gpus": 1} if gpus else {"num_cpus": 1},
    }
    if settings.max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.replicas, "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests or settings.max_in_flight / 2,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def _wants_gpus(settings: ServerSettings) -> bool:
    if settings.device is not None:
        return settings.device.startswith("cuda")
    return ray.cluster_resources().get("GPU", 0) >= 1  # unset: cuda where the cluster has GPUs


def build_application(args: dict) -> serve.Application:
    """For `serve run deploy/serve.yaml`: args are the server's settings by name (weights, demo,
    replicas, max_in_flight, ...). The replicas get the settings that were set, not the defaults, so
    that they read them as given (--model refuses a --weights given with it)."""
    settings = ServerSettings(**args)
    options = deployment_options(settings, _wants_gpus(settings))
    if settings.model:  # several checkpoints: a deployment each, behind a front
        from .checkpoint_replicas import checkpoints_application

        return checkpoints_application(settings, options)
    return OrpheusReplica.options(**options).bind(settings.model_dump(mode="json", exclude_unset=True))


def serve_replicas(settings: ServerSettings) -> int:
    """Start (or join, with --ray-address) a Ray cluster, deploy the replicas behind the proxy on
    host:port, and serve until SIGTERM or SIGINT; exit status 0 after a drained stop."""
    stop = threading.Event()
    joined = settings.ray_address is not None
    # demo checkpoints built once here, not by each replica at the same time
    from orpheus_local.weights.demo import build_demo_checkpoint

    for config in settings.engine_configs().values() if settings.model else [settings.engine_config()]:
        if config.demo:
            build_demo_checkpoint(config.demo_dir, seed=config.demo_seed)
    # A cluster of this machine alone listens on loopback only; one joined is reached as it is set up.
    # Ray runs its workers at niceness 15: a replica is the server's work, not background work.
    local = {} if joined else {"_node_ip_address": "127.0.0.1", "_system_config": {"worker_niceness": 0}}
    ray.init(address=settings.ray_address, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}, **local)
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init(), which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings.model_dump(mode="json", exclude_unset=True)), name=APP_NAME, route_prefix="/")
        log.info("serving %d replica(s) on http://%s:%d", settings.replicas, settings.host, settings.port)
        stop.wait()
        log.info("stopping: the replicas finish what is under way (%g s at most)", settings.shutdown_grace_s)
        serve.delete(APP_NAME)
        if not joined:
            serve.shutdown()
    finally:
        ray.shutdown()
    log.info("stopped")
    return 0
