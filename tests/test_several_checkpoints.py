"""Several checkpoints side by side (--model NAME=PATH): a request picks one by OpenAI's model field
or by the slug route /v1/NAME, each answers with its own weights and its own voices, and a name that
selects nothing is a 404 in the route's error shape."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from support.asgi import SHORT, SPEECH, V1, serve
from support.recordings import tone, wav_bytes
from support.uvicorn_thread import uvicorn_in_thread

from orpheus_local.params import DEFAULT_VOICE
from orpheus_local.pipeline.checkpoint_set import load_checkpoints
from orpheus_local.voices import Voices, write_voices_file
from orpheus_local.weights.demo import build_demo_checkpoint
from server.main import main as serve_main
from server.openai_names import SPEECH_MODELS
from server.settings import ServerSettings
from server.speech_session import ROUTE

B_VOICES = ("pierre", "amelie", "tara")  # tara: a request the same on a and b


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Settings serving `a` (a demo checkpoint, the default) and `b` (a checkpoint directory with
    voices of its own), and the two loaded synthesizers."""
    root = tmp_path_factory.mktemp("checkpoints")
    model_dir, snac_dir = build_demo_checkpoint(root / "b", seed=7)
    write_voices_file(model_dir, Voices.of(B_VOICES))
    settings = dict(model=["a=demo", f"b={model_dir}"], snac=str(snac_dir), demo_dir=str(root / "demo"),
                    device="cpu", max_queue=16, model_aliases={"house-voice": "b"})
    synths = load_checkpoints(ServerSettings(**settings).engine_configs())
    yield settings, synths
    for synth in synths.values():
        synth.close()


def speech(**fields) -> dict:
    return {"input": "Hello there.", "max_new_tokens": 100, "seed": 1, "response_format": "wav", "stream": False,
            **fields}


async def test_each_slug_answers_with_its_own_checkpoint(two):
    settings, synths = two
    async with serve(synths, **settings) as (client, _):
        a = await client.post("/v1/a", json=SHORT)
        default = await client.post(V1, json=SHORT)
        b = await client.post("/v1/b", json={**SHORT, "voice": "amelie"})
        job = await client.post("/v2/b", json={**SHORT, "voice": "pierre"})
    assert [r.status_code for r in (a, default, b, job)] == [200, 200, 200, 200]
    assert [r.headers["x-model"] for r in (a, default, b)] == ["a", "a", "b"]
    assert default.content == a.content  # orpheus-3b-0.1 is the default: the same weights, the same bytes
    assert job.json()["status"] in ("QUEUED", "RUNNING", "COMPLETED")


async def test_the_same_request_gives_other_audio_from_the_other_checkpoints_weights(two):
    settings, synths = two
    async with serve(synths, **settings) as (client, _):
        a = await client.post(SPEECH, json=speech(model="a", voice="tara"))
        b = await client.post(SPEECH, json=speech(model="b", voice="tara"))
        b_again = await client.post(SPEECH, json=speech(model="b", voice="tara"))
    assert (a.headers["x-model"], b.headers["x-model"]) == ("a", "b")
    assert b.content == b_again.content and a.content != b.content


@pytest.mark.parametrize("model, served", [("a", "a"), ("b", "b"), ("orpheus-3b-0.1", "a"), ("tts-1", "a"),
                                           ("gpt-4o-mini-tts-2025-12-15", "a"), ("house-voice", "b")])
async def test_the_model_field_selects_a_checkpoint(two, model, served):
    settings, synths = two
    voice = "pierre" if served == "b" else "tara"
    async with serve(synths, **settings) as (client, _):
        response = await client.post(SPEECH, json=speech(model=model, voice=voice))
    assert response.status_code == 200 and response.headers["x-model"] == served


async def test_each_checkpoint_has_its_own_voices(two):
    settings, synths = two
    async with serve(synths, **settings) as (client, _):
        wrong = await client.post("/v1/b", json={**SHORT, "voice": "leo"})  # a's voice, not b's
        mapped = await client.post(SPEECH, json=speech(model="b", voice="alloy"))  # alloy is tara, which b has
        unmapped = await client.post(SPEECH, json=speech(model="b", voice="onyx"))  # onyx is leo, which b lacks
        listed_a = (await client.get("/v1/audio/voices")).json()
        listed_b = (await client.get("/v1/audio/voices", params={"model": "b"})).json()
    assert wrong.status_code == 400 and wrong.json() == {"error": "voice: unknown voice 'leo'; choose one of "
                                                                  "pierre, amelie, tara"}
    assert mapped.status_code == 200 and mapped.headers["x-model"] == "b"
    assert unmapped.status_code == 400 and unmapped.json()["error"]["param"] == "voice"
    assert (listed_b["voices"], listed_b["default"], listed_b["cloning"]) == (list(B_VOICES), "pierre", False)
    assert listed_b["openai_voices"] == {"alloy": "tara", "marin": "tara"}
    assert listed_a["default"] == DEFAULT_VOICE and listed_a["openai_voices"]["onyx"] == "leo" and listed_a["cloning"]


