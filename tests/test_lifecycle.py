"""Start and stop: /ready waits for the warm-up; a stop drains the requests in flight, refuses new ones
with 503 and exits 0; a second signal exits at once. In-process with a stand-in synthesizer, and as
real `orpheus-local serve --demo` processes."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from support.asgi import serve, wait_ready
from support.process import ServerProcess, free_port, start_server
from support.wav import wav_samples

from server.app import build_app
from server.lifecycle import GracefulServer
from server.settings import ServerSettings

V1 = "/v1/orpheus-3b-0.1"
FRAME_SAMPLES = 2048
WAV_HEADER_BYTES = 44
# One sentence (one part), long enough for the guards to let a generation run its max_new_tokens.
SENTENCE = "The quick brown fox jumps over the lazy dog and then it runs far away into the quiet woods."


class HeldSynth:
    """Stands in for the Synthesizer: warm-up and each generation's second chunk wait for the test."""

    def __init__(self, warmed_up: bool = True):
        self.warm_up_done = asyncio.Event()
        self.release = asyncio.Event()
        self.stream_closed = asyncio.Event()
        self.closed = False
        if warmed_up:
            self.warm_up_done.set()

    async def synthesize(self, params, request_id=None):
        await self.warm_up_done.wait()
        return np.zeros(FRAME_SAMPLES, np.float32)

    async def stream(self, params, request_id=None, **options):
        try:
            yield np.full(FRAME_SAMPLES, 0.1, np.float32)
            await self.release.wait()
            yield np.full(FRAME_SAMPLES, 0.1, np.float32)
        finally:
            self.stream_closed.set()

    def stats(self) -> dict:
        return {"queued": 0, "running": 0}

    def codec_backlog_s(self) -> float:
        return 0.0

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        self.closed = True


