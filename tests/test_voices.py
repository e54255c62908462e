"""Voices come from the checkpoint: its voices.json (or --voices, or the English fine-tune's eight),
checked by the synthesizer and by every route, listed by GET /v1/audio/voices, with OpenAI's names
mapped only onto voices the checkpoint has."""

from __future__ import annotations

import json
import shutil

import pytest
import websockets
from pydantic import ValidationError
from support.asgi import SPEECH, V1, V2, FakeSynth, serve
from support.uvicorn_thread import uvicorn_in_thread

from orpheus_local import tokens as fmt
from orpheus_local.config import EngineConfig
from orpheus_local.errors import InputError
from orpheus_local.params import DEFAULT_VOICE, VOICES, SynthesisParams
from orpheus_local.voices import (
    ENGLISH_VOICES,
    Voices,
    checkpoint_voices,
    read_voices_file,
)
from orpheus_local.weights.checkpoint import CheckpointError
from server.openai_names import OPENAI_VOICES
from server.settings import ServerSettings
from server.speech_session import ROUTE

# A fine-tune of its own: names in two scripts, a default that is not the first.
VOICES_JSON = {"voices": ["pierre", "amelie", "유나"], "default": "amelie"}
FINE_TUNE_VOICES = Voices(("pierre", "amelie", "유나"), "amelie")
LISTED = "choose one of pierre, amelie, 유나"


class VoicedSynth(FakeSynth):
    """FakeSynth serving a checkpoint's voices; keeps the parameters each generation was asked for."""

    def __init__(self, voices: Voices):
        super().__init__()
        self.voices = voices
        self.asked: list[SynthesisParams] = []

    async def stream(self, params, request_id=None, on_guard=None, whole_file=False):
        self.asked.append(params)
        async for pcm in super().stream(params, request_id, on_guard, whole_file):
            yield pcm

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def fine_tune_dirs(demo_dirs, tmp_path_factory):
    """(model_dir, snac_dir): the demo model with VOICES_JSON beside its config."""
    model_dir = tmp_path_factory.mktemp("fine-tune") / "model"
    shutil.copytree(demo_dirs[0], model_dir)
    (model_dir / "voices.json").write_text(json.dumps(VOICES_JSON, ensure_ascii=False), encoding="utf-8")
    return model_dir, demo_dirs[1]


@pytest.fixture(scope="module")
def fine_tune(fine_tune_dirs):
    from orpheus_local.pipeline.synthesizer import Synthesizer

    model_dir, snac_dir = fine_tune_dirs
    synth = Synthesizer.load(EngineConfig(model=str(model_dir), snac=str(snac_dir), device="cpu", max_queue=16))
    yield synth
    synth.close()


# --- the synthesizer ---------------------------------------------------------------------------


def test_a_checkpoint_with_a_voices_json_has_exactly_its_voices(fine_tune):
    assert fine_tune.voices == FINE_TUNE_VOICES


def test_the_prompt_gets_the_checkpoints_spelling_of_a_voice(fine_tune):
    decomposed = "\u110b\u1172\u1102\u1161"  # 유나 as a system that decomposes Hangul sends it
    for given, spelt in [("PIERRE", "pierre"), (" Amelie ", "amelie"), (decomposed, "유나")]:
        params = SynthesisParams(text="Bonjour.", voice=given)
        assert fine_tune.prompt_ids(params) == fmt.build_prompt(fine_tune.tokenizer, "Bonjour.", spelt)


async def test_a_voice_the_checkpoint_lacks_is_refused_before_any_audio(fine_tune):
    with pytest.raises(InputError) as refused:
        async for _ in fine_tune.stream(SynthesisParams(text="Hello.", voice="tara", max_new_tokens=100)):
            pytest.fail("audio for a voice the checkpoint does not have")
    assert refused.value.field == "voice"
    assert refused.value.message == f"unknown voice 'tara'; {LISTED}"
    assert fine_tune.stats()["queued"] == fine_tune.stats()["running"] == 0


def test_voices_given_win_over_the_voices_json(fine_tune_dirs):
    model_dir, _ = fine_tune_dirs
    assert checkpoint_voices(model_dir, ["jana", "thomas"]) == Voices(("jana", "thomas"), "jana")
    assert checkpoint_voices(model_dir) == FINE_TUNE_VOICES
    assert checkpoint_voices(model_dir.parent) == ENGLISH_VOICES  # no voices.json: the English fine-tune's
    assert ENGLISH_VOICES == Voices(VOICES, DEFAULT_VOICE)


