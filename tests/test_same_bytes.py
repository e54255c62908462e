"""A seeded request whose audio is returned whole gives the same bytes on every run, on every route
that returns a whole file, whatever else the server is doing."""

from __future__ import annotations

import asyncio
import filecmp
import struct

from support.asgi import SHORT, SPEECH, V1, V2, serve
from support.wav import wav_samples
from test_cli import run_cli

from orpheus_local.params import SynthesisParams

SEEDED = {"text": "Hello there <laugh> world.", "voice": "tara", "max_new_tokens": 150, "seed": 7}


async def busy_generations(synth, count: int):
    """`count` long generations, each past its first frame (so in the engine's batch) when this
    returns; the caller closes them. Their ids are not decoded: the codec would only slow the test,
    and a whole file's windows are decoded in calls of their own whatever else the codec does."""
    streams = []
    for i in range(count):
        params = SynthesisParams(text=f"Other request {i}.", voice="leo", max_new_tokens=2000, seed=100 + i)
        stream = synth.stream_ids(params, f"busy-{i}", ignore_eos=True)
        await anext(stream)
        streams.append(stream)
    return streams




async def test_same_bytes_alone_beside_three_streams_and_as_a_v2_job(synthesizer, monkeypatch):
    running_at_submit = []
    submit = synthesizer.backend.submit

    def recording(prompt_ids, params, *args, **kw):
        if params.seed is not None and params.seed < 100:  # a part of the seeded request
            running_at_submit.append(synthesizer.stats()["running"])
        return submit(prompt_ids, params, *args, **kw)

    monkeypatch.setattr(synthesizer.backend, "submit", recording)
    async with serve(synthesizer) as (client, app):
        alone = await client.post(V1, json=SEEDED)
        assert alone.status_code == 200, alone.text
        assert wav_samples(alone.content) > 0
        running_at_submit.clear()

        others = await busy_generations(synthesizer, 3)
        try:
            crowded = await client.post(V1, json=SEEDED)
        finally:
            await asyncio.gather(*(s.aclose() for s in others))
        assert running_at_submit[0] == 3  # it joined a batch of three other generations

        submitted = (await client.post(V2, json=SEEDED)).json()
        await asyncio.wait([app.state.server.jobs.get(submitted["request_id"]).task])
        job = await client.get(f"/v2/requests/{submitted['request_id']}/output.wav")
    assert crowded.content == alone.content
    assert job.status_code == 200 and job.content == alone.content


async def test_other_seeds_give_other_bytes(synthesizer):
    async with serve(synthesizer) as (client, _):
        a = await client.post(V1, json=SEEDED)
        b = await client.post(V1, json={**SEEDED, "seed": 8})
        c, d = await client.post(V1, json={**SEEDED, "seed": None}), await client.post(V1, json={**SEEDED, "seed": None})
    assert a.content != b.content and c.content != d.content


async def test_openai_whole_file_has_real_sizes_and_the_same_audio(synthesizer):
    speech = {"model": "tts-1", "input": SEEDED["text"], "voice": "tara", "response_format": "wav",
              "max_new_tokens": 150, "seed": 7}
    async with serve(synthesizer) as (client, _):
        v1 = await client.post(V1, json=SEEDED)
        whole = await client.post(SPEECH, json={**speech, "stream": False})
        streamed = await client.post(SPEECH, json=speech)
        sse_whole = await client.post(SPEECH, json={**speech, "stream": False, "stream_format": "sse"})
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    data = whole.content
    riff_size, = struct.unpack("<I", data[4:8])
    data_size, = struct.unpack("<I", data[40:44])
    assert riff_size == len(data) - 8 and data_size == len(data) - 44 == 2 * wav_samples(data)
    assert data == v1.content
    assert streamed.content[4:8] == streamed.content[40:44] == b"\xff\xff\xff\xff"  # as OpenAI streams
    assert sse_whole.status_code == 400 and sse_whole.json()["error"]["param"] == "stream"


def test_cli_twice_gives_the_same_file(demo_dirs, tmp_path):
    model_dir, snac_dir = demo_dirs
    outs = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for out in outs:
        result = run_cli("synth", SEEDED["text"], "--voice", "tara", "--weights", str(model_dir), "--snac",
                         str(snac_dir), "--seed", "7", "--max-new-tokens", "150", "-o", str(out))
        assert result.returncode == 0, result.stderr
    assert outs[0].stat().st_size > 44 and filecmp.cmp(*outs, shallow=False)


async def test_top_k_is_validated_on_every_route(synthesizer):
    async with serve(synthesizer) as (client, _):
        for path, body in ((V1, SHORT), (V2, SHORT), (SPEECH, {"input": "Hi.", "voice": "tara"})):
            for bad in (0, 4097, 2.5, "x", True):
                response = await client.post(path, json={**body, "top_k": bad})
                assert response.status_code == 400, (path, bad, response.text)
                assert "top_k" in response.text
        ok = await client.post(V1, json={**SHORT, "top_k": 50})
    assert ok.status_code == 200
