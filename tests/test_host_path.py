"""The host's work per frame and per chunk: one wake-up of the event loop per engine step, a codec
woken only when a window falls due, light encoders without a thread hop, engine steps counted and
exported, and the benchmark client's session."""

from __future__ import annotations

import asyncio
import struct
import threading

import numpy as np
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from bench.clients import open_session
from orpheus_local import tokens as fmt
from orpheus_local.audio.encoders import StreamEncoder, wav_stream_header
from orpheus_local.audio.simulated import SpeechLikeCodec
from orpheus_local.audio.windows import StreamDecoder
from orpheus_local.audio.worker import CodecCore
from orpheus_local.engine.core import EngineCore
from orpheus_local.engine.driver import EngineDriver
from orpheus_local.engine.simulated import SimulatedRunner
from orpheus_local.handoff import Handoff
from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.guards import GuardLimits, RepeatWatch
from server.generation import encoded
from server.metrics import Metrics

FRAMES = 5
CONCURRENT = 150  # above aiohttp's default pool limit (100)


def simulated_core(slots: int) -> EngineCore:
    return EngineCore(SimulatedRunner(num_slots=slots, step_s=0, frames=FRAMES), max_queue=slots)


def alone(seed: int) -> list[int]:
    core = simulated_core(1)
    request = core.add([1, 2, 3], SynthesisParams(text="x", seed=seed), "alone")
    while core.has_work():
        core.step()
    return request.generated


async def ids_of(stream) -> list[int]:
    return [i async for ids in stream for i in ids]


async def test_a_step_hands_every_streams_ids_to_the_loop_in_one_wakeup():
    loop = asyncio.get_running_loop()
    hops = []
    call = loop.call_soon_threadsafe

    def counted(*args):
        hops.append(args)
        return call(*args)

    loop.call_soon_threadsafe = counted
    driver = EngineDriver(simulated_core(8)).start()
    try:
        streams = [driver.submit([1, 2, 3], SynthesisParams(text="x", seed=seed), f"r{seed}") for seed in range(8)]
        got = [await ids_of(stream) for stream in streams]
        steps = driver.stats()["steps"]
    finally:
        driver.close()
        del loop.call_soon_threadsafe
    assert got == [alone(seed) for seed in range(8)] and all(len(ids) == FRAMES * 7 for ids in got)
    assert [s.finish_reason for s in streams] == ["stop"] * 8
    items = 8 * (FRAMES + 1)  # each stream's frames and its end
    assert len(hops) <= steps < items  # a hop per item would be `items` hops


async def test_engine_steps_are_counted_and_exported_as_counters():
    driver = EngineDriver(simulated_core(2)).start()
    try:
        stream = driver.submit([1, 2, 3], SynthesisParams(text="x", seed=1), "r")
        assert len([ids async for ids in stream]) == FRAMES
    finally:
        driver.close()  # the thread joined: its last step is counted (it ends the stream before counting)
    stats = driver.stats()
    # The first step prefills and decodes (2 ids), one id a step after that, and a last step says stop.
    assert stats["steps"] == FRAMES * 7 and stats["step_seconds"] > 0

    metrics = Metrics()
    metrics.watch(in_flight=lambda: 0, queued=lambda: 0, engine=lambda: stats)
    text = generate_latest(metrics.registry).decode()
    assert f"orpheus_engine_steps_total {float(stats['steps'])}" in text
    assert f"orpheus_engine_step_seconds_total {stats['step_seconds']}" in text


def test_metrics_leave_the_step_counters_out_for_a_backend_that_does_not_count():
    metrics = Metrics()
    metrics.watch(in_flight=lambda: 0, queued=lambda: 0, engine=lambda: {"queued": 0, "running": 0})
    assert "orpheus_engine_steps" not in generate_latest(metrics.registry).decode()


def frames(n: int) -> np.ndarray:
    return np.arange(n * 7, dtype=np.int64).reshape(n, 7) % fmt.CODEBOOK_SIZE


def test_a_paced_decoder_asks_for_a_wakeup_for_its_first_window_and_full_windows_only():
    decoder = StreamDecoder(clock=lambda: 0.0)
    assert decoder.push(frames(1)) is False  # frame 0 still waits for its right context
    assert decoder.push(frames(1)) is True
    assert decoder.ready_window().count == 1
    woken = [decoder.push(frames(1)) for _ in range(decoder.max_chunk)]
    # Audio in hand: the next windows fall due with time (the worker's tick), not with each frame,
    # until a whole max_chunk window is waiting.
    assert woken == [False] * (decoder.max_chunk - 1) + [True]


def test_a_listener_down_to_its_margin_gets_a_wakeup_for_the_frame_its_next_window_waits_for():
    now = [0.0]
    decoder = StreamDecoder(clock=lambda: now[0])
    decoder.push(frames(2))
    assert decoder.ready_window().count == 1  # 85 ms of audio in hand: under the 100 ms margin
    assert decoder.ready_window() is None  # frame 1 waits for its right context
    decoder.decode_seconds_per_frame = 0.001  # the worker's measured cost, given to every stream meanwhile
    now[0] = 0.04
    assert decoder.push(frames(1)) is True  # which makes frame 1 due at once
    assert decoder.ready_window().count == 1
    # Ahead of the listener: 16 frames (1.4 s) emitted 0.1 s after the first push, at 3x real time.
    ahead = StreamDecoder(clock=lambda: now[0])
    ahead.push(frames(17))
    assert ahead.ready_window().count == 16
    assert ahead.ready_window() is None
    now[0] = 0.1
    assert ahead.push(frames(1)) is False  # the tick finds its next window in time