def test_voices_given_to_the_synthesizer_win_over_its_checkpoints(demo_dirs):
    from orpheus_local.pipeline.synthesizer import Synthesizer

    config = EngineConfig(simulated_step_ms=1, demo_dir=demo_dirs[0].parent, voices=("jana", "thomas"))
    synth = Synthesizer.simulated(config, default_slots=2)
    try:
        assert synth.voices == Voices(("jana", "thomas"), "jana")
    finally:
        synth.close()


@pytest.mark.parametrize("content, voices", [
    ('["jana", "thomas", "max"]', Voices(("jana", "thomas", "max"), "jana")),
    ('{"voices": ["jana", "thomas"], "default": "Thomas"}', Voices(("jana", "thomas"), "thomas")),
    ("[]", Voices((), None)),  # a pretrained checkpoint: no voices
])
def test_a_voices_file_is_a_list_or_an_object(tmp_path, content, voices):
    (tmp_path / "voices.json").write_text(content)
    assert read_voices_file(tmp_path / "voices.json") == voices


@pytest.mark.parametrize("content, problem", [
    ("pierre, amelie", "Expecting value"),
    ('{"voices": "pierre"}', "expected a list of names"),
    ('{"names": ["pierre"]}', "expected a list of names"),
    ('["pierre", "Pierre"]', "voice 'Pierre' is listed twice"),
    ('["pierre", ""]', "a voice name must be a non-empty string, got ''"),
    ('["pierre", 3]', "a voice name must be a non-empty string, got 3"),
    ('{"voices": ["pierre"], "default": "marie"}', "the default voice 'marie' is not one of pierre"),
])
def test_a_bad_voices_file_is_refused_naming_it(fine_tune_dirs, tmp_path, content, problem):
    from orpheus_local.pipeline.synthesizer import Synthesizer

    model_dir = tmp_path / "model"
    shutil.copytree(fine_tune_dirs[0], model_dir)
    (model_dir / "voices.json").write_text(content)
    with pytest.raises(CheckpointError) as refused:
        Synthesizer.load(EngineConfig(model=str(model_dir), snac=str(fine_tune_dirs[1]), device="cpu"))
    assert str(refused.value).startswith(f"{model_dir / 'voices.json'} is not a valid voices file: ")
    assert problem in str(refused.value)
    with pytest.raises(ValidationError, match="is not a valid voices file"):  # and serve refuses to start
        ServerSettings(weights=str(model_dir))


# --- the server --------------------------------------------------------------------------------


async def test_the_server_serves_the_voices_of_its_checkpoint(fine_tune):
    async with serve(fine_tune) as (client, _):
        listed = (await client.get("/v1/audio/voices")).json()
        spoken = await client.post(V1, json={"text": "Bonjour.", "voice": "Pierre", "max_new_tokens": 100, "seed": 1})
        refused = [await client.post(path, json={"text": "Hi", "voice": "tara"}) for path in (V1, V2)]
        openai = await client.post(SPEECH, json={"input": "Hi", "voice": "alloy"})
    assert listed == {"voices": ["pierre", "amelie", "유나"], "default": "amelie", "openai_voices": {},
                      "cloning": False, "cloned_voices": []}
    assert spoken.status_code == 200 and spoken.headers["content-type"] == "audio/wav"
    assert [r.status_code for r in refused] == [400, 400]
    assert [r.json() for r in refused] == [{"error": f"voice: unknown voice 'tara'; {LISTED}"}] * 2
    # OpenAI's names map to English voices this checkpoint does not have: refused the same way
    assert openai.status_code == 400
    assert openai.json()["error"]["param"] == "voice"
    assert openai.json()["error"]["message"] == f"voice: unknown voice 'alloy'; {LISTED}"


@pytest.mark.parametrize("body, spoken", [
    ({}, "amelie"), ({"voice": ""}, "amelie"), ({"voice": "유나"}, "유나"), ({"voice": {"id": "PIERRE"}}, "pierre"),
])
async def test_a_request_without_a_voice_gets_the_checkpoints_default(body, spoken):
    synth = VoicedSynth(FINE_TUNE_VOICES)
    async with serve(synth) as (client, _):
        segmind = await client.post(V1, json={"text": "Salut.", **body})
        openai = await client.post(SPEECH, json={"input": "Salut.", "response_format": "pcm", **body})
    assert segmind.status_code == openai.status_code == 200
    assert [params.voice for params in synth.asked] == [spoken, spoken]


async def test_the_english_fine_tune_keeps_its_voices_default_and_openai_table():
    synth = VoicedSynth(ENGLISH_VOICES)
    async with serve(synth) as (client, _):
        listed = (await client.get("/v1/audio/voices")).json()
        await client.post(V1, json={"text": "Hi."})
    assert listed == {"voices": list(VOICES), "default": "dan", "openai_voices": OPENAI_VOICES, "cloning": False,
                      "cloned_voices": []}
    assert synth.asked[0].voice == "dan"


