"""RemoteSynthesizer against a stand-in for a checkpoint deployment's handle: the audio comes through
in order, the guards reach on_guard, leaving early cancels the remote generation, and a deployment
with no room left is the engine's QueueFullError (a 429), not a failure."""

from __future__ import annotations

import numpy as np
import pytest
from ray.serve.exceptions import BackPressureError

from orpheus_local.errors import QueueFullError
from orpheus_local.params import SynthesisParams
from orpheus_local.voices import ENGLISH_VOICES
from server.checkpoint_replicas import GuardFired, RemoteSynthesizer

PARAMS = SynthesisParams(text="Hello there.", voice="tara", max_new_tokens=100, seed=1)


class Generation:
    """What handle.options(stream=True).stream.remote() gives: an async iterator that can be cancelled."""

    def __init__(self, items):
        self.items = list(items)
        self.cancelled = False
        self.taken = 0

    def __aiter__(self):
        return self

    def cancel(self):
        self.cancelled = True

    async def __anext__(self):
        if self.taken == len(self.items):
            raise StopAsyncIteration
        item = self.items[self.taken]
        self.taken += 1
        if isinstance(item, Exception):
            raise item
        return item


class Handle:
    def __init__(self, items):
        self.generation = Generation(items)
        self.calls = []

    def options(self, stream: bool):
        assert stream
        return self

    @property
    def stream(self):
        return self

    def remote(self, *args):
        self.calls.append(args)
        return self.generation


def chunk(value: float) -> np.ndarray:
    return np.full(4, value, np.float32)


async def test_chunks_come_through_in_order_and_guards_reach_on_guard():
    handle = Handle([chunk(1), GuardFired("length", "end"), chunk(2), GuardFired("repeat", "retry")])
    fired = []
    remote = RemoteSynthesizer(handle, ENGLISH_VOICES)
    got = [pcm async for pcm in remote.stream(PARAMS, "r1", on_guard=lambda g, a: fired.append((g, a)))]
    assert [pcm[0] for pcm in got] == [1.0, 2.0]
    assert fired == [("length", "end"), ("repeat", "retry")]
    assert handle.calls == [(PARAMS, "r1", False, False)] and handle.generation.cancelled  # a no-op once done
    audio = await RemoteSynthesizer(Handle([chunk(1), chunk(2)]), ENGLISH_VOICES).synthesize(PARAMS, "r2")
    assert audio.tolist() == [1.0] * 4 + [2.0] * 4


async def test_leaving_early_cancels_the_remote_generation():
    handle = Handle([chunk(1), chunk(2), chunk(3)])
    generation = handle.generation
    stream = RemoteSynthesizer(handle, ENGLISH_VOICES).stream(PARAMS, "r1")
    assert (await anext(stream))[0] == 1.0
    await stream.aclose()
    assert generation.cancelled and generation.taken == 1


async def test_a_full_deployment_is_a_queue_full_error():
    handle = Handle([BackPressureError(num_queued_requests=8, max_queued_requests=8)])
    with pytest.raises(QueueFullError):
        [pcm async for pcm in RemoteSynthesizer(handle, ENGLISH_VOICES).stream(PARAMS, "r1")]
