"""The HTTP server through its real ASGI app: every route, every error answer, streaming and cancellation.

Requests go through httpx's ASGITransport, which hands back a response once it is complete; the tests
that look at timing or disconnect a client call the ASGI app directly instead.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import threading
import time

import av
import pytest
from support.asgi import SHORT, SPEECH, V1, V2, FakeSynth, call_asgi, serve, wait_ready
from support.wav import wav_samples

from orpheus_local.audio.crossfade import CROSSFADE_SAMPLES
from orpheus_local.audio.encoders import FORMATS
from orpheus_local.params import DEFAULT_VOICE, VOICES, SynthesisParams
from orpheus_local.text.split import part_chars, split_text
from orpheus_local.tokens import SAMPLES_PER_FRAME
from orpheus_local.weights.checkpoint import CheckpointError
from server.openai_names import OPENAI_VOICES

DOCUMENTED = {
    "text": "Today has been... exhausting. <sigh> I need a nap.",
    "voice": "tara",
    "temperature": 0.6,
    "top_p": 0.95,
    "max_new_tokens": 100,
    "repetition_penalty": 1.1,
}


def assert_whole_frames(samples: int) -> None:
    assert samples > 0 and samples % SAMPLES_PER_FRAME == 0, samples




async def wait_idle(synth, timeout: float) -> None:
    """Wait until the synthesizer has nothing running or queued."""
    deadline = time.monotonic() + timeout
    while (stats := synth.stats())["queued"] or stats["running"]:
        assert time.monotonic() < deadline, f"still busy after {timeout} s: {stats}"
        await asyncio.sleep(0.02)


# --- Segmind v1 ------------------------------------------------------------------------------


async def test_documented_request_returns_a_wav(synthesizer):
    async with serve(synthesizer, remaining_credits="42.5") as (client, _):
        response = await client.post(V1, json={**DOCUMENTED, "seed": 1})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-remaining-credits"] == "42.5"
    assert len(response.headers["x-request-id"]) == 32
    assert float(response.headers["x-generation-time"]) > 0
    # 100 tokens speak at most 16 characters a part: the text is split, every part cut at 14 frames
    # (the demo model never says end_of_speech), joined with crossfades.
    parts = len(split_text(DOCUMENTED["text"], part_chars(DOCUMENTED["max_new_tokens"])))
    assert parts == 5
    assert wav_samples(response.content) == parts * 14 * SAMPLES_PER_FRAME - (parts - 1) * CROSSFADE_SAMPLES


async def test_multipart_body_with_numeric_strings_and_unknown_fields(synthesizer):
    form = {"text": "Hi there.", "voice": "tara", "temperature": "0.6", "top_p": "0.95",
            "max_new_tokens": "100", "repetition_penalty": "1.1", "seed": "1", "style": "ignored"}
    async with serve(synthesizer) as (client, _):
        # a file part makes httpx send multipart/form-data; files are not fields and are ignored
        response = await client.post(V1, data=form, files={"attachment": ("a.txt", b"unused")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert_whole_frames(wav_samples(response.content))


async def test_streamed_wav(synthesizer):
    async with serve(synthesizer) as (_, app):
        status, headers, chunks = await call_asgi(app, V1, {**SHORT, "stream": True})
    assert status == 200
    assert headers["content-type"] == "audio/wav"
    assert "content-length" not in headers and "x-generation-time" not in headers
    assert headers["x-remaining-credits"] == "1000" and headers["x-request-id"]
    data = b"".join(chunk for _, chunk in chunks)
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert data[4:8] == data[40:44] == b"\xff\xff\xff\xff"  # lengths unknown while streaming
    assert_whole_frames((len(data) - 44) // 2)
    assert len(chunks) >= 2  # the first decoded window leaves on its own


async def test_streamed_audio_leaves_while_the_generation_goes_on():
    synth = FakeSynth(wait=True)  # one chunk of audio, then nothing until released
    generating_when_sent = []

    def release_after_the_first_audio(message):
        if message.get("body"):
            generating_when_sent.append(not synth.release.is_set())
            synth.release.set()

    async with serve(synth) as (_, app):
        status, _, chunks = await call_asgi(app, V1, {**SHORT, "stream": True}, on_send=release_after_the_first_audio)
    assert status == 200 and generating_when_sent[0]  # the first audio left before the generation could end
    (_, data), = chunks
    assert len(data) == 44 + 2 * SAMPLES_PER_FRAME


# Finishing 2000 tokens takes several seconds on a CPU; a cancelled generation stops within a step.
CANCELLED_WITHIN_S = 2.0


async def test_stream_disconnect_cancels_the_generation(synthesizer):
    async with serve(synthesizer) as (_, app):
        status, _, chunks = await call_asgi(
            app, V1, {**SHORT, "max_new_tokens": 2000, "stream": True},
            disconnect_when=lambda message: bool(message.get("body")),
        )
        assert status == 200 and len(chunks) == 1
        await wait_idle(synthesizer, timeout=CANCELLED_WITHIN_S)
        assert app.state.server.admission.count == 0


async def test_disconnect_while_waiting_for_a_whole_file_cancels_it(synthesizer):
    async with serve(synthesizer) as (_, app):
        status, _, _ = await call_asgi(app, V1, {**SHORT, "max_new_tokens": 2000}, disconnect_after=0.5)
        assert status is None  # nobody left to answer
        await wait_idle(synthesizer, timeout=CANCELLED_WITHIN_S)
        assert app.state.server.admission.count == 0
        registry = app.state.server.metrics.registry
        assert registry.get_sample_value("orpheus_http_requests_total", {"route": V1, "status": "499"}) == 1


# --- Segmind v2 ------------------------------------------------------------------------------


async def test_v2_job_goes_from_queued_to_completed_and_serves_its_audio(synthesizer):
    base = "http://tts.example:8123"
    async with serve(synthesizer, base_url=base) as (client, _):
        submitted = await client.post(V2, json=SHORT)
        assert submitted.status_code == 200, submitted.text
        job = submitted.json()
        job_id = job["request_id"]
        assert job["status"] == "QUEUED"
        assert len(job_id) >= 22  # secrets.token_urlsafe(16)
        assert job["status_url"] == job["poll_url"] == f"{base}/v2/requests/{job_id}/status"
        assert job["response_url"] == f"{base}/v2/requests/{job_id}"

        deadline = time.monotonic() + 60
        while True:
            status = await client.get(job["status_url"])
            assert status.status_code == 200
            body = status.json()
            assert body["request_id"] == job_id and body["response_url"] == job["response_url"]
            assert set(body["metrics"]) == {"queue_time", "inference_time", "total_time"}
            if body["status"] == "COMPLETED":
                break
            assert body["status"] in ("QUEUED", "PROCESSING") and time.monotonic() < deadline
            await asyncio.sleep(0.05)

        result = await client.get(job["response_url"])
        assert result.status_code == 200
        body = result.json()
        assert body["status"] == "COMPLETED" and body["request_id"] == job_id
        assert body["output"] == f"{base}/v2/requests/{job_id}/output.wav"
        metrics = body["metrics"]
        assert metrics["total_time"] > 0
        assert metrics["total_time"] >= max(metrics["inference_time"], metrics["queue_time"])

        assert (await client.get(f"/v1/requests/{job_id}")).json() == body

        audio = await client.get(body["output"])
        assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
        assert_whole_frames(wav_samples(audio.content))


async def test_v2_result_is_forgotten_after_its_time(synthesizer):
    async with serve(FakeSynth(), job_ttl_s=3600) as (client, app):
        job = (await client.post(V2, json=SHORT)).json()
        jobs = app.state.server.jobs
        await jobs.get(job["request_id"]).task
        assert (await client.get(job["response_url"])).json()["status"] == "COMPLETED"
        real_clock = jobs.clock
        jobs.clock = lambda: real_clock() + 3601
        for url in (job["status_url"], job["response_url"], f"/v2/requests/{job['request_id']}/output.wav"):
            response = await client.get(url)
            assert response.status_code == 404
            assert response.json() == {"error": f"request {job['request_id']} not found (results are kept 1 h)"}


async def test_v2_failed_job_answers_422_without_internals():
    async with serve(FakeSynth(error=RuntimeError("secret internals"))) as (client, app):
        job = (await client.post(V2, json=SHORT)).json()
        await app.state.server.jobs.get(job["request_id"]).task
        for url in (job["status_url"], job["response_url"]):
            response = await client.get(url)
            assert response.status_code == 422
            body = response.json()
            assert body["status"] == "FAILED"
            assert body["error"] == f"generation failed (request {job['request_id']})"
            assert "secret" not in response.text and "Traceback" not in response.text
        assert app.state.server.admission.count == 0


async def test_v2_job_store_is_bounded():
    synth = FakeSynth(wait=True)
    async with serve(synth, max_jobs=1) as (client, _):
        assert (await client.post(V2, json=SHORT)).status_code == 200
        refused = await client.post(V2, json=SHORT)
        synth.release.set()
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"error": "too many requests: 1 jobs are stored; retry shortly"}


async def test_unknown_job_is_404():
    async with serve(FakeSynth()) as (client, _):
        for url in ("/v2/requests/nope/status", "/v2/requests/nope", "/v1/requests/nope", "/v2/requests/nope/output.wav"):
            response = await client.get(url)
            assert response.status_code == 404
            assert response.json() == {"error": "request nope not found (results are kept 1 h)"}


# --- OpenAI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_speech_in_every_format_decodes_at_its_rate(synthesizer, fmt):
    async with serve(synthesizer) as (client, _):
        response = await client.post(SPEECH, json={
            "model": "tts-1", "input": "Hello there.", "voice": "tara", "response_format": fmt,
            "max_new_tokens": 100, "seed": 1,
        })
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == FORMATS[fmt].content_type
    assert response.headers["x-request-id"]
    raw = {"format": "s16le", "options": {"sample_rate": "24000", "ch_layout": "mono"}} if fmt == "pcm" else {}
    with av.open(io.BytesIO(response.content), **raw) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        assert stream.sample_rate == (48000 if fmt == "opus" else 24000)
        assert stream.channels == 1
    assert samples > 0


async def test_speech_default_format_is_mp3_and_speed_reaches_the_encoder():
    synth = FakeSynth(chunks=8)  # 8 frames of 2048 samples
    async with serve(synth) as (client, _):
        default = await client.post(SPEECH, json={"input": "Hi."})
        assert default.status_code == 200 and default.headers["content-type"] == "audio/mpeg"
        fast = await client.post(SPEECH, json={"input": "Hi.", "response_format": "pcm", "speed": 2.0})
    assert fast.status_code == 200
    samples = len(fast.content) // 2
    assert abs(samples - 8 * SAMPLES_PER_FRAME / 2) < 0.05 * 8 * SAMPLES_PER_FRAME


async def test_speech_as_server_sent_events(synthesizer):
    async with serve(synthesizer) as (client, _):
        response = await client.post(SPEECH, json={
            "input": "Hello there.", "voice": "tara", "response_format": "pcm", "stream_format": "sse",
            "max_new_tokens": 100, "seed": 1,
        })
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in response.text.split("\n\n") if line]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1] == {"type": "speech.audio.done"}
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_whole_frames(len(pcm) // 2)


async def test_voices_and_models():
    async with serve(FakeSynth()) as (client, _):
        voices = await client.get("/v1/audio/voices")
        models = await client.get("/v1/models")
    assert voices.json() == {"voices": list(VOICES), "default": DEFAULT_VOICE, "openai_voices": OPENAI_VOICES,
                             "cloning": False, "cloned_voices": []}
    body = models.json()
    assert body["object"] == "list"
    assert {m["id"] for m in body["data"]} == {"orpheus-3b-0.1", "orpheus", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"}
    assert all(m["object"] == "model" for m in body["data"])


@pytest.mark.parametrize("payload, status, param, message", [
    ({}, 400, "input", "input: is required"),
    ({"input": ""}, 400, "input", "input: must not be empty"),
    ({"input": "Hi", "voice": "bob"}, 400, "voice", "voice: unknown voice 'bob'"),
    ({"input": "Hi", "speed": 4.5}, 400, "speed", "speed: Input should be less than or equal to 4"),
    ({"input": "Hi", "response_format": "ogg"}, 400, "response_format", "response_format: Input should be"),
    ({"input": "Hi", "stream_format": "chunks"}, 400, "stream_format", "stream_format: Input should be"),
    ({"input": "Hi", "temperature": 0}, 400, "temperature", "temperature: Input should be greater than"),
    ({"input": "Hi", "model": "gpt-5-tts"}, 404, "model", "model 'gpt-5-tts' not found"),
])
async def test_speech_errors_use_openai_shape(payload, status, param, message):
    async with serve(FakeSynth()) as (client, _):
        response = await client.post(SPEECH, json=payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith(message) and error["param"] == param
    assert error["type"] == "invalid_request_error"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload, message", [
    ({}, "text: is required"),
    ({"text": ""}, "text: must not be empty"),
    ({"text": "   "}, "text: must not be empty"),
    ({"text": 12}, "text: Input should be a valid string"),
    ({"text": "Hi", "voice": "bob"}, "voice: unknown voice 'bob'"),
    ({"text": "Hi", "temperature": 1.6}, "temperature: Input should be less than or equal to 1.5"),
    ({"text": "Hi", "temperature": "hot"}, "temperature: Input should be a valid number"),
    ({"text": "Hi", "temperature": True}, "temperature: Value error, must be a number, not a boolean"),
    ({"text": "Hi", "top_p": 0.05}, "top_p: Input should be greater than or equal to 0.1"),
    ({"text": "Hi", "max_new_tokens": 99}, "max_new_tokens: Input should be greater than or equal to 100"),
    ({"text": "Hi", "max_new_tokens": 150.5}, "max_new_tokens: Input should be a valid integer"),
    ({"text": "Hi", "repetition_penalty": 2.5}, "repetition_penalty: Input should be less than or equal to 2"),
    ({"text": "Hi", "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"text": "Hi", "stream": "perhaps"}, "stream: Input should be a valid boolean"),
])
async def test_bad_values_are_400_naming_the_field(payload, message):
    async with serve(FakeSynth()) as (client, _):
        for path in (V1, V2):
            response = await client.post(path, json=payload)
            assert response.status_code == 400
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"].startswith(message), response.json()


@pytest.mark.parametrize("content, message", [
    (b'{"text": "Hi",', "malformed JSON body: "),
    (b'["Hi"]', "the JSON body must be an object"),
    (b"\xff\xfe", "malformed JSON body: "),
])
async def test_malformed_json_is_400(content, message):
    async with serve(FakeSynth()) as (client, _):
        response = await client.post(V1, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


async def test_malformed_multipart_is_400():
    async with serve(FakeSynth()) as (client, _):
        response = await client.post(V1, content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed multipart body")


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
async def test_other_content_types_are_415_and_406_on_segmind_routes_as_segmind_documents(content_type):
    headers = {"content-type": content_type} if content_type else {}
    async with serve(FakeSynth()) as (client, _):
        segmind = await client.post(V1, content=b"text=Hi", headers=headers)
        openai = await client.post(SPEECH, content=b"input=Hi", headers=headers)
    assert segmind.status_code == 406 and openai.status_code == 415
    assert segmind.json()["error"].startswith("Content-Type must be application/json or multipart/form-data")
    assert openai.json()["error"]["message"].startswith("Content-Type must be application/json or multipart/form-data")


async def test_json_with_charset_is_accepted():
    async with serve(FakeSynth()) as (client, _):
        response = await client.post(V1, content=json.dumps(SHORT), headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200


async def test_body_over_the_limit_is_413_by_length_and_by_bytes_read():
    big = json.dumps({"text": "x" * 2000}).encode()

    async def chunked():  # no Content-Length: only counting the bytes can catch it
        for i in range(0, len(big), 100):
            yield big[i:i + 100]

    async with serve(FakeSynth(), max_body_bytes=1000) as (client, _):
        by_length = await client.post(V1, content=big, headers={"content-type": "application/json"})
        by_bytes = await client.post(V1, content=chunked(), headers={"content-type": "application/json"})
        assert "content-length" not in by_bytes.request.headers
        small = await client.post(V1, json=SHORT)
    for response in (by_length, by_bytes):
        assert response.status_code == 413
        assert response.json() == {"error": "request body larger than 1000 bytes"}
    assert small.status_code == 200


async def test_unknown_model_slug_is_404_and_unknown_path_too():
    async with serve(FakeSynth()) as (client, _):
        for path in ("/v1/orpheus-3b-0.2", "/v2/kokoro"):
            response = await client.post(path, json=SHORT)
            assert response.status_code == 404
            slug = path.rsplit("/", 1)[1]
            assert response.json() == {"error": f"model '{slug}' not found; this server serves orpheus-3b-0.1"}
        missing = await client.get("/nothing/here")
    assert missing.status_code == 404 and missing.json() == {"error": "not found"}


async def test_wrong_method_is_405():
    async with serve(FakeSynth()) as (client, _):
        response = await client.get(V1)
        openai = await client.delete(SPEECH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {"error": "method GET not allowed"}
    assert openai.status_code == 405 and openai.json()["error"]["message"] == "method DELETE not allowed"


async def test_too_many_in_flight_is_429_with_retry_after():
    synth = FakeSynth(wait=True)
    async with serve(synth, max_in_flight=1) as (client, app):
        first = asyncio.create_task(client.post(V1, json=SHORT))
        await synth.started.wait()
        refused = [await client.post(V1, json=SHORT),
                   await client.post(V1, json={**SHORT, "stream": True}),
                   await client.post(V2, json=SHORT),
                   await client.post(SPEECH, json={"input": "Hi"})]
        synth.release.set()
        assert (await first).status_code == 200
        assert app.state.server.admission.count == 0
    for response in refused:
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
    assert refused[0].json() == {"error": "too many requests: 1 requests are already in flight; retry shortly"}
    assert refused[3].json()["error"]["type"] == "requests"


async def test_full_engine_queue_is_429(demo_config):
    from orpheus_local.pipeline.synthesizer import Synthesizer

    synth = Synthesizer.load(dataclasses.replace(demo_config, backend="engine", max_slots=1, max_queue=1))
    try:
        running = synth.stream_ids(SynthesisParams(text="Busy.", max_new_tokens=2000, seed=1), ignore_eos=True)
        await anext(running)  # holds the only slot
        waiting = synth.submit_ids(SynthesisParams(text="Waiting.", seed=2))  # holds the only queue place
        async with serve(synth) as (client, app):
            response = await client.post(V1, json=SHORT)
            streamed = await client.post(V1, json={**SHORT, "stream": True})
            assert app.state.server.admission.count == 0
        waiting.cancel()
        await running.aclose()
    finally:
        synth.close()
    for r in (response, streamed):
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": "too many requests: the generation queue is full; retry shortly"}


async def test_a_failure_after_the_first_streamed_byte_cuts_the_stream_and_is_logged(caplog):
    messages = []
    async with serve(FakeSynth(error=RuntimeError("secret internals"), fail_after=True)) as (_, app):
        with pytest.raises(Exception):  # the server can only drop the connection now
            await call_asgi(app, V1, {**SHORT, "stream": True}, on_send=messages.append)
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert messages[0]["status"] == 200 and bodies and all(m.get("more_body") for m in bodies)  # never completed
    request_id = dict(messages[0]["headers"])[b"x-request-id"].decode()
    assert f"generation of request {request_id} failed" in caplog.text and "secret internals" in caplog.text


async def test_generation_failure_is_500_with_request_id_and_no_trace(caplog):
    async with serve(FakeSynth(error=RuntimeError("secret internals"))) as (client, _):
        responses = [await client.post(V1, json=SHORT), await client.post(V1, json={**SHORT, "stream": True}),
                     await client.post(SPEECH, json={"input": "Hi"})]
    for response in responses:
        assert response.status_code == 500
        assert f"generation failed (request {response.headers['x-request-id']})" in response.text
        assert "secret" not in response.text and "Traceback" not in response.text
    assert responses[0].json() == {"error": f"generation failed (request {responses[0].headers['x-request-id']})"}
    assert responses[2].json()["error"]["type"] == "server_error"
    assert "secret internals" in caplog.text  # the operator still sees the cause


async def test_not_ready_while_loading_then_ready(synthesizer):
    loaded = threading.Event()

    def load():
        loaded.wait(30)
        return synthesizer

    async with serve(load, warmup=True) as (client, app):
        health = await client.get("/health")
        ready = await client.get("/ready")
        refused = [await client.post(V1, json=SHORT), await client.post(SPEECH, json={"input": "Hi"})]
        loaded.set()
        await wait_ready(app)
        assert (await client.get("/ready")).json() == {"status": "ready"}
        assert app.state.server.owns_synth
        app.state.server.owns_synth = False  # the session fixture closes it
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
    assert ready.json() == {"status": "loading"}
    for response in refused:
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert refused[0].json() == {"error": "the model is still loading; retry shortly"}


async def test_load_failure_is_reported():
    failures = []

    def load():
        raise CheckpointError("Orpheus model not found at /nowhere.")

    async with serve(load, on_load_error=failures.append) as (client, _):
        while not failures:
            await asyncio.sleep(0.01)
        ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "failed", "error": "Orpheus model not found at /nowhere."}
    assert isinstance(failures[0], CheckpointError)


# --- auth ------------------------------------------------------------------------------------


async def test_api_keys(tmp_path, caplog):
    keys = tmp_path / "keys"
    keys.write_text("# local clients\nkey-one\n\n  key-two  # the bench\n")
    caplog.set_level(logging.DEBUG)
    async with serve(FakeSynth(), api_keys_file=keys) as (client, _):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        missing = [await client.post(V1, json=SHORT), await client.get("/metrics"), await client.get("/v1/models"),
                   await client.get("/openapi.json"), await client.get("/v2/requests/x/status")]
        wrong = [await client.post(V1, json=SHORT, headers={"x-api-key": "key-three"}),
                 await client.post(V1, json=SHORT, headers={"authorization": "Bearer key-on"})]
        openai = await client.post(SPEECH, json={"input": "Hi"}, headers={"authorization": "Basic key-one"})
        allowed = [await client.post(V1, json=SHORT, headers={"x-api-key": "key-one"}),
                   await client.post(V1, json=SHORT, headers={"authorization": "Bearer key-two"}),
                   await client.get("/metrics", headers={"authorization": "bearer key-two"})]
    for response in missing:
        assert response.status_code == 401
        error = response.json()["error"]  # OpenAI's shape under /v1/models, Segmind's elsewhere
        assert error == "Missing Authorization or x-api-key in header" or (
            error["message"] == "Missing Authorization or x-api-key in header" and error["code"] == "missing_api_key")
    for response in wrong:
        assert response.status_code == 401
        assert response.json() == {"error": "Unauthorized. API key is invalid or may have expired"}
    assert openai.status_code == 401
    assert openai.json()["error"]["message"] == "Missing Authorization or x-api-key in header"
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert "key-one" not in caplog.text and "key-two" not in caplog.text and "key-three" not in caplog.text
    assert "API keys required" in caplog.text


async def test_open_server_says_so(caplog):
    async with serve(FakeSynth()) as (client, _):
        assert (await client.get("/v1/models")).status_code == 200
    assert "no API keys configured: the server is open" in caplog.text


# --- operations ------------------------------------------------------------------------------


async def test_metrics():
    async with serve(FakeSynth(chunks=3)) as (client, _):
        assert (await client.post(V1, json=SHORT)).status_code == 200
        assert (await client.post(V1, json={"text": ""})).status_code == 400
        response = await client.get("/metrics")
        async with serve(FakeSynth()) as (other, _):
            other_text = (await other.get("/metrics")).text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'orpheus_http_requests_total{route="/v1/orpheus-3b-0.1",status="200"} 1.0' in text
    assert 'orpheus_http_requests_total{route="/v1/orpheus-3b-0.1",status="400"} 1.0' in text
    assert "orpheus_time_to_first_audio_seconds_count 1.0" in text
    assert "orpheus_generation_seconds_count 1.0" in text
    assert f"orpheus_audio_seconds_total {3 * SAMPLES_PER_FRAME / 24000}" in text
    assert "orpheus_requests_in_flight 0.0" in text and "orpheus_requests_queued 0.0" in text
    # a registry per app: the other app counted nothing of the first one's
    assert "orpheus_time_to_first_audio_seconds_count 0.0" in other_text
    assert 'route="/v1/orpheus-3b-0.1"' not in other_text


async def test_openapi_document_lists_every_route():
    async with serve(FakeSynth()) as (client, _):
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {path: set(ops) for path, ops in document["paths"].items()} == {
        "/v1/orpheus-3b-0.1": {"post"},
        "/v2/orpheus-3b-0.1": {"post"},
        "/v2/requests/{request_id}/status": {"get"},
        "/v2/requests/{request_id}": {"get", "delete"},
        "/v1/requests/{request_id}": {"get"},
        "/v2/requests/{request_id}/output.wav": {"get"},
        "/v1/audio/speech": {"post"},
        "/v1/audio/voices": {"get", "post"},
        "/v1/audio/voices/{name}": {"delete"},
        "/v1/models": {"get"},
        "/health": {"get"},
        "/ready": {"get"},
        "/metrics": {"get"},
    }
    body = document["paths"][SPEECH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["input"] and "speed" in body["properties"]
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


@pytest.mark.parametrize("body,message", [
    ('{"text": "Hi", "temperature": NaN}', "temperature: Value error, must be a finite number"),
    ('{"text": "Hi", "top_p": Infinity}', "top_p: Value error, must be a finite number"),
    ('{"text": "Hi", "max_new_tokens": %s}' % ("9" * 5000), "malformed JSON body: an integer of 5000 digits is out of range"),
])
async def test_careless_numbers_get_a_400_in_plain_words(body, message):
    async with serve(FakeSynth()) as (client, _):
        response = await client.post(V1, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == message
    assert "sys." not in response.text and "Python" not in response.text


async def test_multipart_nan_is_not_a_finite_number():
    async with serve(FakeSynth()) as (client, _):
        response = await client.post(V1, data={"text": "Hi", "temperature": "nan"},
                                     files={"attachment": ("a.txt", b"unused")})
    assert response.status_code == 400 and response.json()["error"] == "temperature: Value error, must be a finite number"


async def test_probes_answer_head_for_load_balancers():
    async with serve(FakeSynth()) as (client, _):
        health, ready = await client.head("/health"), await client.head("/ready")
    assert health.status_code == ready.status_code == 200


async def test_an_unknown_job_id_is_echoed_no_longer_than_an_id():
    async with serve(FakeSynth()) as (client, _):
        response = await client.get("/v2/requests/" + "x" * 50_000 + "/status")
    assert response.status_code == 404 and len(response.content) < 200
    assert response.json()["error"] == f"request {'x' * 64}... not found (results are kept 1 h)"