async def wait_listening_and_ready(client: httpx.AsyncClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never became ready"
        await asyncio.sleep(0.05)


# --- in process ------------------------------------------------------------------------------


async def test_ready_is_503_until_the_warm_up_ends():
    synth = HeldSynth(warmed_up=False)
    app = build_app(synth, ServerSettings(warmup=True))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for _ in range(5):  # however often it is asked, while the warm-up is held
                early = await client.get("/ready")
                assert early.status_code == 503 and early.json() == {"status": "loading"}
            synth.warm_up_done.set()
            await wait_ready(app)


async def test_one_log_line_per_request_and_per_job(caplog):
    synth = HeldSynth()
    synth.release.set()
    app = build_app(synth, ServerSettings(warmup=False))
    caplog.set_level(logging.DEBUG, logger="server.requests")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            await wait_ready(app)
            assert (await client.get("/ready")).status_code == 200  # a probe: logged at debug level only
            answered = await client.post(V1, json={"text": "Hello."})
            job_id = (await client.post("/v2/orpheus-3b-0.1", json={"text": "Hello."})).json()["request_id"]
            await asyncio.wait([app.state.server.jobs.get(job_id).task])
            assert (await client.get(f"/v2/requests/{job_id}/status")).json()["status"] == "COMPLETED"
            await client.get("/no/such/path")
    lines = [(r.levelno, r.fields) for r in caplog.records if r.name == "server.requests"]

    def line(**match) -> tuple[int, dict]:
        return next((level, f) for level, f in lines if match.items() <= f.items())

    level, served = line(route=V1, method="POST")
    assert level == logging.INFO and served["status"] == 200
    assert served["request_id"] == answered.headers["x-request-id"]
    assert served["audio_s"] == round(2 * FRAME_SAMPLES / 24000, 3) and served["ttfa_s"] >= 0 and served["rtfx"] > 0
    assert served["duration_s"] >= served["ttfa_s"]
    assert line(route="/v2/orpheus-3b-0.1")[1]["status"] == 200
    assert line(route="job", request_id=job_id)[1]["status"] == 200  # the job's own line, when it ended
    assert line(route="/v2/requests/{request_id}/status")[1]["status"] == 200
    assert line(route="/no/such/path")[1]["status"] == 404
    assert line(route="/ready")[0] == logging.DEBUG  # probes stay out of the info log


@asynccontextmanager
async def graceful_server(grace_s: float):
    """A GracefulServer over a HeldSynth on a free port, once ready: (server, synth, client, serving task)."""
    synth = HeldSynth()
    # A function as the source: the app then owns the synthesizer and closes it at shutdown.
    app = build_app(lambda: synth, ServerSettings(warmup=False))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = GracefulServer(config, app.state.server, grace_s)
    serving = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await wait_listening_and_ready(client)
            yield server, synth, client, serving
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def test_a_stop_refuses_new_requests_and_finishes_those_in_flight():
    async with graceful_server(grace_s=30) as (server, synth, client, serving):
        async with client.stream("POST", V1, json={"text": "Hello.", "stream": True}) as in_flight:
            assert in_flight.status_code == 200  # the first audio has left: the request is generating
            server.handle_exit(signal.SIGTERM, None)

            refused = await client.post(V1, json={"text": "Hello."})
            speech = await client.post("/v1/audio/speech", json={"input": "Hello."})
            ready = await client.get("/ready")
            health = await client.get("/health")
            assert not serving.done(), "the server stopped with a request in flight"

            synth.release.set()
            body = await in_flight.aread()
        await asyncio.wait_for(serving, 10)
    assert wav_samples(body) == 2 * FRAME_SAMPLES  # both chunks: the request ran to its end
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json() == {"error": "the server is shutting down; retry shortly"}
    assert speech.status_code == 503 and speech.json()["error"]["code"] == "shutting_down"
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert health.status_code == 200
    assert synth.closed


async def test_when_the_grace_period_is_over_what_is_left_is_cancelled():
    async with graceful_server(grace_s=0.3) as (server, synth, client, serving):
        with pytest.raises(httpx.RemoteProtocolError):  # closed before the body is complete
            async with client.stream("POST", V1, json={"text": "Hello.", "stream": True}) as in_flight:
                server.handle_exit(signal.SIGTERM, None)
                await in_flight.aread()
        await asyncio.wait_for(serving, 10)  # it ends: the held generation would never end by itself
    assert synth.stream_closed.is_set() and synth.closed


# --- real processes ----------------------------------------------------------------------------


def start_demo_server(demo_dirs, *flags: str) -> ServerProcess:
    return start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu", *flags)


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_sigterm_during_a_request_finishes_it_then_exits_0(demo_dirs):
    server = start_demo_server(demo_dirs, "--log-format", "json", "--shutdown-grace-s", "60")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            # about 3 s of generating on a CPU: still in flight when the signal comes
            payload = {"text": SENTENCE, "voice": "tara", "max_new_tokens": 300, "seed": 1, "stream": True}
            with client.stream("POST", V1, json=payload) as in_flight:
                chunks = in_flight.iter_raw()
                body = next(chunks)  # generating
                server.signal(signal.SIGTERM)
                with httpx.Client(base_url=client.base_url, timeout=10) as other:
                    refused = other.post(V1, json={"text": "Hello."})
                    ready = other.get("/ready")
                body += b"".join(chunks)
                request_id = in_flight.headers["x-request-id"]
        code = server.wait(timeout=30)
    finally:
        server.stop()
    output = server.output
    assert code == 0, output
    assert wav_samples(body) > FRAME_SAMPLES
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json() == {"error": "the server is shutting down; retry shortly"}
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}

    lines = json_lines(output)
    messages = [line["message"] for line in lines]
    assert "settings" in messages and "engine closed" in messages
    assert any(m.startswith("stopping: 1 requests in flight") for m in messages)
    assert messages.index("ready to serve") > messages.index(next(m for m in messages if m.startswith("warmed up")))
    served = next(line for line in lines if line.get("request_id") == request_id)
    assert (served["method"], served["route"], served["status"]) == ("POST", V1, 200)
    assert served["ttfa_s"] > 0 and served["rtfx"] > 0
    assert served["audio_s"] == pytest.approx(wav_samples(body) / 24000, abs=1e-3)
    assert any(line.get("route") == V1 and line.get("status") == 503 for line in lines)


def test_a_second_signal_exits_at_once(demo_dirs):
    server = start_demo_server(demo_dirs, "--no-warmup", "--shutdown-grace-s", "60")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            payload = {"text": SENTENCE, "voice": "tara", "max_new_tokens": 1000, "seed": 1, "stream": True}
            with client.stream("POST", V1, json=payload) as in_flight:
                # Keep the iterator: dropping it closes the connection, and the server then cancels.
                chunks = in_flight.iter_raw()
                next(chunks)
                server.signal(signal.SIGTERM)
                # draining: the request still generates, and /ready says so (an answer, not a timer)
                with httpx.Client(base_url=server.base_url, timeout=10) as other:
                    assert other.get("/ready").json() == {"status": "draining"}
                assert server.process.poll() is None
                server.signal(signal.SIGTERM)
                code = server.wait(timeout=5)
    finally:
        server.stop()
    assert code == 128 + signal.SIGTERM, server.output
    assert "SIGTERM again: exiting now" in server.output


@pytest.mark.parametrize("part,problem", [("backend", "the engine thread has stopped"),
                                          ("codec_worker", "the audio decoder thread has stopped")])
async def test_ready_fails_once_a_thread_the_server_needs_has_stopped(demo_config, part, problem):
    from orpheus_local.pipeline.synthesizer import Synthesizer

    synth = Synthesizer.load(demo_config)
    try:
        async with serve(synth) as (client, _):
            assert (await client.get("/ready")).status_code == 200
            getattr(synth, part).close()
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json() == {"status": "failed", "error": problem}
    finally:
        synth.close()
