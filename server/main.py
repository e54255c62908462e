"""`orpheus-local serve`: settings from flags and ORPHEUS_* variables, logging, then uvicorn.

Nothing is loaded here: the model loads in the app's lifespan, so /health answers from the start.
A missing local checkpoint is reported before the server starts.
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from orpheus_local.checkpoint import CheckpointError, looks_like_hub_id, resolve_model_dir, resolve_snac_dir
from orpheus_local.config import EngineConfig

from .settings import ServerSettings


def check_checkpoint(config: EngineConfig) -> None:
    """Fail fast on local checkpoint paths; hub ids are fetched (and checked) while loading."""
    if config.demo:
        return
    for ref, resolve in ((config.model, resolve_model_dir), (config.snac, resolve_snac_dir)):
        if not looks_like_hub_id(ref):
            resolve(ref)


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped. Exit status: 0 after a normal stop (Ctrl-C, SIGINT), 1 when the model
    failed to load, 2 for bad settings, a missing checkpoint or an unreadable API keys file."""
    failures: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    try:
        settings = ServerSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
        config = settings.engine_config()
        check_checkpoint(config)
        # torch, transformers and the app: imported only once the settings are known to be good
        from orpheus_local.synth import Synthesizer

        from .app import build_app

        app = build_app(lambda: Synthesizer.load(config), settings, on_load_error=stop)
    except (SettingsError, ValidationError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: a normal stop
        pass
    if failures:
        print(f"error: {failures[0]}", file=sys.stderr)
        return 1
    return 0
