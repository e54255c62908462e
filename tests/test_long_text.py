"""Long text, speed and guards: parts generated concurrently and joined in order with a crossfade,
guards that regenerate or end a runaway part, speed on both APIs, and the length and tag errors."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager

import numpy as np
import pysbd
import pytest
from support.asgi import SPEECH, V1, V2, serve
from support.wav import wav_samples

from orpheus_local import tokens as fmt
from orpheus_local.audio.crossfade import CROSSFADE_SAMPLES, Crossfade, equal_power_mix
from orpheus_local.audio.windows import Window
from orpheus_local.audio.worker import CodecWorker
from orpheus_local.engine.stream import TokenStream
from orpheus_local.errors import InputError, QueueFullError
from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.guards import (
    GuardLimits,
    RepeatWatch,
    SilenceWatch,
    token_budget,
)
from orpheus_local.pipeline.parts import WINDOW, part_seed
from orpheus_local.pipeline.synthesizer import Synthesizer
from orpheus_local.text.split import part_chars, pieces, split_text
from server.settings import ServerSettings

FRAME = fmt.SAMPLES_PER_FRAME
SENTENCES = ("The quick brown fox jumps over the lazy dog. <laugh> Pack my box with five dozen liquor jugs! "
             "How vexingly quick daft zebras jump? ")


def joined(parts: list[np.ndarray], overlap: int = CROSSFADE_SAMPLES) -> np.ndarray:
    """The join crossfade.py promises, written out whole from its formula (in float64)."""
    out = np.asarray(parts[0], np.float64)
    for b in parts[1:]:
        n = min(overlap, len(out), len(b))
        t = np.pi / 2 * (np.arange(n) + 0.5) / max(n, 1)
        mix = out[len(out) - n:] * np.cos(t) + b[:n] * np.sin(t)
        out = np.concatenate([out[:len(out) - n], mix, b[n:]])
    return out


def stream_join(parts: list[np.ndarray], rng: random.Random, overlap: int = CROSSFADE_SAMPLES) -> np.ndarray:
    joiner, out = Crossfade(overlap), []
    for i, part in enumerate(parts):
        joiner.start_part(last=i == len(parts) - 1)
        cuts = sorted(rng.randint(0, len(part)) for _ in range(rng.randint(0, 4)))
        for chunk in np.split(part, cuts):
            out.append(joiner.push(chunk))
        out.append(joiner.end_part())
    return np.concatenate(out)


# --- crossfade -------------------------------------------------------------------------------


def test_crossfade_streamed_in_any_chunks_is_the_join_and_its_length_is_exact():
    rng = random.Random(1)
    for _ in range(50):
        lengths = [rng.choice([0, 100, 719, 720, 2048, 4096, 7 * 2048]) for _ in range(rng.randint(1, 6))]
        parts = [np.random.default_rng(len(lengths) + i).uniform(-1, 1, n).astype(np.float32)
                 for i, n in enumerate(lengths)]
        out = stream_join(parts, rng)
        np.testing.assert_allclose(out, joined(parts), atol=1e-6)
    frames = [np.ones(3 * FRAME, np.float32) for _ in range(5)]
    assert len(stream_join(frames, rng)) == 5 * 3 * FRAME - 4 * CROSSFADE_SAMPLES


def test_a_single_part_passes_through_untouched():
    joiner = Crossfade()
    joiner.start_part(last=True)
    chunk = np.linspace(-1, 1, FRAME, dtype=np.float32)
    assert all(np.array_equal(joiner.push(chunk), chunk) for _ in range(3))
    assert joiner.end_part().size == 0


def test_the_fade_keeps_the_power_of_independent_signals_and_has_no_step():
    # Two independent unit-power noises: the mix keeps unit power at every point of the fade.
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4000, CROSSFADE_SAMPLES)).astype(np.float32)
    power = np.mean(np.stack([equal_power_mix(x, y) for x, y in zip(a, b)]) ** 2, axis=0)
    assert np.abs(power - 1).max() < 0.12 and abs(power.mean() - 1) < 0.01
    mixed = equal_power_mix(np.ones(CROSSFADE_SAMPLES, np.float32), np.zeros(CROSSFADE_SAMPLES, np.float32))
    assert mixed[0] == pytest.approx(np.cos(np.pi / 4 / CROSSFADE_SAMPLES), abs=1e-6)  # starts at the old part
    assert mixed[-1] == pytest.approx(np.sin(np.pi / 4 / CROSSFADE_SAMPLES), abs=1e-6)  # ends at the new one
    assert np.all(np.diff(mixed) < 0) and np.abs(np.diff(mixed)).max() < 3 / CROSSFADE_SAMPLES  # no step


# --- guards ----------------------------------------------------------------------------------


def test_token_budget_grows_with_the_text_and_yields_to_a_tighter_cap():
    limits = GuardLimits()
    short, longer = token_budget("Hi.", 2000, limits), token_budget("Hello there, how are you?", 2000, limits)
    assert short % 7 == 0 and longer % 7 == 0 and 250 < short < longer < 2000
    assert token_budget("Hi.", short, limits) is None  # the client's max_new_tokens binds first


def frames_of(codes) -> np.ndarray:
    return np.repeat(np.asarray(codes, np.int64)[:, None], 7, axis=1)


@pytest.mark.parametrize("cycle", [[5], [5, 9], [1, 2, 3, 4]])
def test_repeat_guard_fires_on_a_loop_of_frames(cycle):
    watch = RepeatWatch(GuardLimits())
    assert watch.push(frames_of(range(100, 140))) is None
    loop = frames_of((cycle * 24)[:23])
    assert watch.push(loop) is None
    assert watch.push(frames_of([cycle[23 % len(cycle)]])).guard == "repeat"


def test_repeat_guard_ignores_varied_frames():
    watch = RepeatWatch(GuardLimits())
    assert watch.push(np.random.default_rng(0).integers(0, 4096, (2000, 7))) is None


def test_silence_guard_fires_after_a_long_quiet_stretch():
    limits = GuardLimits()
    watch = SilenceWatch(limits)
    quiet = np.full((limits.silence_frames - 1) * FRAME, 0.001, np.float32)
    assert watch.push(np.full(FRAME, 0.2, np.float32)) is None
    assert watch.push(quiet) is None
    assert watch.push(np.full(FRAME, 0.2, np.float32)) is None  # speech resets the count
    assert watch.push(quiet) is None
    assert watch.push(quiet[:FRAME]).guard == "silence"


def test_part_seeds_are_derived_from_the_request_seed():
    assert part_seed(42, 0, 0) == 42 and part_seed(None, 3, 1) is None
    seeds = {part_seed(42, i, a) for i in range(10) for a in range(2)}
    assert len(seeds) == 20 and all(0 <= s < 2**63 for s in seeds)
    assert part_seed(42, 3, 1) == part_seed(42, 3, 1) != part_seed(43, 3, 1)


# --- parts through the Synthesizer, on a scripted backend --------------------------------------


class ScriptedBackend:
    """Plays back, for each submitted part, frames of the codes script(params, call) gives; a script
    longer than max_tokens is a part that never says end_of_speech."""

    max_prompt_tokens = 512

    def __init__(self, script):
        self.script = script
        self.submitted: list[SynthesisParams] = []
        self.prompts: list[list[int]] = []
        self.continuations: list[bool] = []
        self.running = self.most_running = 0
        self.budgets: list[int] = []
        self.streams: list[TokenStream] = []

    def submit(self, prompt_ids, params, request_id, *, ignore_eos=False, max_tokens=0, continuation=False,
               on_ids=None):
        stream = TokenStream(request_id, on_ids=on_ids)
        codes, delay = self.script(params, len(self.submitted))
        self.submitted.append(params)
        self.prompts.append(prompt_ids)
        self.continuations.append(continuation)
        self.streams.append(stream)
        self.budgets.append(max_tokens)
        asyncio.get_running_loop().create_task(self._play(stream, codes, delay, max_tokens or params.max_new_tokens))
        return stream

    async def _play(self, stream, codes, delay, limit):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        reason = "stop" if len(codes) < limit // 7 else "length"  # as the engine says why it ended
        try:
            for code in codes[:limit // 7]:
                if stream.cancelled.is_set():
                    reason = None
                    break
                await asyncio.sleep(delay)
                stream.put(fmt.frames_to_ids(frames_of([code])))
        finally:
            self.running -= 1
            stream.finish(reason=reason)

    def stats(self):
        return {"queued": 0, "running": self.running}

    def close(self):
        pass


class LevelCodec:
    """A stand-in for SNAC: each frame decodes to 2048 samples at the level code / 4096."""

    def decode_windows(self, windows: list[Window]) -> list[np.ndarray]:
        return [np.repeat(w.frames[w.left:w.left + w.count, 0] / 4096, FRAME).astype(np.float32) for w in windows]


def level_pcm(codes) -> np.ndarray:
    return np.repeat(np.asarray(codes) / 4096, FRAME).astype(np.float32)


def tokenize(text):
    return {"input_ids": [fmt.BEGIN_OF_TEXT, *text.encode()[:8]]}


@asynccontextmanager
async def scripted(script, limits: GuardLimits | None = None, tokenizer=tokenize):
    backend = ScriptedBackend(script)
    synth = Synthesizer(tokenizer, backend, CodecWorker(LevelCodec()).start())
    if limits is not None:
        synth.guard_limits = limits
    try:
        yield synth, backend
    finally:
        synth.close()


def part_codes(index: int, frames: int) -> list[int]:
    """Distinct, varied levels for each part (period 7: no repeat guard)."""
    return [200 + 100 * (index % 30) + k % 7 for k in range(frames)]


async def test_a_5000_character_text_plays_its_parts_in_order_minus_the_crossfades():
    text = (SENTENCES * 40)[:5000]
    texts = split_text(text)
    lengths = [3 + i % 4 for i in range(len(texts))]
    rng = random.Random(2)

    def script(params, call):  # parts are submitted in order; a random pace: later ones often finish first
        return part_codes(call, lengths[call]), rng.uniform(0, 0.004)

    events = []
    async with scripted(script) as (synth, backend):
        params = SynthesisParams(text=text, voice="tara", max_new_tokens=2000, seed=9)  # 200-character parts
        pcm = await synth.synthesize(params, on_guard=lambda *event: events.append(event))
    assert [p.text for p in backend.submitted] == texts and len(texts) >= 25  # submitted in order
    assert [p.seed for p in backend.submitted] == [part_seed(9, i, 0) for i in range(len(texts))]
    assert 1 < backend.most_running <= WINDOW
    parts = [level_pcm(part_codes(i, n)) for i, n in enumerate(lengths)]
    assert len(pcm) == sum(map(len, parts)) - (len(parts) - 1) * CROSSFADE_SAMPLES
    np.testing.assert_allclose(pcm, joined(parts), atol=1e-6)  # every part, in order
    assert not events


async def test_a_listener_leaving_mid_request_cancels_every_part_at_once():
    text = (SENTENCES * 3)[:300]
    assert len(split_text(text, part_chars(2000))) == 2

    def script(params, call):  # parts that would take long: 400 frames, a frame every 10 ms
        return part_codes(call, 400), 0.01

    async with scripted(script) as (synth, backend):
        stream = synth.stream(SynthesisParams(text=text, voice="tara", max_new_tokens=2000, seed=1))
        await anext(stream)  # the first part is being heard, the second generates meanwhile
        assert len(backend.streams) == 2 and not any(s.cancelled.is_set() for s in backend.streams)
        await stream.aclose()
        assert all(s.cancelled.is_set() for s in backend.streams)  # both generations told to stop


# Two parts: a first one slow to generate, so the second is done (and unheard) long before its turn.
FIRST = "The first part goes on " + "and on " * 23 + "until it ends."
RUNAWAY = "Second part. <sigh>"
FIRST_CODES = part_codes(0, 40)


def two_parts(runaway_codes, retry_codes):
    def script(params, call):
        if params.text == FIRST:
            return FIRST_CODES, 0.02
        return (runaway_codes if call == 1 else retry_codes), 0.0
    return script


@pytest.mark.parametrize("guard, runaway_codes, limits", [
    # a budget of 17 frames for the second part (the first part's 42 are more than it needs)
    ("budget", part_codes(1, 500), GuardLimits(tokens_per_char=1, slack_tokens=100)),
    ("repeat", [700] * 500, GuardLimits()),
    ("silence", [k % 7 for k in range(500)], GuardLimits()),  # levels below 0.0015
])
async def test_a_runaway_part_not_yet_heard_is_generated_again_once(guard, runaway_codes, limits):
    events = []
    async with scripted(two_parts(runaway_codes, part_codes(2, 5)), limits) as (synth, backend):
        params = SynthesisParams(text=f"{FIRST} {RUNAWAY}", max_new_tokens=2000, seed=5)  # 200-character parts
        pcm = await synth.synthesize(params, "req-1", on_guard=lambda *event: events.append(event))
    assert [p.text for p in backend.submitted] == [FIRST, RUNAWAY, RUNAWAY]
    assert backend.submitted[2].seed == part_seed(5, 1, 1) != backend.submitted[1].seed
    assert events == [(guard, "regenerate")]
    np.testing.assert_allclose(pcm, joined([level_pcm(FIRST_CODES), level_pcm(part_codes(2, 5))]), atol=1e-6)


async def test_a_part_that_runs_away_again_is_ended_where_the_guard_fires(caplog):
    caplog.set_level(logging.WARNING)
    events = []
    async with scripted(two_parts([700] * 500, [800] * 500)) as (synth, _):
        params = SynthesisParams(text=f"{FIRST} {RUNAWAY}", max_new_tokens=2000)
        pcm = await synth.synthesize(params, "req-2", on_guard=lambda *event: events.append(event))
    assert events == [("repeat", "regenerate"), ("repeat", "truncate")]
    repeats = GuardLimits().repeat_frames
    np.testing.assert_allclose(pcm, joined([level_pcm(FIRST_CODES), level_pcm([800] * repeats)]), atol=1e-6)
    assert [r.getMessage() for r in caplog.records] == [
        f"request req-2, part 1: repeat guard: a cycle of 1 frame(s) repeated for {repeats} frames; {then}"
        for then in ("generating it again with a new seed", "ending it there")
    ]


# --- splitting that a leaving listener stops, prompts over the limit, a full queue -------------


@contextmanager
def one_worker_thread():
    """asyncio.to_thread runs its calls one at a time, in order, on one thread: once a call made
    later has run, every call made before it has ended."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as executor:
        loop.set_default_executor(executor)
        try:
            yield
        finally:
            loop.set_default_executor(ThreadPoolExecutor())


