"""build_app: the ASGI application, its routes, middleware, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI

from . import errors
from .auth import ApiKeyAuth, load_keys
from .connections import quiet_accept_errors
from .metrics import RequestCounter
from .replica_id import ReplicaIdHeader, new_replica_id
from .request_log import AccessLog
from .routes import openai, ops, playground, segmind, speech_stream, voices
from .settings import ServerSettings
from .state import ServerState, SynthesizerSource

log = logging.getLogger(__name__)


def build_app(
    synthesizer: SynthesizerSource,
    settings: ServerSettings,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    replica_id: str | None = None,
) -> FastAPI:
    """The app serving `synthesizer`: a loaded Synthesizer, or a function that loads one (called in
    a thread during start-up, so /health answers meanwhile). on_load_error is called if loading or
    warm-up fails; without it the app stays up and /ready reports the failure. on_ready is called
    once it has loaded and warmed up, before /ready says so. replica_id: what
    X-Replica-Id says (a Ray Serve replica's id; unset: a fresh one for this process)."""
    state = ServerState(settings)
    keys = load_keys(settings.api_keys_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        quiet_accept_errors(asyncio.get_running_loop())
        if keys:
            log.info("API keys required (%d configured)", len(keys))
        else:
            log.warning("no API keys configured: the server is open to anyone who can reach it")
        loading = asyncio.create_task(state.load(synthesizer, on_load_error, on_ready))
        try:
            yield
        finally:
            loading.cancel()
            await state.close()

    app = FastAPI(
        title="orpheus-local",
        summary="Orpheus 3B text-to-speech behind Segmind's and OpenAI's HTTP APIs",
        lifespan=lifespan,
    )
    app.state.server = state
    errors.install(app)
    app.state.checkpoint_names = state.checkpoint_names  # for the 404 of a slug that names none
    for module in (segmind, openai, voices, speech_stream, ops, playground):
        app.include_router(module.router)
    app.include_router(segmind.model_routes(state.checkpoint_names))  # after the fixed routes
    app.add_middleware(ApiKeyAuth, keys=keys)
    app.add_middleware(RequestCounter, metrics=state.metrics)  # outside auth: counts 401s too
    app.add_middleware(AccessLog)  # logs every answer, with the time spent in the others
    app.add_middleware(ReplicaIdHeader, replica_id=replica_id or new_replica_id())  # outermost: on every answer
    return app
