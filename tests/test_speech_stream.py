"""WS /v1/audio/speech/stream against real uvicorn over loopback, with the demo model and the
`websockets` client: sentences spoken as they complete, in order; barge-in; bad messages; keys;
limits; a client that never reads."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time

import httpx
import pytest
import websockets
from support.uvicorn_thread import call_in_loop, uvicorn_in_thread
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from orpheus_local.tokens import SAMPLES_PER_FRAME
from server.speech_session import ROUTE

WAIT_S = 60
SHORT = {"type": "session.update", "max_new_tokens": 100, "seed": 7}  # 14 frames a sentence at most


def url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}{ROUTE}{query}"


async def send(ws, kind: str, **fields) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


async def type_text(ws, text: str, rng: random.Random) -> None:
    """text in pieces of 1 to 3 characters, as an LLM's tokens come."""
    i = 0
    while i < len(text):
        n = rng.randint(1, 3)
        await send(ws, "input_text.append", text=text[i:i + n])
        i += n


async def next_event(ws, audio: list[bytes] | None = None) -> dict:
    """The next JSON event; binary frames before it go to audio (an error if there is nowhere to put them)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), WAIT_S)
        if isinstance(message, bytes):
            assert audio is not None, "audio where none was expected"
            audio.append(message)
        else:
            return json.loads(message)


async def utterances_until_closed(ws) -> list[tuple[dict, bytes, dict]]:
    """(speech.started, its audio, speech.done) for each utterance, until session.closed."""
    spoken = []
    while (event := await next_event(ws))["type"] != "session.closed":
        assert event["type"] == "speech.started", event
        audio: list[bytes] = []
        done = await next_event(ws, audio)
        assert done["type"] == "speech.done" and done["utterance_id"] == event["utterance_id"], done
        spoken.append((event, b"".join(audio), done))
    return spoken


async def http_stream_samples(port: int, text: str) -> int:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client:
        response = await client.post("/v1/audio/speech", json={
            "input": text, "response_format": "pcm", "max_new_tokens": 100, "seed": 7})
    assert response.status_code == 200
    return len(response.content) // 2


def running(app, loop) -> int:
    return call_in_loop(loop, lambda: app.state.server.synth.stats()["running"])


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        time.sleep(0.05)


async def test_sentences_typed_a_few_characters_at_a_time_are_spoken_as_each_completes(synthesizer):
    first, second = "Hi there. ", "How are you?"
    with uvicorn_in_thread(synthesizer) as (_, port, _loop):
        async with websockets.connect(url(port)) as ws:
            await ws.send(json.dumps(SHORT))
            await type_text(ws, first, random.Random(1))
            started = await next_event(ws)  # before any of the second sentence was sent
            assert started == {"type": "speech.started", "utterance_id": started["utterance_id"],
                               "text": "Hi there."}
            await type_text(ws, second, random.Random(2))
            await send(ws, "session.close")  # the second has no sentence end after it: close speaks it
            audio: list[bytes] = []
            done = await next_event(ws, audio)
            rest = await utterances_until_closed(ws)
        assert ws.close_code == 1000
        spoken = [(started, b"".join(audio), done), *rest]
        assert [s["text"] for s, _, _ in spoken] == ["Hi there.", "How are you?"]
        ids = [s["utterance_id"] for s, _, _ in spoken]
        assert len(set(ids)) == 2 and [d["utterance_id"] for _, _, d in spoken] == ids
        for _, pcm, done in spoken:  # s16le: every sample generated was sent, whole frames of them
            assert done["status"] == "completed"
            assert len(pcm) == 2 * done["samples"] and done["samples"] % SAMPLES_PER_FRAME == 0
            assert done["audio_s"] == round(done["samples"] / 24000, 3) and done["first_audio_ms"] > 0
        # Each utterance is the HTTP API's audio for its text with the same settings.
        assert [d["samples"] for _, _, d in spoken] == [await http_stream_samples(port, s["text"]) for s, _, _ in spoken]


async def test_cancel_stops_the_utterance_frees_its_engine_slot_and_the_session_goes_on(synthesizer):
    with uvicorn_in_thread(synthesizer) as (app, port, loop):
        async with websockets.connect(url(port)) as ws:
            await send(ws, "session.update", max_new_tokens=1200, seed=3)  # 14.6 s of audio if not stopped
            await send(ws, "input_text.append", text="Tell me a very long story. ")
            started = await next_event(ws)
            await send(ws, "input_text.append", text="And another one after it. ")  # generated ahead
            while not isinstance(await asyncio.wait_for(ws.recv(), WAIT_S), bytes):
                pass  # until the first audio
            await send(ws, "response.cancel")
            done = await next_event(ws, [])
            assert done["type"] == "speech.done" and done["utterance_id"] == started["utterance_id"]
            assert done["status"] == "cancelled" and done["samples"] < 1200 // 7 * SAMPLES_PER_FRAME // 2
            # The second sentence was waiting (and generating ahead): dropped unheard, slots freed.
            await asyncio.to_thread(wait_until, lambda: running(app, loop) == 0, "the engine's slots freed")
            assert call_in_loop(loop, lambda: app.state.server.admission.count) == 0
            await send(ws, "session.update", max_new_tokens=100)
            await send(ws, "input_text.append", text="Next one.")
            await send(ws, "input_text.commit")
            nothing_before = []
            after = await next_event(ws, nothing_before)
            assert nothing_before == [] and after["type"] == "speech.started" and after["text"] == "Next one."
            audio: list[bytes] = []
            assert (await next_event(ws, audio))["status"] == "completed" and audio


@pytest.mark.parametrize("message,param,code", [
    ("not json", None, "invalid_json"),
    (b"\x00\x01", None, "invalid_message"),
    ({"type": "input_audio.append"}, "type", "invalid_value"),
    ({"text": "no type"}, "type", "invalid_value"),
    ({"type": "session.update", "temperature": 5}, "temperature", "invalid_value"),
    ({"type": "session.update", "response_format": "flac"}, "response_format", "invalid_value"),
    ({"type": "session.update", "voice": "nobody"}, "voice", "invalid_value"),
    ({"type": "session.update", "volume": 2}, "volume", "invalid_value"),
    ({"type": "input_text.append", "text": ""}, "text", "invalid_value"),
    ({"type": "input_text.append", "text": 12}, "text", "invalid_value"),
    ({"type": "input_text.append", "text": "x" * 61}, "text", "text_too_long"),
    ({"type": "input_text.append", "text": "<whisper> hi. "}, "text", "invalid_value"),
])
async def test_a_bad_message_gets_an_error_naming_its_field_and_the_session_goes_on(synthesizer, message, param, code):
    with uvicorn_in_thread(synthesizer, max_text_chars=60) as (_, port, _loop):
        async with websockets.connect(url(port)) as ws:
            await ws.send(json.dumps(SHORT))
            await ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))
            error = await next_event(ws)
            assert error["type"] == "error" and error["param"] == param and error["code"] == code, error
            await send(ws, "input_text.append", text="Still here.")
            await send(ws, "session.close")
            [(started, pcm, done)] = await utterances_until_closed(ws)
            assert started["text"] == "Still here." and done["status"] == "completed" and pcm


async def test_a_session_with_a_wrong_or_missing_key_is_closed_4401_before_anything_is_generated(synthesizer, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("right-key\n")
    with uvicorn_in_thread(synthesizer, api_keys_file=keys) as (_, port, _loop):
        for headers, query, code in [({}, "", "missing_api_key"), ({"x-api-key": "wrong"}, "", "invalid_api_key"),
                                     ({}, "?api_key=wrong", "invalid_api_key")]:
            async with websockets.connect(url(port, query), additional_headers=headers) as ws:
                error = await next_event(ws)
                assert error["type"] == "error" and error["code"] == code and error["message"]
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == 4401 and ws.close_reason == code
        for headers, query in [({"Authorization": "Bearer right-key"}, ""), ({}, "?api_key=right-key")]:
            async with websockets.connect(url(port, query), additional_headers=headers) as ws:
                await ws.send(json.dumps(SHORT))
                await send(ws, "input_text.append", text="Let me in.")
                await send(ws, "session.close")
                [(_, pcm, done)] = await utterances_until_closed(ws)
                assert done["status"] == "completed" and len(pcm) == 2 * done["samples"]


async def test_sessions_over_the_limit_are_closed_1013_and_idle_ones_are_closed(synthesizer):
    with uvicorn_in_thread(synthesizer, max_speech_sessions=1, session_idle_timeout_s=0.5) as (_, port, _loop):
        async with websockets.connect(url(port)) as first:
            async with websockets.connect(url(port)) as second:
                error = await next_event(second)
                assert error["code"] == "rate_limit_exceeded" and "1 speech sessions are open" in error["message"]
                with pytest.raises(websockets.ConnectionClosed):
                    await second.recv()
            assert second.close_code == 1013
            closed = await next_event(first)  # says nothing for 0.5 s
            assert closed == {"type": "session.closed", "reason": "idle for 0.5 s"}
            with pytest.raises(websockets.ConnectionClosed):
                await first.recv()
            assert first.close_code == 1000


def test_a_client_that_never_reads_is_dropped_and_its_generations_end(synthesizer, caplog):
    caplog.set_level(logging.INFO)
    with uvicorn_in_thread(synthesizer, send_timeout_s=0.5) as (app, port, loop):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window from the start
        sock.settimeout(WAIT_S)
        sock.connect(("127.0.0.1", port))
        client = ClientProtocol(parse_uri(url(port)))
        client.send_request(client.connect())
        sock.sendall(b"".join(client.data_to_send()))
        client.receive_data(sock.recv(4096))
        assert client.handshake_exc is None
        for message in ({"type": "session.update", "max_new_tokens": 600, "seed": 1},
                        {"type": "input_text.append", "text": "A long sentence to say. " * 6},
                        {"type": "session.close"}):
            client.send_text(json.dumps(message).encode())
            sock.sendall(b"".join(client.data_to_send()))
        state = app.state.server
        wait_until(lambda: call_in_loop(loop, lambda: state.speech_sessions) == 0, "the session's end")
        with pytest.raises(ConnectionResetError), sock:  # reset, not left to drain
            while sock.recv(65536):
                pass
        wait_until(lambda: running(app, loop) == 0, "the engine's slots freed")
        assert call_in_loop(loop, lambda: state.admission.count) == 0
    [warning] = [r.getMessage() for r in caplog.records if "dropped clients that read nothing" in r.getMessage()]
    assert ROUTE in warning
