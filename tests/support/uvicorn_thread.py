"""The server's app behind real uvicorn and the guarded protocol, on a loopback socket, in a thread
of the test process (so that a test can reach into the app's state)."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from contextlib import contextmanager

import uvicorn

from server.app import build_app
from server.connections import ConnectionLimits
from server.settings import ServerSettings

from .asgi import wait_ready


@contextmanager
def uvicorn_in_thread(synth, **settings):
    """(app, port, loop) while the server runs; stopped (and its thread joined) on exit."""
    settings.setdefault("warmup", False)
    state_dir = tempfile.TemporaryDirectory(prefix="orpheus-state-")  # the job store's, not the home's
    settings.setdefault("state_dir", state_dir.name)
    server_settings = ServerSettings(**settings)
    app = build_app(synth, server_settings)
    limits = ConnectionLimits(server_settings.receive_timeout_s, server_settings.send_timeout_s,
                              server_settings.max_connections)
    config = uvicorn.Config(app, log_config=None, access_log=False, http=limits.protocol(), ws=limits.ws_protocol(),
                            lifespan="on",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    # Bound and listening before the thread starts: a client may connect at once (the kernel queues it).
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    loops: list[asyncio.AbstractEventLoop] = []
    loop_known = threading.Event()

    def run() -> None:
        async def serve() -> None:
            loops.append(asyncio.get_running_loop())
            loop_known.set()
            await server.serve(sockets=[sock])

        asyncio.run(serve())

    thread = threading.Thread(target=run, name="test-uvicorn", daemon=True)
    thread.start()
    assert loop_known.wait(30)
    try:
        # Loading opens the v2 job store first (a thread hop): ready a moment after the lifespan starts.
        asyncio.run_coroutine_threadsafe(wait_ready(app), loops[0]).result(timeout=60)
        yield app, sock.getsockname()[1], loops[0]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        state_dir.cleanup()


def call_in_loop(loop: asyncio.AbstractEventLoop, fn, *args):
    """fn(*args) run on the server's event loop; its result."""

    async def call():
        return fn(*args)

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)