async def test_a_listener_leaving_while_the_text_is_segmented_stops_the_splitting_within_a_piece(monkeypatch):
    real = pysbd.Segmenter
    seen, entered, release = [], threading.Event(), threading.Event()

    class BlockingSegmenter:
        """pysbd's, recording the length of each text; the first call waits for `release`."""

        def __init__(self, **kw):
            self.inner = real(**kw)

        def segment(self, text):
            seen.append(len(text))
            entered.set()
            release.wait()
            return self.inner.segment(text)

    monkeypatch.setattr(pysbd, "Segmenter", BlockingSegmenter)
    text = (SENTENCES * 40)[:5000]
    async with scripted(lambda params, call: (part_codes(call, 3), 0.0)) as (synth, backend):
        with one_worker_thread():
            listener = asyncio.create_task(synth.synthesize(SynthesisParams(text=text, max_new_tokens=2000)))
            while not entered.is_set():
                await asyncio.sleep(0.001)
            listener.cancel()  # the client left while the first piece is being segmented
            with pytest.raises(asyncio.CancelledError):
                await listener
            release.set()
            await asyncio.to_thread(lambda: None)  # every segmenting call made before has ended
    assert seen == [pieces(text)[0][1]] == [487]  # the first piece only
    assert backend.submitted == []


