"""Exact, reproducible audio: seeded codec noise, fixed windows for whole files, forced lengths,
top-k, the length guard, a stored output head."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from support.asgi import SHORT, V1, serve

from orpheus_local import tokens as fmt
from orpheus_local.audio.snac import SnacCodec
from orpheus_local.audio.windows import FRAME_SECONDS, StreamDecoder, Window
from orpheus_local.config import EngineConfig
from orpheus_local.engine.core import EngineCore
from orpheus_local.model import Sampler
from orpheus_local.model.loader import load_llama
from orpheus_local.model.sampler import COLUMNS, STOP_COLUMN
from orpheus_local.params import SynthesisParams
from orpheus_local.text.split import MAX_PART_CHARS, MIN_PART_CHARS, part_chars
from orpheus_local.weights.checkpoint import CheckpointError, load_snac, load_tokenizer

SPF = fmt.SAMPLES_PER_FRAME


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - test) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)) if noise else float("inf")


def random_frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, fmt.CODEBOOK_SIZE, (n, fmt.FRAME_TOKENS))


@pytest.fixture(scope="module")
def noisy(demo_dirs) -> SnacCodec:
    """The codec as served: noise blocks on."""
    return SnacCodec(load_snac(demo_dirs[1]), "cpu")


def windows_of(decoder: StreamDecoder, frames: np.ndarray, speed: float = 3.0) -> list[Window]:
    """Push one frame at a time at `speed` x real time on a simulated clock; the windows handed out."""
    now = [0.0]
    decoder._clock = lambda: now[0]
    out = []
    for i in range(len(frames)):
        now[0] = i * FRAME_SECONDS / speed
        decoder.push(frames[i:i + 1])
        out.extend(iter(decoder.ready_window, None))
    decoder.finish()
    out.extend(iter(decoder.ready_window, None))
    assert decoder.done
    return out


# --- seeded codec noise ---------------------------------------------------------------------------


def test_streamed_with_noise_matches_one_shot_decoded_beside_another_stream(noisy):
    frames, other = random_frames(24, seed=1), random_frames(24, seed=2)
    mine = windows_of(StreamDecoder(noise_key=5), frames)
    theirs = windows_of(StreamDecoder(noise_key=6), other)
    pcm = noisy.decode_windows(mine + theirs)  # equal lengths share calls with the other stream
    assert len({len(w.frames) for w in mine} & {len(w.frames) for w in theirs}) > 0
    streamed = np.concatenate(pcm[:len(mine)])
    one_shot = noisy.decode(frames, noise_key=5)
    assert streamed.shape == one_shot.shape == (24 * SPF,)
    assert snr_db(one_shot, streamed) >= 40


def test_noise_depends_on_the_key_only(noisy):
    frames = random_frames(6, seed=3)
    a = noisy.decode(frames, noise_key=11)
    np.testing.assert_array_equal(a, noisy.decode(frames, noise_key=11))
    assert snr_db(a, noisy.decode(frames, noise_key=12)) < 20  # another key: other noise
    assert not np.array_equal(noisy.decode(frames), noisy.decode(frames))  # no key: fresh noise each time


def test_a_window_batched_with_others_gets_its_own_noise(noisy):
    """The same key and position give the same noise whatever the other rows of the call are."""
    frames = random_frames(8, seed=4)
    w = Window(frames, 2, 5, 10, noise_key=21)  # frames 8..15 of some stream
    others = [Window(random_frames(8, seed=s), 2, 5, 10, noise_key=s) for s in range(3)]
    alone = noisy.decode_windows([w])[0]
    batched = noisy.decode_windows(others[:2] + [w] + others[2:])[2]
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    moved = noisy.decode_windows([Window(frames, 2, 5, 11, noise_key=21)])[0]  # one frame later in its stream
    assert snr_db(alone, moved) < 20


def test_whole_file_windows_are_fixed_and_equal_the_one_shot_decode(noisy):
    frames = random_frames(70, seed=5)
    paced = windows_of(StreamDecoder.whole_file(noise_key=9), frames, speed=3.0)
    burst = StreamDecoder.whole_file(noise_key=9)  # the same frames all at once, finished early
    burst.push(frames)
    burst.finish()
    at_once = list(iter(burst.ready_window, None))
    assert [(w.start, w.count, len(w.frames)) for w in paced] == [(w.start, w.count, len(w.frames)) for w in at_once]
    assert [w.count for w in paced] == [32, 32, 6] and all(w.alone for w in paced)
    whole = np.concatenate(noisy.decode_windows(paced))
    one_shot = noisy.decode(frames, noise_key=9)
    assert np.abs(whole - one_shot).max() < 1 / 32768  # the seams are below the 16-bit step
    np.testing.assert_array_equal(whole, np.concatenate(noisy.decode_windows(at_once)))


def test_alone_windows_never_share_a_call(noisy, monkeypatch):
    calls = []
    decode = noisy._decode_batch
    monkeypatch.setattr(noisy, "_decode_batch", lambda ws: calls.append(len(ws)) or decode(ws))
    frames = random_frames(9, seed=6)
    noisy.decode_windows([Window(frames, 3, 3, 3, 1, alone=True), Window(frames, 3, 3, 3, 2, alone=True),
                          Window(frames, 3, 3, 3, 3), Window(frames, 3, 3, 3, 4)])
    assert sorted(calls) == [1, 1, 2]


# --- sampler: forced length and top-k ----------------------------------------------------------------


def test_ignore_eos_never_picks_the_stop_even_when_it_wins():
    sampler = Sampler(2)
    sampler.reset(0, temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=1, allow_stop=False)
    sampler.reset(1, temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=1)
    slots = torch.arange(2)
    logits = torch.randn(2, COLUMNS, generator=torch.Generator().manual_seed(0))
    logits[:, STOP_COLUMN] = 100.0
    forced = []
    for _ in range(21):
        ids = sampler.sample(logits, slots, sampler.frame_positions(slots)).tolist()
        forced.append(ids[0])
        if len(forced) == 1:
            assert ids[1] == fmt.END_OF_SPEECH  # allowed: taken at the first frame boundary
    assert fmt.END_OF_SPEECH not in forced


def test_top_k_1_is_greedy_over_the_allowed_ids():
    rows = 16
    sampler = Sampler(rows)
    for slot in range(rows):
        sampler.reset(slot, temperature=1.3, top_p=1.0, repetition_penalty=1.0, top_k=1, seed=slot)
    slots = torch.arange(rows)
    gen = torch.Generator().manual_seed(1)
    for _ in range(14):
        frame_pos = sampler.frame_positions(slots)
        logits = torch.randn(rows, COLUMNS, generator=gen)
        logits[::3, STOP_COLUMN] = 9.0  # the best id where a stop is allowed (frame boundaries), not elsewhere
        allowed = logits.clone()
        allowed[frame_pos != 0, STOP_COLUMN] = float("-inf")
        best = allowed.argmax(dim=1)
        want = torch.where(best == STOP_COLUMN, fmt.END_OF_SPEECH, fmt.AUDIO_BASE + frame_pos * 4096 + best)
        assert torch.equal(sampler.sample(logits, slots, frame_pos), want)


def test_top_k_warp_matches_transformers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    sampler = Sampler(3)
    settings = [(0.7, 0.9, 5), (1.0, 1.0, 50), (1.2, 0.5, 4096)]
    for slot, (temperature, top_p, top_k) in enumerate(settings):
        sampler.reset(slot, temperature=temperature, top_p=top_p, repetition_penalty=1.0, top_k=top_k, seed=slot)
    logits = torch.randn(3, COLUMNS, generator=torch.Generator().manual_seed(2))
    logits[:, 100:110] = 3.0  # ties around the k-th value
    frame_pos = torch.zeros(3, dtype=torch.long)
    got = sampler.warp(logits, torch.arange(3), frame_pos)
    for row, (temperature, top_p, top_k) in enumerate(settings):
        ids = torch.zeros(1, 1, dtype=torch.long)
        want = TemperatureLogitsWarper(temperature)(ids, logits[row:row + 1].clone())
        want = TopKLogitsWarper(top_k)(ids, want)
        want = TopPLogitsWarper(top_p)(ids, want)
        torch.testing.assert_close(got[row], want[0], rtol=1e-6, atol=0)


@pytest.fixture(scope="module")
def core(demo_dirs):
    config = EngineConfig(model=str(demo_dirs[0]), device="cpu", max_slots=4, max_queue=4,
                          max_prompt_tokens=128, max_new_tokens=200)
    return EngineCore.load(config, demo_dirs[0], "cpu", "float32")


def run(core: EngineCore) -> dict:
    """Step the engine until it is idle: {request: the ids it handed out}."""
    ids = {}
    while core.has_work():
        for out in core.step():
            ids.setdefault(out.request, []).extend(out.ids)
    return ids


def test_engine_forced_length_holds_against_a_winning_stop(core, demo_dirs, monkeypatch):
    model = core.runner.model
    audio_logits = model.audio_logits

    def stop_wins(hidden, frame_pos):
        logits = audio_logits(hidden, frame_pos)
        logits[:, STOP_COLUMN] = 1e4
        return logits

    monkeypatch.setattr(model, "audio_logits", stop_wins)
    prompt = fmt.build_prompt(load_tokenizer(demo_dirs[0]), "Hello there", "tara")
    params = SynthesisParams(text="Hello there", max_new_tokens=105, seed=4)
    forced, free = core.add(prompt, params, ignore_eos=True), core.add(prompt, params)
    ids = run(core)
    assert len(ids[forced]) == 105 and all(fmt.is_audio_id(i) for i in ids[forced])
    assert ids[free] == [] and free.generated == []  # the stop is taken at once


def test_top_k_reaches_the_engine(core, demo_dirs):
    prompt = fmt.build_prompt(load_tokenizer(demo_dirs[0]), "Hi", "tara")
    params = SynthesisParams(text="Hi", max_new_tokens=100, seed=8, temperature=1.5, top_p=1.0)
    wide, narrow, greedy_a, greedy_b = (
        core.add(prompt, p, ignore_eos=True)
        for p in (params, params.replace(top_k=2), params.replace(top_k=1), params.replace(top_k=1, seed=9)))
    ids = run(core)
    assert ids[greedy_a] == ids[greedy_b]  # top_k=1 leaves nothing to the seed
    assert ids[narrow] != ids[wide] and ids[narrow] != ids[greedy_a]


# --- long text: parts sized from max_new_tokens, cuts counted ----------------------------------------


def test_parts_fit_their_token_budget_at_a_slow_pace():
    assert part_chars(1200) == 136  # 14.6 s, less a second, at 10 characters a second
    assert part_chars(2000) == MAX_PART_CHARS and part_chars(100) == MIN_PART_CHARS
    for tokens in range(100, 2001, 50):
        seconds = tokens / fmt.TOKENS_PER_SECOND
        assert part_chars(tokens) <= max(MIN_PART_CHARS, 10 * seconds)


async def test_part_cut_at_max_new_tokens_is_reported_as_length(synthesizer):
    """The demo model never says end_of_speech; with max_new_tokens under the budget guard's
    allowance, the cut is the client's cap, reported as the length guard, never redone."""
    events = []
    params = SynthesisParams(text="Hello there.", voice="tara", max_new_tokens=100, seed=2)
    pcm = await synthesizer.synthesize(params, on_guard=lambda *e: events.append(e))
    assert events == [("length", "truncate")]
    assert len(pcm) == 100 // 7 * SPF


