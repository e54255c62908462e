"""`orpheus-local serve`: settings from flags and ORPHEUS_* variables, logging, then uvicorn
(GracefulServer: a stop drains the requests in flight).

Nothing is loaded here: the model loads in the app's lifespan, so /health answers from the start.
A missing local checkpoint is reported before the server starts.
"""

from __future__ import annotations

import logging
import resource
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from orpheus_local.config import EngineConfig
from orpheus_local.weights.checkpoint import (
    CheckpointError,
    looks_like_hub_id,
    resolve_model_dir,
    resolve_snac_dir,
)

from .connections import ConnectionLimits
from .lifecycle import GracefulServer
from .logs import configure_logging, log_settings
from .process_tuning import settle_heap, tune_for_serving
from .settings import ServerSettings

log = logging.getLogger(__name__)


def check_checkpoint(config: EngineConfig) -> None:
    """Fail fast on local checkpoint paths; hub ids are fetched (and checked) while loading."""
    if config.demo or config.simulated_step_ms is not None:
        return
    for ref, resolve in ((config.model, resolve_model_dir), (config.snac, resolve_snac_dir)):
        if not looks_like_hub_id(ref):
            resolve(ref)


# File descriptors kept for everything but client connections: weights, logs, threads' pipes.
RESERVED_FDS = 128
# Connections waiting to be accepted (nginx's default). asyncio accepts up to this many at once,
# before the cap can close any: the file limit must leave room for one such burst.
BACKLOG = 511
# The largest WebSocket message a client may send: a speech session's messages are small JSON (uvicorn
# would take 16 MiB).
WS_MAX_MESSAGE_BYTES = 1 << 20


def fit_connections(wanted: int) -> int:
    """The connection cap, below the process's file limit (raised to its hard maximum first), so
    that accepting a connection never fails for want of a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    fitted = max(1, min(wanted, soft - RESERVED_FDS - BACKLOG))
    if fitted < wanted:
        log.warning("max_connections lowered from %d to %d to fit the file limit (%d)", wanted, fitted, soft)
    return fitted



def _loader(settings: ServerSettings):
    """What loads the served checkpoints, once their local paths are checked: one Synthesizer, or
    with --model each checkpoint's by name (the set refused when it does not fit the device)."""
    if settings.model:
        configs = settings.engine_configs()
        for config in configs.values():
            check_checkpoint(config)
        from orpheus_local.pipeline.checkpoint_set import load_checkpoints

        return lambda: load_checkpoints(configs)
    config = settings.engine_config()
    check_checkpoint(config)
    from orpheus_local.pipeline.synthesizer import Synthesizer

    return lambda: Synthesizer.load(config)


def _serve_replicas(settings: ServerSettings) -> int:
    try:
        from .replicas import serve_replicas  # Ray: only for those who scale out
    except ImportError as exc:
        print(f"error: --replicas needs Ray Serve: pip install 'orpheus-local[scale]' ({exc})", file=sys.stderr)
        return 2
    return serve_replicas(settings)


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped. Exit status: 0 after a normal stop (SIGTERM or SIGINT, once the requests
    in flight are done), 1 when the model failed to load, 2 for bad settings, a missing or damaged
    checkpoint or an unreadable API keys file; 128 + the signal's number after a second signal."""
    failures: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    try:
        settings = ServerSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
        loader = _loader(settings)
        # the app (torch, transformers): imported only once the settings are known to be good
        from .app import build_app

        app = None if settings.replicas else build_app(loader, settings, on_load_error=stop, on_ready=settle_heap)
    except (SettingsError, ValidationError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log_settings(settings)
    if settings.replicas:
        return _serve_replicas(settings)
    limits = ConnectionLimits(settings.receive_timeout_s, settings.send_timeout_s,
                              fit_connections(settings.max_connections))
    trusted = settings.trusted_proxies.strip()
    # access_log off: server/request_log.py writes one richer line per request instead
    server_config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, http=limits.protocol(),
        ws=limits.ws_protocol(), ws_max_size=WS_MAX_MESSAGE_BYTES, backlog=BACKLOG,
        # X-Forwarded-For and -Proto are believed from the configured proxies only (uvicorn trusts loopback by default)
        proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None,
    )
    tune_for_serving()
    server = GracefulServer(server_config, app.state.server, settings.shutdown_grace_s)
    server.run()
    if failures:
        print(f"error: {failures[0]}", file=sys.stderr)
        return 1
    return 0
