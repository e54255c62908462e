"""`orpheus-local serve --demo --replicas 2`: a real Ray cluster on this machine, Ray Serve's proxy
on a loopback port, two replicas each with its own engine. Requests spread over both, streams pass
through with their first audio early, v2 jobs are shared, a killed replica is replaced while the
other serves, and SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from support.process import serve_replicas, start_server

from server.replicas import deployment_options
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[1]

REPLICA_PLACES = 4  # --max-in-flight: 8 concurrent requests need both replicas
# Whole files: a seeded request's bytes are the same on every run, whichever replica made them.
SPEECH = {"input": "Hello there.", "response_format": "pcm", "max_new_tokens": 100, "seed": 5, "stream": False}
WAIT_S = 120


@pytest.fixture(scope="module")
def replicas(demo_dirs):
    server = start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu", "--replicas", "2",
                          "--max-in-flight", str(REPLICA_PLACES), "--max-codec-backlog-s", "1000",
                          ready_timeout=300)
    yield server
    server.stop()


async def speak(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/v1/audio/speech", json=SPEECH)


async def round_of(base_url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_S) as client:
        return await asyncio.gather(*(speak(client) for _ in range(n)))


def complete(response: httpx.Response) -> bool:
    """200 with whole frames of s16le audio (2048 samples a frame)."""
    return response.status_code == 200 and len(response.content) > 0 and len(response.content) % 4096 == 0


async def test_concurrent_requests_are_served_by_both_replicas_each_naming_itself(replicas):
    responses = await round_of(replicas.base_url, 2 * REPLICA_PLACES)
    assert all(complete(r) for r in responses), [(r.status_code, r.text[:200]) for r in responses]
    assert len({r.content for r in responses}) == 1  # one seed, one text: the same audio wherever it ran
    assert len({r.headers["x-replica-id"] for r in responses}) == 2


async def test_a_stream_passes_through_the_proxy_as_it_is_generated(replicas):
    arrivals = []
    async with httpx.AsyncClient(base_url=replicas.base_url, timeout=WAIT_S) as client:
        async with client.stream("POST", "/v1/audio/speech", json={**SPEECH, "max_new_tokens": 300, "stream": True}) as response:
            assert response.status_code == 200 and response.headers["x-replica-id"]
            async for chunk in response.aiter_raw():
                arrivals.append((time.perf_counter(), len(chunk)))
    assert len(arrivals) > 1 and arrivals[0][0] < arrivals[-1][0]  # first audio before the last byte
    assert sum(n for _, n in arrivals) % 4096 == 0


async def test_a_v2_job_accepted_by_one_replica_is_polled_and_fetched_through_any(replicas):
    async with httpx.AsyncClient(base_url=replicas.base_url, timeout=WAIT_S) as client:
        submitted = await client.post("/v2/orpheus-3b-0.1", json={"text": "Hello there.", "max_new_tokens": 100})
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["request_id"]
        answered_by = {submitted.headers["x-replica-id"]}
        deadline = time.monotonic() + WAIT_S
        while (status := await client.get(f"/v2/requests/{job_id}/status")).json()["status"] != "COMPLETED":
            assert status.status_code == 200 and status.json()["status"] in ("QUEUED", "PROCESSING"), status.text
            assert time.monotonic() < deadline
            answered_by.add(status.headers["x-replica-id"])
            await asyncio.sleep(0.2)
        result = await client.get(f"/v2/requests/{job_id}")
        assert result.status_code == 200 and result.json()["status"] == "COMPLETED", result.text
        audio = [await client.get(result.json()["output"]) for _ in range(6)]
    assert all(r.status_code == 200 and r.content[:4] == b"RIFF" for r in audio)
    assert len({r.content for r in audio}) == 1
    answered_by |= {r.headers["x-replica-id"] for r in [result, *audio]}
    assert len(answered_by) == 2  # both replicas answered for the one job


async def test_a_killed_replica_fails_its_requests_cleanly_and_is_replaced_while_the_other_serves(replicas):
    first = await round_of(replicas.base_url, 2 * REPLICA_PLACES)
    assert all(complete(r) for r in first), [(r.status_code, r.text[:200]) for r in first]
    before = {r.headers["x-replica-id"] for r in first}
    async with httpx.AsyncClient(base_url=replicas.base_url, timeout=WAIT_S) as client:
        load = [asyncio.create_task(speak(client)) for _ in range(2 * REPLICA_PLACES)]
        await asyncio.sleep(1)  # under way (each takes seconds); which replica has which is Ray's choice
        victim = next(iter(serve_replicas()))
        os.kill(victim, signal.SIGKILL)
        outcomes = await asyncio.gather(*load)  # every one ends: none hangs past the client's timeout
    for response in outcomes:
        assert complete(response) or response.status_code in (500, 502, 503), (response.status_code, response.text)
    assert any(complete(r) for r in outcomes)
    deadline = time.monotonic() + 3 * WAIT_S
    while True:  # Ray starts a replica in the dead one's place; then both serve again
        responses = await round_of(replicas.base_url, 2 * REPLICA_PLACES)
        ids = {r.headers["x-replica-id"] for r in responses if complete(r)}
        if len(ids) == 2 and ids - before:
            break
        assert time.monotonic() < deadline, f"two replicas did not serve again: {ids}, before {before}"
    assert victim not in serve_replicas() and len(serve_replicas()) == 2


async def test_sigterm_lets_the_request_under_way_finish_then_exits_0(replicas):
    async with httpx.AsyncClient(base_url=replicas.base_url, timeout=WAIT_S) as client:
        whole = await client.post("/v1/audio/speech", json={**SPEECH, "max_new_tokens": 300})  # what it must get
        async with client.stream("POST", "/v1/audio/speech", json={**SPEECH, "max_new_tokens": 300, "stream": True}) as response:
            assert response.status_code == 200
            chunks = response.aiter_raw()
            audio = await anext(chunks)  # under way
            replicas.signal(signal.SIGTERM)
            async for chunk in chunks:
                audio += chunk
    assert complete(whole) and len(audio) == len(whole.content)  # finished, not cut
    assert await asyncio.to_thread(replicas.wait, WAIT_S) == 0
    assert serve_replicas() == {}


@pytest.mark.parametrize("path", ["deploy/serve.yaml", "deploy/kubernetes/rayservice.yaml"])
def test_the_shipped_ray_serve_configs_are_valid_for_ray_and_for_the_server(path):
    config = yaml.safe_load((ROOT / path).read_text())
    if config.get("kind") == "RayService":
        config = yaml.safe_load(config["spec"]["serveConfigV2"])
    [app] = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == "server.replicas:build_application" and app.route_prefix == "/"
    settings = ServerSettings(**app.args)  # an unknown or misspelt setting fails here
    assert settings.replicas >= 1 and settings.max_replicas >= settings.replicas
    options = deployment_options(settings, gpus=True)
    assert options["ray_actor_options"] == {"num_gpus": 1}
    assert options["autoscaling_config"]["max_replicas"] == settings.max_replicas
