"""The server's real ASGI app in process: started, called, and a stand-in synthesizer."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from contextlib import asynccontextmanager

import httpx
import numpy as np

from orpheus_local.tokens import SAMPLES_PER_FRAME
from server.app import build_app
from server.settings import ServerSettings

V1 = "/v1/orpheus-3b-0.1"
V2 = "/v2/orpheus-3b-0.1"
SPEECH = "/v1/audio/speech"
SHORT = {"text": "Hello there.", "voice": "tara", "max_new_tokens": 100, "seed": 1}


class FakeSynth:
    """Stands in for the Synthesizer where a test needs a failure, or a generation that waits."""

    def __init__(self, error: Exception | None = None, chunks: int = 1, wait: bool = False, fail_after: bool = False):
        self.error = error
        self.fail_after = fail_after  # raise the error after the chunks, not before
        self.chunks = chunks
        self.release = asyncio.Event()
        if not wait:
            self.release.set()
        self.started = asyncio.Event()
        self.closed = asyncio.Event()

    async def stream(self, params, request_id=None, on_guard=None, whole_file=False):
        self.started.set()
        try:
            if self.error is not None and not self.fail_after:
                raise self.error
            for _ in range(self.chunks):
                yield np.full(SAMPLES_PER_FRAME, 0.1, np.float32)
            if self.error is not None:
                raise self.error
            await self.release.wait()
        finally:
            self.closed.set()

    def stats(self) -> dict:
        return {"queued": 0, "running": 0}

    def codec_backlog_s(self) -> float:
        return 0.0

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        pass


@asynccontextmanager
async def serve(synth, base_url: str = "http://testserver", on_load_error=None, on_ready=None, **settings):
    """(client, app) for a started app; returns once loading has ended, unless synth is a loader
    (a callable) whose test watches the loading itself."""
    settings.setdefault("warmup", False)
    with tempfile.TemporaryDirectory(prefix="orpheus-state-") as state_dir:  # the job store's, not the home's
        settings.setdefault("state_dir", state_dir)
        app = build_app(synth, ServerSettings(**settings), on_load_error=on_load_error, on_ready=on_ready)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
                if not callable(synth):
                    await wait_ready(app)
                yield client, app


async def wait_ready(app, timeout: float = 60.0) -> None:
    """Until the app has loaded and warmed up (an event, not a poll); fails if loading failed."""
    state = app.state.server
    await asyncio.wait_for(state.loaded.wait(), timeout)
    assert state.ready, f"loading failed: {state.load_error}"


async def call_asgi(app, path: str, payload: dict, disconnect_when=None, disconnect_after: float | None = None,
                    on_send=None, gone: asyncio.Event | None = None):
    """POST straight to the ASGI app, timing each body chunk. The client goes away once
    disconnect_when(message) is true for a message sent, after disconnect_after seconds, or once the
    event `gone` is set; on_send(message) sees every message as it is sent.
    Returns (status, headers, [(seconds, bytes)])."""

    body = json.dumps(payload).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }
    gone = gone or asyncio.Event()
    if disconnect_after is not None:
        asyncio.get_running_loop().call_later(disconnect_after, gone.set)
    sent_body = False
    start = time.perf_counter()
    status, headers, chunks = None, {}, []

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status, headers
        if gone.is_set():
            return  # as uvicorn does (ASGI spec 2.3): what is sent after a disconnect goes nowhere
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message.get("body"):
            chunks.append((time.perf_counter() - start, message["body"]))
        if on_send is not None:
            on_send(message)
        if disconnect_when is not None and disconnect_when(message):
            gone.set()

    await app(scope, receive, send)
    gone.set()
    return status, headers, chunks