class ByteTokenizer:
    """One id per UTF-8 byte (an emoji takes 4), recording the texts it is given."""

    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, text):
        self.texts.append(text)
        return {"input_ids": [fmt.BEGIN_OF_TEXT, *text.encode()]}


PLAIN = [
    ("The first sentence is plain, with nothing but letters and spaces, and it goes on long enough that no "
     "other sentence fits beside it."),
    ("The second sentence is also plain, and also long enough to need a part of its own in a request with a "
     "budget of two thousand tokens."),
    ("The fourth sentence is plain again, it closes the text and it takes a part of its own as the first two "
     "did, right at the end."),
]
FACES = "Then three dozen faces: " + "\U0001F600" * 36 + " and that was all."  # 78 characters, 198 prompt ids


async def test_a_part_over_the_prompt_limit_is_split_further_and_every_part_is_heard():
    text = " ".join([PLAIN[0], PLAIN[1], FACES, PLAIN[2]])
    tokenizer = ByteTokenizer()
    async with scripted(lambda params, call: (part_codes(call, 3), 0.0), tokenizer=tokenizer) as (synth, backend):
        backend.max_prompt_tokens = 160  # the plain parts take 137 to 144 prompt ids; FACES 198
        pcm = await synth.synthesize(SynthesisParams(text=text, voice="tara", max_new_tokens=2000, seed=4), "req-f")
    texts = [PLAIN[0], PLAIN[1], "Then three dozen faces:", "\U0001F600" * 36, "and that was all.", PLAIN[2]]
    assert [p.text for p in backend.submitted] == texts
    assert backend.prompts == [fmt.build_prompt(ByteTokenizer(), t, "tara") for t in texts]
    assert [len(ids) for ids in backend.prompts] == [143, 144, 35, 156, 29, 137]  # each at most 160
    # Each text tokenized once: the parts as split by characters, then the ones FACES was split into.
    assert tokenizer.texts == [f"tara: {t}" for t in [
        PLAIN[0], PLAIN[1], FACES, "Then three dozen faces: " + "\U0001F600" * 36, *texts[2:]]]
    assert backend.continuations == [False, True, True, True, True, True]
    np.testing.assert_allclose(pcm, joined([level_pcm(part_codes(i, 3)) for i in range(6)]), atol=1e-6)


