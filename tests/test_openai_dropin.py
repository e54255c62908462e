"""OpenAI clients unchanged: every built-in voice name, the voice object, every speech model name,
`instructions` and SSE with each model are answered with audio; the OpenAI SDK and
LiveKit's OpenAI TTS plugin, left at its defaults, work against the real server over HTTP."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from openai import AsyncOpenAI
from support.asgi import SPEECH, FakeSynth, serve
from support.uvicorn_thread import uvicorn_in_thread

from orpheus_local.params import TRAINED_VOICES
from orpheus_local.tokens import SAMPLES_PER_FRAME
from server.main import main as serve_main
from server.openai_names import OPENAI_VOICES, SPEECH_MODELS

BUILT_IN_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                   "marin", "cedar")
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15", "gpt-4o-mini-tts-2025-03-20",
          "orpheus", "orpheus-3b-0.1")


class RecordingSynth(FakeSynth):
    """FakeSynth that keeps the parameters each generation was asked for."""

    def __init__(self):
        super().__init__()
        self.asked = []

    async def stream(self, params, request_id=None, on_guard=None, whole_file=False):
        self.asked.append(params)
        async for pcm in super().stream(params, request_id, on_guard, whole_file):
            yield pcm


def speech(**fields) -> dict:
    return {"input": "Hello there.", "response_format": "pcm", **fields}


def sse_audio(body: str) -> bytes:
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == {"type": "speech.audio.done"}
    return b"".join(base64.b64decode(e["audio"]) for e in events[:-1])


def test_every_built_in_voice_has_a_mapping_to_a_trained_voice():
    assert set(OPENAI_VOICES) == set(BUILT_IN_VOICES)
    assert set(OPENAI_VOICES.values()) <= set(TRAINED_VOICES)


@pytest.mark.parametrize("voice", BUILT_IN_VOICES)
async def test_each_openai_voice_name_speaks_with_its_mapped_voice(voice):
    synth = RecordingSynth()
    async with serve(synth) as (client, _):
        response = await client.post(SPEECH, json=speech(model="gpt-4o-mini-tts", voice=voice))
    assert response.status_code == 200 and len(response.content) == SAMPLES_PER_FRAME * 2
    assert synth.asked[0].voice == OPENAI_VOICES[voice]


@pytest.mark.parametrize("voice, spoken", [({"id": "tara"}, "tara"), ({"id": "coral"}, "leah"), ("Leo", "leo")])
async def test_a_voice_object_names_a_trained_or_mapped_voice(voice, spoken):
    synth = RecordingSynth()
    async with serve(synth) as (client, _):
        response = await client.post(SPEECH, json=speech(voice=voice))
    assert response.status_code == 200 and synth.asked[0].voice == spoken


@pytest.mark.parametrize("model", MODELS)
async def test_every_model_name_streams_audio_and_sse(model):
    async with serve(RecordingSynth()) as (client, _):
        audio = await client.post(SPEECH, json=speech(model=model, voice="ash"))
        events = await client.post(SPEECH, json=speech(model=model, voice="ash", stream_format="sse"))
    assert audio.status_code == 200 and len(audio.content) == SAMPLES_PER_FRAME * 2
    assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
    assert len(sse_audio(events.text)) == SAMPLES_PER_FRAME * 2


async def test_instructions_are_accepted_with_every_model_and_the_response_says_they_were_ignored():
    async with serve(RecordingSynth()) as (client, _):
        answers = [await client.post(SPEECH, json=speech(model=m, instructions="Speak cheerfully.")) for m in MODELS]
        plain = await client.post(SPEECH, json=speech())
    assert all(r.status_code == 200 and r.headers["x-ignored-fields"] == "instructions" for r in answers)
    assert "x-ignored-fields" not in plain.headers


@pytest.mark.parametrize("fields, status, param, message", [
    ({"model": "gpt-5-tts"}, 404, "model", "model 'gpt-5-tts' not found"),
    ({"model": "gpt-4o-mini-tts-2025"}, 404, "model", "not found"),
    ({"voice": "bob"}, 400, "voice", "unknown voice 'bob'"),
    ({"voice": {"name": "ash"}}, 400, "voice", "a voice object needs an \"id\" string"),
    ({"instructions": "x" * 4097}, 400, "instructions", "at most 4096 characters"),
    ({"input": ""}, 400, "input", "input: must not be empty"),
])
async def test_what_openai_refuses_stays_refused_in_its_error_shape(fields, status, param, message):
    async with serve(RecordingSynth()) as (client, _):
        response = await client.post(SPEECH, json={**speech(), **fields})
    error = response.json()["error"]
    assert response.status_code == status and error["param"] == param and message in error["message"]


async def test_the_voice_table_and_aliases_come_from_the_settings_and_are_listed():
    synth = RecordingSynth()
    async with serve(synth, openai_voices={"alloy": "zoe"}, model_aliases={"house-voice": "orpheus-3b-0.1"}) as (
            client, _):
        voices = (await client.get("/v1/audio/voices")).json()
        models = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
        response = await client.post(SPEECH, json=speech(model="house-voice", voice="alloy"))
    assert voices["openai_voices"] == {**OPENAI_VOICES, "alloy": "zoe"}
    assert models == {*SPEECH_MODELS, "house-voice"}
    assert response.status_code == 200 and synth.asked[0].voice == "zoe"


@pytest.mark.parametrize("flag, value", [("--openai-voices", '{"alloy": "nobody"}'),
                                         ("--model-aliases", '{"my-tts": "another-model"}')])
def test_a_mapping_to_nothing_served_is_refused_at_start_up(flag, value, capsys):
    assert serve_main([flag, value]) == 2
    assert "error:" in capsys.readouterr().err


async def test_the_openai_sdk_speaks_through_the_server():
    with uvicorn_in_thread(RecordingSynth()) as (_, port, _loop):
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any", max_retries=0)
        try:
            whole = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input="Hello there.",
                                                     instructions="Speak cheerfully.", response_format="wav")
            async with client.audio.speech.with_streaming_response.create(
                    model="tts-1", voice="onyx", input="Hello there.", response_format="pcm") as streamed:
                pcm = b"".join([chunk async for chunk in streamed.iter_bytes()])
        finally:
            await client.close()
    assert whole.content[:4] == b"RIFF" and len(whole.content) == 44 + SAMPLES_PER_FRAME * 2
    assert len(pcm) == SAMPLES_PER_FRAME * 2


class SineSynth(RecordingSynth):
    """Speaks a 440 Hz tone of FRAMES codec frames: audio an mp3 round trip keeps recognisable."""

    FRAMES = 6

    async def stream(self, params, request_id=None, on_guard=None, whole_file=False):
        self.asked.append(params)
        t = np.arange(self.FRAMES * SAMPLES_PER_FRAME) / 24_000
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for frame in np.split(tone, self.FRAMES):
            yield frame


async def test_livekits_openai_plugin_at_its_defaults_speaks_through_the_server():
    # The plugin itself (a test dependency), with only the base URL and key set: it asks for
    # gpt-4o-mini-tts, voice ash, mp3, speed 1.0 and SSE, and decodes the mp3 it gets back.
    from livekit.plugins import openai as livekit_openai

    synth = SineSynth()
    with uvicorn_in_thread(synth) as (_, port, _loop):
        tts = livekit_openai.TTS(base_url=f"http://127.0.0.1:{port}/v1", api_key="any")
        try:
            async with tts.synthesize("Hello there.") as stream:
                frames = [event.frame async for event in stream]
        finally:
            await tts.aclose()
    assert [p.voice for p in synth.asked] == [OPENAI_VOICES["ash"]]
    assert {(f.sample_rate, f.num_channels) for f in frames} == {(24_000, 1)}
    audio = np.concatenate([np.frombuffer(f.data, "<i2") for f in frames]).astype(np.float64) / 32768
    sent = SineSynth.FRAMES * SAMPLES_PER_FRAME
    assert sent <= len(audio) <= sent + 2 * 1152  # mp3 adds at most its priming and last granule's padding
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(sent) / 24_000)
    match = np.correlate(audio, tone, "valid").max() / np.dot(tone, tone)
    assert match > 0.8  # the tone comes back (at mp3's priming offset, a little quieter), not silence or noise
