"""The batched engine: seeds across batch compositions, slot reuse, cancellation, queue limit, faults."""

import asyncio

import pytest

from orpheus_local import format as fmt
from orpheus_local.checkpoint import load_tokenizer
from orpheus_local.config import EngineConfig
from orpheus_local.engine.engine import Engine
from orpheus_local.errors import GenerationError, QueueFullError
from orpheus_local.params import SynthesisParams


@pytest.fixture(scope="module")
def engine(demo_dirs):
    config = EngineConfig(model=str(demo_dirs[0]), device="cpu", max_slots=4, max_queue=8,
                          max_prompt_tokens=128, max_new_tokens=300)
    eng = Engine.load(config, demo_dirs[0], "cpu", "float32")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompt(demo_dirs):
    return fmt.build_prompt(load_tokenizer(demo_dirs[0]), "Hello <sigh> there", "leah")


def params(seed, tokens=100, **kw):
    return SynthesisParams(text="x", max_new_tokens=tokens, seed=seed, **kw)


async def collect(stream):
    return [i async for ids in stream for i in ids]


async def test_same_seed_same_ids_alone_or_beside_seven_others(engine, prompt):
    alone = await collect(engine.submit(prompt, params(11), "alone", ignore_eos=True))
    others = [engine.submit(prompt[:-6] + prompt[-4:], params(s, 100 + 7 * s), f"o{s}", ignore_eos=True) for s in range(7)]
    crowded = engine.submit(prompt, params(11), "crowded", ignore_eos=True)
    results = await asyncio.gather(collect(crowded), *map(collect, others))
    assert len(alone) == 98 and results[0] == alone
    assert all(r != alone for r in results[1:])


async def test_every_id_fits_the_frame_layout_and_lengths_are_exact(engine, prompt):
    ids = await collect(engine.submit(prompt, params(3, 103, temperature=1.5, top_p=1.0), "len", ignore_eos=True))
    assert len(ids) == 98  # 103 sampled, the 15th frame incomplete and never handed out
    for k, token in enumerate(ids):
        lo, hi = fmt.position_range(k % 7)
        assert lo <= token < hi


async def test_slot_is_reused_after_finish_and_after_cancel(engine, prompt):
    first = await collect(engine.submit(prompt, params(21), "a", ignore_eos=True))
    stream = engine.submit(prompt, params(22, 300), "cancel-me", ignore_eos=True)
    got = await stream.__anext__()
    assert len(got) == 7
    stream.cancel()
    rest = await collect(stream)
    assert len(rest) < 280  # left early
    for _ in range(50):
        if engine.stats()["running"] == 0:
            break
        await asyncio.sleep(0.02)
    assert engine.stats() == {"queued": 0, "running": 0, "slots": 4}
    assert sorted(engine.scheduler.free_slots) == [0, 1, 2, 3]
    again = await collect(engine.submit(prompt, params(21), "a-again", ignore_eos=True))
    assert again == first  # a reused slot carries nothing over


async def test_queue_limit_raises_queue_full(engine, prompt):
    streams = []
    with pytest.raises(QueueFullError):
        for s in range(30):
            streams.append(engine.submit(prompt, params(s, 300), f"q{s}", ignore_eos=True))
    # 8 wait in the queue; at most the 4 slots' worth were admitted meanwhile.
    assert 8 <= len(streams) <= 12
    for s in streams:
        s.cancel()
    await asyncio.gather(*(collect(s) for s in streams))


async def test_one_failing_request_leaves_the_others_intact(engine, prompt, monkeypatch):
    good = engine.submit(prompt, params(31, 200), "good", ignore_eos=True)
    await good.__anext__()  # running
    original = engine.runner.prefill

    def failing_prefill(requests):
        if any(r.request_id == "bad" for r in requests):
            raise RuntimeError("injected fault")
        return original(requests)

    monkeypatch.setattr(engine.runner, "prefill", failing_prefill)
    bad = engine.submit(prompt, params(32), "bad", ignore_eos=True)
    with pytest.raises(GenerationError, match="bad"):
        await collect(bad)
    rest = await collect(good)
    assert len(rest) == 196 - 7
    solo = await collect(engine.submit(prompt, params(31, 200), "solo", ignore_eos=True))
    assert len(solo) == 196


def test_prompt_longer_than_the_cache_allows_is_rejected(engine):
    with pytest.raises(ValueError, match="^text: too long"):
        engine.submit([fmt.START_OF_HUMAN] * 129, params(1), "long")
