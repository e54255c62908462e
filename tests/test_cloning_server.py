"""Cloned voices over HTTP: made from a recording (POST /v1/audio/voices), spoken on every route,
listed, deleted; refused with a 400 that says why for a bad recording or form; kept under the
state directory across restarts; one API key's alone; refused on a fine-tune."""

from __future__ import annotations

import dataclasses
import json

import httpx
import numpy as np
import pytest
import websockets
from support.asgi import SPEECH, V1, V2, serve
from support.recordings import flac_bytes, tone, wav_bytes
from support.uvicorn_thread import uvicorn_in_thread
from support.wav import wav_samples

from orpheus_local.pipeline.synthesizer import Synthesizer
from server.speech_session import ROUTE

VOICES = "/v1/audio/voices"
TRANSCRIPT = "It was a bright cold day in April."
RECORDING = wav_bytes(tone(3.5))
SAY = {"max_new_tokens": 100, "seed": 3}


@pytest.fixture(scope="module")
def pretrained(demo_config):
    """The demo model served as a pretrained checkpoint: no voices (so it clones)."""
    synth = Synthesizer.load(dataclasses.replace(demo_config, voices=()))
    yield synth
    synth.close()


@pytest.fixture(scope="module")
def demo(demo_config, demo_dirs):
    """--demo: the English voices and cloning, both."""
    synth = Synthesizer.load(dataclasses.replace(demo_config, demo=True, demo_dir=demo_dirs[0].parent))
    yield synth
    synth.close()


async def clone(client, name="narrator", recording=RECORDING, transcript=TRANSCRIPT, key=None, filename="me.wav"):
    data = {"name": name} if name is not None else {}
    if transcript is not None:
        data["transcript"] = transcript
    files = {"audio": (filename, recording, "application/octet-stream")} if recording is not None else None
    headers = {"x-api-key": key} if key else {}
    return await client.post(VOICES, data=data, files=files, headers=headers)


async def test_a_cloned_voice_is_made_spoken_on_every_route_listed_and_deleted(pretrained):
    runner = pretrained.backend.core.runner
    async with serve(pretrained) as (client, _):
        made = await clone(client)
        listed = (await client.get(VOICES)).json()
        segmind = await client.post(V1, json={"text": "Hello there.", "voice": "Narrator", **SAY})
        hits_after_one = runner.prefixes.hits
        openai = await client.post(SPEECH, json={"input": "Hello there.", "voice": {"id": "narrator"},
                                                 "response_format": "wav", "stream": False, **SAY})
        job = await client.post(V2, json={"text": "Hello there.", "voice": "narrator", **SAY})
        deleted = await client.delete(f"{VOICES}/narrator")
        gone = await client.post(V1, json={"text": "Hello there.", "voice": "narrator", **SAY})
        deleted_again = await client.delete(f"{VOICES}/narrator")
    assert made.status_code == 201
    assert made.json() == {"id": "narrator", "object": "audio.voice", "name": "narrator", "transcript": TRANSCRIPT,
                           "seconds": 3.58, "created_at": made.json()["created_at"]}  # 42 frames of 2048 samples
    assert listed["cloning"] is True and listed["voices"] == []
    assert listed["cloned_voices"] == [made.json()]
    # The same seed with the same voice gives the same audio on both routes, from the cached reference turn.
    assert segmind.status_code == openai.status_code == 200
    assert wav_samples(segmind.content) > 0 and segmind.content == openai.content
    assert runner.prefixes.hits > hits_after_one
    assert job.status_code == 200 and job.json()["status"] == "QUEUED"
    assert deleted.status_code == 204
    assert gone.status_code == 400 and "unknown voice 'narrator'" in gone.json()["error"]
    assert deleted_again.status_code == 404
    assert deleted_again.json()["error"] == {"message": "you have no cloned voice 'narrator'", "type":
                                             "invalid_request_error", "param": "name", "code": "voice_not_found"}


async def test_a_cloned_voice_changes_the_audio(pretrained):
    async with serve(pretrained) as (client, _):
        await clone(client, "one")
        await clone(client, "two", recording=flac_bytes(tone(4.0, rate=44100, amplitude=0.5)), filename="two.flac")
        plain, one, two = [
            (await client.post(V1, json={"text": "Hello there.", **({"voice": v} if v else {}), **SAY})).content
            for v in (None, "one", "two")]
    assert len({plain, one, two}) == 3


@pytest.mark.parametrize("form, param, message", [
    ({"recording": wav_bytes(tone(2.0))}, "audio",
     "audio: the recording is 2.0 s long; a reference needs 3 to 30 s of speech"),
    ({"recording": wav_bytes(tone(30.5, rate=8000), rate=8000)}, "audio",
     "audio: the recording is longer than 30 s; send 3 to 30 s of speech"),
    ({"recording": wav_bytes(np.zeros(24000 * 4, dtype=np.float32))}, "audio",
     "audio: the recording is silent (below -60 dBFS); record the speaker's voice"),
    ({"recording": b"%PDF-1.4 not a recording at all" * 10, "filename": "me.pdf"}, "audio",
     "audio: cannot read the file as audio (InvalidDataError); send a recording (wav, mp3, ogg, flac, m4a, ...)"),
    ({"recording": None}, "audio", "audio: is required: the reference recording, as a file part of the form"),
    ({"transcript": None}, "transcript", "transcript: is required: the words spoken in the recording"),
    ({"transcript": "   "}, "transcript", "transcript: is required: the words spoken in the recording"),
    ({"transcript": "x" * 1001}, "transcript", "transcript: 1001 characters is more than 1000; use a shorter recording"),
    ({"name": None}, "name", "name: is required: what requests will call the voice"),
    ({"name": "my voice!"}, "name", "name: must be 1 to 64 letters, digits, _ or -"),
    ({"name": "Alloy"}, "name", "name: 'Alloy' is an OpenAI voice name mapped to 'tara'; choose another name"),
])
async def test_a_bad_recording_or_form_is_a_400_that_says_what_is_wrong(demo, form, param, message):
    async with serve(demo) as (client, _):
        refused = await clone(client, **form)
        listed = (await client.get(VOICES)).json()
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == message and refused.json()["error"]["param"] == param
    assert listed["cloned_voices"] == []