async def test_parts_are_sized_from_max_new_tokens(synthesizer, monkeypatch):
    texts = []
    submit = synthesizer.backend.submit

    def recording(prompt_ids, params, *args, **kw):
        texts.append(params.text)
        return submit(prompt_ids, params, *args, **kw)

    monkeypatch.setattr(synthesizer.backend, "submit", recording)
    text = "One short sentence here. Another one follows it. And a third to end."
    params = SynthesisParams(text=text, voice="tara", max_new_tokens=120, seed=1)
    await synthesizer.synthesize(params, ignore_eos=True)
    assert len(texts) > 1 and all(len(t) <= part_chars(120) for t in texts)
    assert " ".join(texts) == text


# --- a stored output head ------------------------------------------------------------------------------


@pytest.fixture
def tied_with_head(demo_dirs, tmp_path):
    """The demo checkpoint (its config ties the head) plus a stored lm_head.weight."""
    model_dir = tmp_path / "model"
    shutil.copytree(demo_dirs[0], model_dir)
    assert json.loads((model_dir / "config.json").read_text())["tie_word_embeddings"] is True
    tensors = load_file(model_dir / "model.safetensors")
    embed = tensors["model.embed_tokens.weight"]
    tensors["lm_head.weight"] = torch.randn(embed.shape, generator=torch.Generator().manual_seed(3)) * 0.05
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    return model_dir, tensors