async def test_voices_set_in_the_settings_win_over_the_checkpoints():
    synth = VoicedSynth(ENGLISH_VOICES)
    async with serve(synth, voices="jana, thomas,max") as (client, _):
        listed = (await client.get("/v1/audio/voices")).json()
        refused = await client.post(V1, json={"text": "Hi", "voice": "tara"})
        await client.post(V1, json={"text": "Hallo."})
    assert listed == {"voices": ["jana", "thomas", "max"], "default": "jana", "openai_voices": {}, "cloning": False,
                      "cloned_voices": []}
    assert refused.json() == {"error": "voice: unknown voice 'tara'; choose one of jana, thomas, max"}
    assert synth.asked[0].voice == "jana"
    assert ServerSettings(voices="jana, thomas,max").engine_config().voices == ("jana", "thomas", "max")


@pytest.mark.parametrize("value", ["", " , ", "jana,Jana"])
def test_bad_voices_settings_are_refused_at_start_up(value):
    with pytest.raises(ValidationError, match="voices"):
        ServerSettings(voices=value)


async def test_openai_names_map_onto_the_checkpoints_voices_when_configured(fine_tune_dirs):
    synth = VoicedSynth(FINE_TUNE_VOICES)
    # weights: the settings check the table against the checkpoint's voices.json at start-up
    async with serve(synth, weights=str(fine_tune_dirs[0]), openai_voices={"alloy": "Amelie", "onyx": "pierre"}) as (
            client, _):
        listed = (await client.get("/v1/audio/voices")).json()
        mapped = await client.post(SPEECH, json={"input": "Salut.", "voice": "alloy", "response_format": "pcm"})
        unmapped = await client.post(SPEECH, json={"input": "Salut.", "voice": "echo", "response_format": "pcm"})
    assert listed["openai_voices"] == {"alloy": "amelie", "onyx": "pierre"}
    assert mapped.status_code == 200 and synth.asked[0].voice == "amelie"
    assert unmapped.status_code == 400 and unmapped.json()["error"]["message"] == f"voice: unknown voice 'echo'; {LISTED}"


async def test_an_openai_name_mapped_to_a_voice_the_checkpoint_lacks_stops_the_start(fine_tune_dirs):
    # Known from the voices.json when the server starts: a settings error at once.
    with pytest.raises(ValidationError, match="voice 'alloy' maps to 'tara', which is not one of pierre, amelie, 유나"):
        ServerSettings(weights=str(fine_tune_dirs[0]), openai_voices={"alloy": "tara"})
    # Known once loaded (a hub id, or the synthesizer's own): loading fails, saying why.
    failures = []
    async with serve(lambda: VoicedSynth(FINE_TUNE_VOICES), on_load_error=failures.append,
                     openai_voices={"alloy": "tara"}) as (_, app):
        await app.state.server.loaded.wait()
    assert [str(e) for e in failures] == ["voice 'alloy' maps to 'tara', which is not one of pierre, amelie, 유나"]


async def test_a_checkpoint_without_voices_is_prompted_with_the_text_alone():
    synth = VoicedSynth(Voices.of([]))
    async with serve(synth) as (client, _):
        listed = (await client.get("/v1/audio/voices")).json()
        spoken = await client.post(V1, json={"text": "Hello."})
        refused = await client.post(V1, json={"text": "Hello.", "voice": "tara"})
    assert listed == {"voices": [], "default": None, "openai_voices": {}, "cloning": True, "cloned_voices": []}
    assert spoken.status_code == 200 and synth.asked[0].voice is None
    assert refused.json() == {"error": "voice: unknown voice 'tara'; choose one of your cloned voices "
                                       "(GET /v1/audio/voices lists them, POST /v1/audio/voices makes one)"}


async def test_a_speech_session_refuses_a_voice_the_checkpoint_lacks_and_speaks_in_one_it_has():
    synth = VoicedSynth(FINE_TUNE_VOICES)
    with uvicorn_in_thread(synth) as (_, port, _loop):
        async with websockets.connect(f"ws://127.0.0.1:{port}{ROUTE}") as ws:
            await ws.send(json.dumps({"type": "session.update", "voice": "tara"}))
            error = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "session.update", "voice": "Pierre"}))
            await ws.send(json.dumps({"type": "input_text.append", "text": "Bonjour."}))
            await ws.send(json.dumps({"type": "session.close"}))
            events = [message async for message in ws if isinstance(message, str)]
    assert error == {"type": "error", "message": f"voice: unknown voice 'tara'; {LISTED}", "param": "voice",
                     "code": "invalid_value"}
    assert [json.loads(e)["type"] for e in events] == ["speech.started", "speech.done", "session.closed"]
    assert [params.voice for params in synth.asked] == ["pierre"]
