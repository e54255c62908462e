"""The Synthesizer facade: engine tokens -> streamed PCM, lengths, cancellation, backend choice."""

import asyncio
import threading
from dataclasses import replace

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.synthesizer import Synthesizer


async def test_forced_length_gives_exactly_2048_samples_per_whole_frame(synthesizer):
    params = SynthesisParams(text="Hello there", voice="zoe", max_new_tokens=103, seed=4)
    pcm = await synthesizer.synthesize(params, ignore_eos=True)
    assert pcm.dtype == np.float32 and pcm.shape == (14 * fmt.SAMPLES_PER_FRAME,)
    assert np.isfinite(pcm).all() and np.abs(pcm).max() <= 1.0


async def test_first_chunk_is_one_frame_and_chunks_cover_every_frame(synthesizer):
    params = SynthesisParams(text="Hi", voice="tara", max_new_tokens=140, seed=5)
    chunks = [c async for c in synthesizer.stream(params, ignore_eos=True)]
    assert len(chunks[0]) == fmt.SAMPLES_PER_FRAME
    assert sum(map(len, chunks)) == 20 * fmt.SAMPLES_PER_FRAME


async def test_leaving_the_stream_early_frees_the_slot(synthesizer, monkeypatch):
    core = synthesizer.backend.core
    step, idle = core.step, threading.Event()

    def step_and_note_idle():
        outputs = step()
        if not core.has_work():
            idle.set()
        return outputs

    monkeypatch.setattr(core, "step", step_and_note_idle)
    params = SynthesisParams(text="Hi", voice="tara", max_new_tokens=2000, seed=6)
    stream = synthesizer.stream(params, ignore_eos=True)
    await stream.__anext__()
    await stream.aclose()
    assert await asyncio.to_thread(idle.wait, 30)  # the engine dropped it (well before its 2000 tokens)
    assert synthesizer.stats()["running"] == 0 and synthesizer.stats()["queued"] == 0


async def test_reference_backend_is_selectable(demo_config):
    synth = Synthesizer.load(replace(demo_config, backend="reference"))
    try:
        params = SynthesisParams(text="Hi", voice="tara", max_new_tokens=100, seed=8)
        pcm = await synth.synthesize(params, ignore_eos=True)
        assert pcm.shape == (14 * fmt.SAMPLES_PER_FRAME,)
    finally:
        synth.close()