def test_a_whole_file_decoder_asks_for_a_wakeup_when_a_fixed_window_is_complete():
    decoder = StreamDecoder.whole_file(noise_key=1)
    woken = [decoder.push(frames(1)) for _ in range(decoder.max_chunk + decoder.right_context)]
    assert woken == [False] * (decoder.max_chunk + decoder.right_context - 1) + [True]
    assert decoder.ready_window().count == decoder.max_chunk


def test_the_repeat_guard_names_the_frame_it_fired_on_within_a_batch():
    varied = np.random.default_rng(0).integers(0, fmt.CODEBOOK_SIZE, (10, 7))
    loop = np.repeat(varied[-1:], 30, axis=0)
    runaway = RepeatWatch(GuardLimits()).push(np.concatenate([varied, loop]))
    # The last varied frame and the first 23 of its repeats make 24 identical frames in a row.
    assert runaway.guard == "repeat" and runaway.at_frame == 10 + GuardLimits().repeat_frames - 2


class NoThreads:
    async def run(self, fn, *args):
        raise AssertionError("a light encoder went to the pool")


class OneThread:
    def __init__(self):
        self.calls = 0

    async def run(self, fn, *args):
        self.calls += 1
        return await asyncio.to_thread(fn, *args)


class Unlimited:
    def hold(self):
        from contextlib import nullcontext

        return nullcontext()


async def chunks_of(pcm: np.ndarray, size: int):
    for start in range(0, len(pcm), size):
        yield pcm[start:start + size]


@pytest.mark.parametrize("fmt_name", ["pcm", "wav"])
async def test_light_encoders_run_in_place_and_write_the_same_bytes(fmt_name):
    pcm = np.linspace(-1.2, 1.2, 10_000, dtype=np.float32)
    encoder = StreamEncoder(fmt_name)
    assert encoder.light
    data = b"".join([b async for b in encoded(Unlimited(), NoThreads(), chunks_of(pcm, 3000), encoder)])
    samples = np.clip(np.rint(pcm.astype(np.float64) * 32768), -32768, 32767).astype("<i2").tobytes()
    assert data == (wav_stream_header() if fmt_name == "wav" else b"") + samples


@pytest.mark.parametrize("fmt_name, speed", [("mp3", 1.0), ("opus", 1.0), ("wav", 1.5)])
async def test_codecs_and_time_stretch_are_encoded_on_the_pool(fmt_name, speed):
    encoder = StreamEncoder(fmt_name, speed=speed)
    pool = OneThread()
    data = b"".join([b async for b in encoded(Unlimited(), pool, chunks_of(np.zeros(24_000, np.float32), 8000),
                                              encoder)])
    assert not encoder.light and data and pool.calls == 3 + 1  # every chunk, then the flush


async def test_opus_is_encoded_from_24_khz_without_resampling():
    encoder = StreamEncoder("opus")
    data = encoder.encode(np.zeros(24_000, np.float32)) + encoder.finish()
    head = data.index(b"OpusHead")
    input_rate = struct.unpack("<I", data[head + 12:head + 16])[0]  # after magic, version, channels, pre-skip
    assert input_rate == 24000


async def test_the_bench_session_queues_no_request_and_keeps_its_connections_alive():
    """Every request in flight has a connection at once (a queue in the client would count as the
    server's time to first audio), and the next round reuses them instead of connecting again."""
    in_flight, all_in, connections = 0, asyncio.Event(), set()

    async def held(request: web.Request) -> web.Response:
        nonlocal in_flight
        connections.add(request.transport.get_extra_info("peername"))
        in_flight += 1
        if in_flight % CONCURRENT == 0:
            all_in.set()
        await all_in.wait()  # answers only once every request of the round has arrived
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_post("/", held)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = "http://127.0.0.1:%d/" % runner.addresses[0][1]
    try:
        async with open_session() as session:
            async def post() -> bytes:
                async with session.post(url, data=b"x") as response:
                    return await response.read()

            for _ in range(2):
                all_in.clear()
                bodies = await asyncio.wait_for(asyncio.gather(*(post() for _ in range(CONCURRENT))), 30)
                assert bodies == [b"ok"] * CONCURRENT
    finally:
        all_in.set()  # a failed round leaves no handler waiting
        await runner.cleanup()
    assert len(connections) == CONCURRENT


async def test_ids_that_are_not_audio_ids_fail_their_own_stream_when_the_codec_takes_them():
    core = CodecCore(SpeechLikeCodec())
    good, bad = core.open(noise_key=1), core.open(noise_key=2)
    ids = fmt.frames_to_ids(frames(3))
    good.push_ids(ids)
    bad.push_ids(ids[:8] + [fmt.END_OF_SPEECH] + ids[9:])  # position 1 of frame 1 holds no audio id
    for s in (good, bad):
        s.end_frames()
    while core.has_work():
        core.step()
    assert len(np.concatenate([pcm async for pcm in good])) == 3 * fmt.SAMPLES_PER_FRAME
    with pytest.raises(ValueError, match="not an audio id for frame position 1"):
        [pcm async for pcm in bad]


async def test_items_taken_on_the_producers_thread_stop_at_the_first_refusal_and_its_error_ends_the_stream():
    taken, cancels = [], []

    def take(item: int) -> bool:
        if item == 3:
            raise ValueError("item 3 is bad")
        taken.append(item)
        return True

    def produce() -> None:
        for i in range(6):
            stream.put(i)
        stream.finish()

    stream = Handoff(on_cancel=lambda: cancels.append(True), on_item=take)
    producer = threading.Thread(target=produce)
    producer.start()
    with pytest.raises(ValueError, match="item 3 is bad"):
        [item async for item in stream]  # nothing arrives here: the items went to take()
    producer.join()
    assert taken == [0, 1, 2] and stream.cancelled.is_set() and cancels == [True]  # 4 and 5 were dropped