def test_a_stored_head_wins_over_a_tied_config(tied_with_head, caplog):
    from transformers import LlamaForCausalLM

    model_dir, tensors = tied_with_head
    caplog.set_level("INFO")
    ours = load_llama(model_dir, "cpu", torch.float32)
    assert "using the stored head" in caplog.text
    torch.testing.assert_close(ours.head_weight, tensors["lm_head.weight"], rtol=0, atol=0)
    theirs = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    hidden = torch.randn(2, ours.config.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        torch.testing.assert_close(ours.logits(hidden), theirs.lm_head(hidden), rtol=1e-5, atol=1e-5)


def test_a_stored_head_of_the_wrong_shape_is_a_load_error(tied_with_head):
    model_dir, tensors = tied_with_head
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:, :-1].contiguous()
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: lm_head\.weight has shape"):
        load_llama(model_dir, "cpu", torch.float32)


async def test_length_cuts_are_counted_in_the_metrics(synthesizer):

    async with serve(synthesizer) as (client, app):
        response = await client.post(V1, json=SHORT)  # "Hello there.", 100 tokens: under the budget guard
        registry = app.state.server.metrics.registry
    assert response.status_code == 200
    assert registry.get_sample_value("orpheus_guard_fired_total", {"guard": "length", "action": "truncate"}) == 1
    assert registry.get_sample_value("orpheus_guard_fired_total", {"guard": "budget", "action": "regenerate"}) is None