async def test_an_unknown_model_is_a_404_in_each_routes_shape(two):
    settings, synths = two
    async with serve(synths, **settings) as (client, _):
        slug = await client.post("/v1/c", json=SHORT)
        job = await client.post("/v2/c", json=SHORT)
        openai = await client.post(SPEECH, json=speech(model="c"))
        voices = await client.get("/v1/audio/voices", params={"model": "c"})
    message = "model 'c' not found; this server serves a, b"
    assert (slug.status_code, slug.json()) == (404, {"error": message})
    assert (job.status_code, job.json()) == (404, {"error": message})
    for response in (openai, voices):
        assert response.status_code == 404
        assert response.json()["error"] == {"message": message, "type": "invalid_request_error", "param": "model",
                                            "code": "model_not_found"}


async def test_the_slug_routes_shadow_no_fixed_route_and_the_models_are_listed(two):
    settings, synths = two
    async with serve(synths, **settings) as (client, _):
        models = await client.get("/v1/models")
        posted = await client.post("/v1/models", json=SHORT)
        paths = set((await client.get("/openapi.json")).json()["paths"])
    assert [m["id"] for m in models.json()["data"]] == [*SPEECH_MODELS, "a", "b", "house-voice"]
    assert posted.status_code == 405
    assert {"/v1/a", "/v1/b", "/v2/a", "/v2/b", "/v1/orpheus-3b-0.1", "/v1/audio/speech", "/v1/models"} <= paths


def test_the_default_is_the_one_named_orpheus_3b_0_1_else_the_first():
    first = ServerSettings(model=["x=demo", "y=demo"])
    named = ServerSettings(model=["x=demo", "orpheus-3b-0.1=demo"])
    assert first.checkpoint_names() == ("x", "y") and named.checkpoint_names() == ("orpheus-3b-0.1", "x")
    configs = first.engine_configs()
    assert configs["x"].demo and configs["y"].demo and configs["x"].demo_seed != configs["y"].demo_seed
    assert ServerSettings().checkpoint_names() == ("orpheus-3b-0.1",)  # without --model: one, as before


@pytest.mark.parametrize("argv, message", [
    (["--model", "a"], "expected NAME=PATH"),
    (["--model", "a=demo", "--model", "a=demo"], "'a' is given twice"),
    (["--model", "tts-1=demo"], "'tts-1' already means something to clients"),
    (["--model", "models=demo"], "'models' already means something to clients"),
    (["--model", "a b=demo"], "a name is 1 to 64 letters"),
    (["--model", "a=demo", "--demo"], "it does not go with --demo"),
    (["--model", "a=demo", "--weights", "w"], "it does not go with --weights"),
    (["--model", "a=demo", "--model-aliases", '{"mine": "b"}'], "model alias 'mine' names 'b'; this server "
                                                                 "serves orpheus-3b-0.1, a"),
    (["--model", "a=demo", "--model-aliases", '{"a": "orpheus-3b-0.1"}'], "'a' is the name of a served checkpoint"),
])
def test_settings_that_serve_no_clear_set_are_refused_at_start_up(argv, message, capsys):
    assert serve_main(argv) == 2
    assert message in capsys.readouterr().err


async def test_a_cloned_voice_speaks_on_a_checkpoint_that_clones_and_is_a_400_on_one_that_does_not(two):
    settings, synths = two
    recording = ("me.wav", wav_bytes(tone(3.5)), "application/octet-stream")
    form = {"name": "narrator", "transcript": "It was a bright cold day in April."}
    async with serve(synths, **settings) as (client, _):
        refused = await client.post("/v1/audio/voices", data={**form, "model": "b"}, files={"audio": recording})
        made = await client.post("/v1/audio/voices", data=form, files={"audio": recording})
        on_a = await client.post("/v1/a", json={**SHORT, "voice": "narrator"})
        on_b = await client.post(SPEECH, json=speech(model="b", voice="narrator"))
    assert refused.status_code == 400 and "cloned voices need a pretrained checkpoint" in refused.json()["error"][
        "message"]
    assert made.status_code == 201 and on_a.status_code == 200 and on_a.headers["x-model"] == "a"
    assert on_b.status_code == 400 and on_b.json()["error"]["param"] == "voice"
    assert "cloned voices need a pretrained checkpoint" in on_b.json()["error"]["message"]


async def test_a_speech_session_speaks_with_the_checkpoint_its_update_names(two):
    settings, synths = two

    async def send(ws, kind: str, **fields) -> None:
        await ws.send(json.dumps({"type": kind, **fields}))

    async def next_event(ws) -> dict:
        while isinstance(message := await asyncio.wait_for(ws.recv(), 60), bytes):
            pass  # the audio
        return json.loads(message)

    with uvicorn_in_thread(synths, **settings) as (_, port, _loop):
        async with websockets.connect(f"ws://127.0.0.1:{port}{ROUTE}") as ws:
            await send(ws, "session.update", model="b", voice="pierre", max_new_tokens=100, seed=7)  # b's voice
            await send(ws, "input_text.append", text="Bonjour.")
            await send(ws, "input_text.commit")
            started, done = await next_event(ws), await next_event(ws)
            await send(ws, "session.update", model="c")
            unknown = await next_event(ws)
            await send(ws, "session.update", model=None)  # the default, a, has no voice pierre
            no_such_voice = await next_event(ws)
    assert (started["type"], done["type"], done["status"]) == ("speech.started", "speech.done", "completed")
    assert done["samples"] > 0
    assert (unknown["type"], unknown["param"], unknown["code"]) == ("error", "model", "model_not_found")
    assert (no_such_voice["type"], no_such_voice["param"]) == ("error", "voice")
