"""Faults, through the real app and engine: clients that leave mid-stream, a generation that fails,
a full engine queue and a flood of v2 jobs. (SIGTERM under load: tests/test_load.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from soak.loadgen import parse_metrics
from support.asgi import SHORT, V1, V2, FakeSynth, call_asgi, serve
from support.wav import wav_samples

from orpheus_local.engine.stream import TokenStream
from orpheus_local.pipeline.synthesizer import Synthesizer

LONG = {"text": "This sentence is long enough that speaking it would take the engine a good many decode "
                "steps, so that a client leaving early has plenty left to cancel.",
        "voice": "tara", "max_new_tokens": 2000, "seed": 3}
POISON = "This request is the one that fails."


def engine_of(synth):
    """The EngineCore the synthesizer's driver steps."""
    if not hasattr(synth.backend, "core"):
        pytest.skip("needs the batched engine backend")
    return synth.backend.core


async def metrics_of(client) -> dict[str, float]:
    return parse_metrics((await client.get("/metrics")).text)


async def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.01)


async def test_a_client_gone_mid_stream_frees_its_slot_at_the_next_engine_step(synthesizer, monkeypatch):
    engine = engine_of(synthesizer)
    cancelled_at, released_at = {}, {}
    cancel, release, step = TokenStream.cancel, engine.scheduler.release, engine.step
    steps = [0]

    def counted_step():
        steps[0] += 1
        return step()

    def cancel_noting_the_step(stream):
        cancelled_at.setdefault(stream.request_id, steps[0])
        cancel(stream)

    def release_noting_the_step(request, status):
        released_at[request.request_id] = (steps[0], status.value)
        release(request, status)

    monkeypatch.setattr(engine, "step", counted_step)
    monkeypatch.setattr(TokenStream, "cancel", cancel_noting_the_step)
    monkeypatch.setattr(engine.scheduler, "release", release_noting_the_step)
    async with serve(synthesizer) as (client, app):
        staying = asyncio.create_task(client.post(V1, json={**SHORT, "max_new_tokens": 100}))
        status, headers, chunks = await call_asgi(app, V1, {**LONG, "stream": True},
                                                  disconnect_when=lambda message: bool(message.get("body")))
        request_id = headers["x-request-id"]

        async def released() -> bool:
            return request_id in released_at

        await until(released, 2.0, "the slot freed")
        stayed = await staying
        after = await metrics_of(client)
    assert status == 200 and len(chunks) == 1
    step, how = released_at[request_id]
    print(f"\nclient gone mid-stream: slot freed {step - cancelled_at[request_id]} step(s) after the cancel")
    assert how == "cancelled" and step - cancelled_at[request_id] <= 1  # the step under way, then freed
    assert stayed.status_code == 200 and wav_samples(stayed.content) > 0  # its neighbour carried on
    assert after["orpheus_requests_in_flight"] == after["orpheus_requests_running"] == 0


@pytest.mark.parametrize("where", ["prefill", "token"])
async def test_a_failing_generation_fails_alone_with_its_request_id(synthesizer, monkeypatch, caplog, where):
    engine = engine_of(synthesizer)

    def poisoned(requests) -> bool:
        return any(r.params.text == POISON for r in requests)

    if where == "prefill":  # the failure of one admission batch
        prefill = engine.runner.prefill

        def failing_prefill(requests):
            if poisoned(requests):
                raise RuntimeError("injected prefill failure")
            return prefill(requests)

        monkeypatch.setattr(engine.runner, "prefill", failing_prefill)
    else:  # the failure of one request inside a decode batch it shares with the others
        class FailingIds(list):
            def append(self, token):
                if len(self) == 3:  # before any audio
                    raise RuntimeError("injected token failure")
                super().append(token)

        prefill = engine.runner.prefill

        def poisoning_prefill(requests):
            for request in requests:
                if poisoned([request]):  # its ids fail while the engine routes a decode step's ids
                    request.generated = FailingIds(request.generated)
            return prefill(requests)

        monkeypatch.setattr(engine.runner, "prefill", poisoning_prefill)

    async with serve(synthesizer) as (client, app):
        others = [asyncio.create_task(client.post(V1, json={**SHORT, "seed": seed, "max_new_tokens": 200}))
                  for seed in range(3)]
        await until(lambda: _running(synthesizer, 3), 10, "three generations running")
        # max_new_tokens high enough for the text to be one part (it fails before any audio anyway)
        failed = await client.post(V1, json={**SHORT, "text": POISON, "max_new_tokens": 2000})
        streamed = await client.post(V1, json={**SHORT, "text": POISON, "max_new_tokens": 2000, "stream": True})
        completed = await asyncio.gather(*others)
        assert app.state.server.admission.count == 0
    print(f"\nfailure at {where}: {failed.status_code} and {streamed.status_code} (streamed) for the failing "
          f"request, {[r.status_code for r in completed]} for the three beside it")
    for response in (failed, streamed):
        request_id = response.headers["x-request-id"]
        assert response.status_code == 500
        assert response.json() == {"error": f"generation failed (request {request_id})"}
    assert [r.status_code for r in completed] == [200, 200, 200]
    assert all(wav_samples(r.content) > 0 for r in completed)
    assert f"injected {where} failure" in caplog.text  # the cause stays in the log