async def test_a_part_that_cannot_fit_the_prompt_limit_is_an_input_error_before_any_audio():
    text = "Fine. " * 40 + "\U0001F600" * 30 + "."
    async with scripted(lambda params, call: (part_codes(call, 3), 0.0), tokenizer=ByteTokenizer()) as (synth, backend):
        backend.max_prompt_tokens = 40  # 16 emoji, the shortest part, take 76
        stream = synth.stream(SynthesisParams(text=text, voice="tara", max_new_tokens=2000))
        with pytest.raises(InputError) as error:
            await anext(stream)
    assert error.value.field == "text"
    assert str(error.value) == ("text: too long for one generation even when split "
                                "(76 prompt tokens for 16 characters, at most 40)")
    assert backend.submitted == []  # nothing generated, so nothing was heard


@pytest.mark.parametrize("backend", ["engine", "reference"])
async def test_a_full_queue_refuses_a_new_request_never_a_later_part_of_one_under_way(demo_config, backend):
    synth = Synthesizer.load(dataclasses.replace(demo_config, backend=backend, max_slots=1, max_queue=1))
    outcomes = []
    submit = synth.backend.submit

    def recording(prompt_ids, params, request_id, **kw):
        try:
            stream = submit(prompt_ids, params, request_id, **kw)
        except QueueFullError:
            outcomes.append((request_id, "refused"))
            raise
        outcomes.append((request_id, "queued"))
        return stream

    synth.backend.submit = recording
    try:
        busy = synth.stream_ids(SynthesisParams(text="Busy.", max_new_tokens=2000, seed=1), "busy", ignore_eos=True)
        await anext(busy)  # generating: the one slot (the reference backend: its one generation) is taken
        params = SynthesisParams(text="Hello there. And a second.", voice="tara", max_new_tokens=100, seed=3)
        request = asyncio.create_task(synth.synthesize(params, "req-q", ignore_eos=True))  # two parts
        while len(outcomes) < 3:
            await asyncio.sleep(0.01)
        assert outcomes == [("busy", "queued"), ("req-q", "queued"), ("req-q-1.0", "queued")]
        assert synth.stats()["queued"] == 2  # over max_queue=1: the second part is a continuation
        with pytest.raises(QueueFullError):
            synth.submit_ids(SynthesisParams(text="A new request."), "new")
        with pytest.raises(InputError, match=r"^text: too long for one generation \(513 prompt tokens, at most 512\)$"):
            synth.backend.submit([fmt.START_OF_HUMAN] * 513, params, "too-long")
        await busy.aclose()
        pcm = await request
    finally:
        synth.close()
    assert synth.backend.max_prompt_tokens == 512
    assert len(pcm) == 2 * 14 * FRAME - CROSSFADE_SAMPLES