async def test_the_demo_speaks_its_voices_and_cloned_ones(demo):
    async with serve(demo) as (client, _):
        listed = (await client.get(VOICES)).json()
        taken = await clone(client, "tara")
        made = await clone(client)
        again = await clone(client, "NARRATOR")
        named = await client.post(V1, json={"text": "Hi.", "voice": "tara", **SAY})
        cloned = await client.post(V1, json={"text": "Hi.", "voice": "narrator", **SAY})
    assert listed["cloning"] is True and "tara" in listed["voices"]
    assert taken.status_code == 400 and taken.json()["error"]["message"] == (
        "name: 'tara' is a voice of the checkpoint; choose another name")
    assert made.status_code == 201
    assert again.status_code == 409 and again.json()["error"]["code"] == "voice_exists"
    assert named.status_code == cloned.status_code == 200 and named.content != cloned.content


async def test_a_cloned_voice_survives_a_restart_and_is_its_keys_alone(pretrained, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("key-one\nkey-two\n")
    settings = {"api_keys_file": keys, "state_dir": str(tmp_path / "state")}
    async with serve(pretrained, **settings) as (client, _):
        made = await clone(client, key="key-one")
    async with serve(pretrained, **settings) as (client, _):  # a new server on the same state directory
        one = {"x-api-key": "key-one"}
        two = {"x-api-key": "key-two"}
        listed_one = (await client.get(VOICES, headers=one)).json()["cloned_voices"]
        listed_two = (await client.get(VOICES, headers=two)).json()["cloned_voices"]
        spoken = await client.post(V1, json={"text": "Hi.", "voice": "narrator", **SAY}, headers=one)
        used_by_two = await client.post(SPEECH, json={"input": "Hi.", "voice": "narrator"}, headers=two)
        deleted_by_two = await client.delete(f"{VOICES}/narrator", headers=two)
        own_of_two = await clone(client, key="key-two")  # the same name, another key: its own voice
        deleted_by_one = await client.delete(f"{VOICES}/narrator", headers=one)
        still_two = (await client.get(VOICES, headers=two)).json()["cloned_voices"]
    assert made.status_code == 201
    assert listed_one == [made.json()] and listed_two == []
    assert spoken.status_code == 200 and wav_samples(spoken.content) > 0
    assert used_by_two.status_code == 400 and used_by_two.json()["error"]["param"] == "voice"
    assert "unknown voice 'narrator'" in used_by_two.json()["error"]["message"]
    assert deleted_by_two.status_code == 404
    assert own_of_two.status_code == 201 and deleted_by_one.status_code == 204
    assert [v["name"] for v in still_two] == ["narrator"]


async def test_a_fine_tune_refuses_cloned_voices_with_a_clear_message(synthesizer, pretrained, tmp_path):
    state_dir = str(tmp_path / "state")
    async with serve(pretrained, state_dir=state_dir) as (client, _):
        assert (await clone(client)).status_code == 201
    async with serve(synthesizer, state_dir=state_dir) as (client, _):  # the English fine-tune
        made = await clone(client, "another")
        spoken = await client.post(V1, json={"text": "Hi.", "voice": "narrator", **SAY})
    message = ("voice: cloned voices need a pretrained checkpoint (one without voices, e.g. orpheus-3b-0.1-pretrained); "
               "this server serves a fine-tune, whose voices are tara, leah, jess, leo, dan, mia, zac, zoe, josh, emma")
    assert made.status_code == 400 and made.json()["error"]["message"] == message
    assert spoken.status_code == 400 and spoken.json() == {"error": message}


async def test_a_speech_session_speaks_in_the_callers_cloned_voice(pretrained, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("key-one\nkey-two\n")
    with uvicorn_in_thread(pretrained, api_keys_file=keys) as (_, port, _loop):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await clone(client, key="key-one")).status_code == 201
        sessions = {}
        for key in ("key-two", "key-one"):
            async with websockets.connect(f"ws://127.0.0.1:{port}{ROUTE}?api_key={key}") as ws:
                await ws.send(json.dumps({"type": "session.update", "voice": "narrator", "max_new_tokens": 100}))
                await ws.send(json.dumps({"type": "input_text.append", "text": "Hello there."}))
                await ws.send(json.dumps({"type": "session.close"}))
                sessions[key] = [json.loads(m) for m in [m async for m in ws] if isinstance(m, str)]
    refused = sessions["key-two"][0]
    assert refused["type"] == "error" and refused["param"] == "voice"
    assert "unknown voice 'narrator'" in refused["message"]
    assert [e["type"] for e in sessions["key-one"]] == ["speech.started", "speech.done", "session.closed"]