async def _running(synth, n: int) -> bool:
    return synth.stats()["running"] >= n


@pytest.fixture(scope="module")
def one_slot_synth(demo_config):
    synth = Synthesizer.load(dataclasses.replace(demo_config, max_slots=1, max_queue=1))
    yield synth
    synth.close()


async def test_a_full_engine_queue_answers_429_at_once_while_the_others_wait(one_slot_synth):
    # How long the event loop stalls meanwhile is measured by bench/event_loop.py, not here.
    async with serve(one_slot_synth, max_in_flight=100) as (client, app):
        leave = asyncio.Event()
        holder = asyncio.create_task(call_asgi(app, V1, {**LONG, "stream": True},
                                               disconnect_when=lambda message: leave.is_set()))
        await until(lambda: _running(one_slot_synth, 1), 10, "the slot taken")
        waiting = asyncio.create_task(client.post(V1, json=SHORT))
        await until(lambda: _queued(one_slot_synth, 1), 10, "the queue filled")
        refused = await asyncio.gather(*(client.post(V1, json=SHORT) for _ in range(5)),
                                       client.post("/v1/audio/speech", json={"input": "Hi.", "max_new_tokens": 100}))
        still_full = not waiting.done() and not holder.done()  # answered without waiting for a place
        health = await client.get("/health")
        leave.set()
        served = await waiting
        await holder
        assert app.state.server.admission.count == 0
    assert [r.status_code for r in refused] == [429] * 6 and still_full
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert refused[0].json() == {"error": "too many requests: the generation queue is full; retry shortly"}
    assert refused[-1].json()["error"]["type"] == "requests"
    assert health.status_code == 200 and served.status_code == 200


async def _queued(synth, n: int) -> bool:
    return synth.stats()["queued"] >= n


async def test_the_v2_job_store_evicts_expired_results_and_stays_bounded_under_a_flood():
    async with serve(FakeSynth(), max_jobs=50, job_ttl_s=60, max_in_flight=10_000) as (client, app):
        jobs = app.state.server.jobs

        async def flood() -> list:
            return await asyncio.gather(*(client.post(V2, json=SHORT) for _ in range(300)))

        first = await flood()
        accepted = [r.json()["request_id"] for r in first if r.status_code == 200]
        await asyncio.gather(*(jobs.get(job_id).task for job_id in accepted))
        stored_after_first = len(jobs._jobs)
        again_too_soon = await client.post(V2, json=SHORT)

        real_clock = jobs.clock
        jobs.clock = lambda: real_clock() + 61  # every result now older than its time to live
        second = await flood()
        forgotten = await client.get(f"/v2/requests/{accepted[0]}/status")
        stored_after_second = len(jobs._jobs)
    print(f"\nv2 flood: {len(first) + len(second)} submissions, stored {stored_after_first} then "
          f"{stored_after_second}; refused {sum(r.status_code == 429 for r in first + second)} with 429")
    assert [r.status_code for r in first].count(200) == 50 and len(first) == 300
    assert {r.status_code for r in first} == {200, 429}
    # Refused while all 50 were generating: retry shortly; once some had finished: when the oldest expires.
    assert all((r.json(), r.headers["retry-after"]) in (
        ({"error": "too many requests: 50 jobs are stored; retry shortly"}, "1"),
        ({"error": "too many requests: 50 jobs are stored; retry in 60 s"}, "60"))
        for r in first if r.status_code == 429)
    assert stored_after_first == 50 and again_too_soon.status_code == 429
    assert again_too_soon.headers["retry-after"] == "60"  # every result finished: the first expires in 60 s
    assert [r.status_code for r in second].count(200) == 50 and stored_after_second == 50
    assert forgotten.status_code == 404