# --- the demo model ----------------------------------------------------------------------------


async def test_demo_model_joins_its_parts_with_the_crossfades(synthesizer):
    text = "Hello there. And a second."
    assert len(split_text(text, part_chars(100))) == 2  # parts of 16 characters at most
    params = SynthesisParams(text=text, voice="tara", max_new_tokens=100, seed=3)
    pcm = await synthesizer.synthesize(params, ignore_eos=True)
    assert len(pcm) == 2 * 14 * FRAME - CROSSFADE_SAMPLES
    assert np.isfinite(pcm).all() and np.abs(pcm).max() <= 1.0


async def test_forced_runaway_on_the_demo_model_fires_the_guard_once_and_completes(synthesizer, monkeypatch, caplog):
    # end_of_speech suppressed: every generation runs until it is stopped
    submit = synthesizer.backend.submit
    monkeypatch.setattr(synthesizer.backend, "submit", lambda *args, **kw: submit(*args, **{**kw, "ignore_eos": True}))
    caplog.set_level(logging.WARNING)
    budget = token_budget("Hi.", 400, synthesizer.guard_limits)
    async with serve(synthesizer) as (client, app):
        response = await client.post(V1, json={"text": "Hi.", "voice": "tara", "max_new_tokens": 400, "seed": 3})
        metrics = app.state.server.metrics.registry
    assert response.status_code == 200, response.text
    # A whole file is heard only when complete: the part is generated again, then ends at its budget.
    assert wav_samples(response.content) == budget // 7 * FRAME
    for action in ("regenerate", "truncate"):
        assert metrics.get_sample_value("orpheus_guard_fired_total", {"guard": "budget", "action": action}) == 1
    request_id = response.headers["x-request-id"]
    assert [r for r in caplog.records if request_id in r.getMessage() and "budget guard" in r.getMessage()]


# --- speed -----------------------------------------------------------------------------------


class ToneSynth:
    """Three seconds of a 220 Hz tone, in frame-sized chunks."""

    SECONDS = 36 * FRAME / 24000

    async def stream(self, params, request_id=None, on_guard=None, whole_file=False):
        t = np.arange(36 * FRAME) / 24000
        for chunk in np.split((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 36):
            yield chunk

    def stats(self):
        return {"queued": 0, "running": 0}

    def codec_backlog_s(self) -> float:
        return 0.0


async def durations(client, speed: float) -> dict[str, float]:
    """Seconds of audio each route returns at `speed`."""
    out = {}
    pcm = await client.post(SPEECH, json={"input": "Hi.", "response_format": "pcm", "speed": speed})
    out["openai"] = len(pcm.content) / 2 / 24000
    for stream in (False, True):
        wav = await client.post(V1, json={"text": "Hi.", "speed": speed, "stream": stream})
        assert wav.status_code == 200, wav.text
        out[f"segmind-stream={stream}"] = (len(wav.content) - 44) / 2 / 24000
    job = (await client.post(V2, json={"text": "Hi.", "speed": speed})).json()
    while (await client.get(job["status_url"])).json()["status"] != "COMPLETED":
        await asyncio.sleep(0.02)
    output = (await client.get(job["response_url"])).json()["output"]
    out["segmind-v2"] = wav_samples((await client.get(output)).content) / 24000
    return out


@pytest.mark.parametrize("speed", [2.0, 0.5])
async def test_speed_scales_the_duration_on_every_route(speed):
    async with serve(ToneSynth()) as (client, _):
        got = await durations(client, speed)
    for route, seconds in got.items():
        assert seconds == pytest.approx(ToneSynth.SECONDS / speed, rel=0.02), route


# --- errors ----------------------------------------------------------------------------------


async def test_text_over_the_limit_is_413_naming_the_limit():
    async with serve(ToneSynth(), max_text_chars=1000) as (client, _):
        segmind = await client.post(V1, json={"text": "a" * 1001})
        openai = await client.post(SPEECH, json={"input": "a" * 1001})
        fits = await client.post(V1, json={"text": "a" * 1000})
    assert segmind.status_code == openai.status_code == 413
    assert segmind.json()["error"].startswith("text: 1001 characters is more than the 1000 one request may have")
    assert openai.json()["error"]["param"] == "input" and openai.json()["error"]["code"] == "text_too_long"
    assert fits.status_code == 200


async def test_the_default_limit_is_20000_characters():
    assert ServerSettings().max_text_chars == 20000


async def test_unsupported_tags_are_400_naming_the_tag():
    async with serve(ToneSynth()) as (client, _):
        segmind = await client.post(V1, json={"text": "So <happy> today."})
        openai = await client.post(SPEECH, json={"input": "A <whisper> secret."})
        fine = await client.post(V1, json={"text": "So <laugh> today."})
    assert segmind.status_code == openai.status_code == 400
    assert segmind.json()["error"].startswith("text: unsupported tag <happy>")
    assert openai.json()["error"]["message"].startswith("input: unsupported tag <whisper>")  # OpenAI's field
    assert openai.json()["error"]["param"] == "input"
    assert fine.status_code == 200
