"""SNAC codec: one-shot and streamed decoding on the real 24 kHz architecture with random weights."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from orpheus_local import tokens as fmt
from orpheus_local.audio.snac import SnacCodec, iter_stream
from orpheus_local.audio.windows import FRAME_SECONDS, DecodeCost, StreamDecoder
from orpheus_local.weights.checkpoint import load_snac
from orpheus_local.weights.demo import build_demo_snac

SPF = fmt.SAMPLES_PER_FRAME


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Other processes share the cores; with a busy core a second torch thread stalls every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def snac_dir(tmp_path_factory):
    return build_demo_snac(tmp_path_factory.mktemp("snac"), seed=0)


@pytest.fixture(scope="session")
def quiet(snac_dir) -> SnacCodec:
    """Noise off: decoding is deterministic, so streamed and one-shot audio can be compared."""
    return SnacCodec(load_snac(snac_dir), "cpu", noise=False)


def random_frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, fmt.CODEBOOK_SIZE, (n, fmt.FRAME_TOKENS))


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - test) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)) if noise else float("inf")


def paced_windows(frames: np.ndarray, speed: float = 3.0) -> tuple[list, list[int]]:
    """Push one frame at a time at `speed` x real time on a simulated clock; the windows handed out
    and, for each, how many frames had been pushed when it left."""
    now = [0.0]
    decoder = StreamDecoder(clock=lambda: now[0])
    windows, pushed_at = [], []
    for i in range(len(frames)):
        now[0] = i * FRAME_SECONDS / speed
        decoder.push(frames[i:i + 1])
        while (w := decoder.ready_window()) is not None:
            windows.append(w)
            pushed_at.append(decoder.frames_pushed)
    decoder.finish()
    while (w := decoder.ready_window()) is not None:
        windows.append(w)
        pushed_at.append(decoder.frames_pushed)
    assert decoder.done
    return windows, pushed_at


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_one_shot_gives_2048_samples_per_frame(quiet, n):
    pcm = quiet.decode(random_frames(n, seed=n))
    assert pcm.dtype == np.float32 and pcm.shape == (SPF * n,)
    assert np.isfinite(pcm).all() and np.abs(pcm).max() <= 1


def test_noise_on_decodes_to_the_same_length(snac_dir):
    codec = SnacCodec(load_snac(snac_dir), "cpu")
    frames = random_frames(3)
    a, b = codec.decode(frames), codec.decode(frames)
    assert a.shape == (3 * SPF,) and not np.array_equal(a, b)  # fresh noise each call


def test_streamed_matches_one_shot(quiet):
    frames = random_frames(24, seed=1)
    windows, _ = paced_windows(frames)
    streamed = np.concatenate(quiet.decode_windows(windows))
    assert streamed.shape == (24 * SPF,)
    assert snr_db(quiet.decode(frames), streamed) >= 40


def test_iter_stream_with_uneven_batches(quiet):
    frames = random_frames(20, seed=2)
    bounds = [0, 2, 3, 10, 11, 19, 20]
    chunks = list(iter_stream(quiet, (frames[a:b] for a, b in zip(bounds, bounds[1:]))))
    streamed = np.concatenate(chunks)
    assert streamed.shape == (20 * SPF,)
    assert snr_db(quiet.decode(frames), streamed) >= 40


def test_first_chunk_leaves_after_two_frames():
    decoder = StreamDecoder()
    decoder.push(random_frames(1))
    assert decoder.ready_window() is None
    decoder.push(random_frames(1))
    first = decoder.ready_window()
    assert first is not None and (first.start, first.count, first.left, len(first.frames)) == (0, 1, 0, 2)


def test_every_frame_is_covered_once():
    windows, pushed_at = paced_windows(random_frames(60))
    assert pushed_at[0] <= 2
    starts = [w.start for w in windows]
    assert starts[0] == 0 and sum(w.count for w in windows) == 60
    assert all(b == a + w.count for a, b, w in zip(starts, starts[1:], windows))  # contiguous, in order


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_short_streams_flush_every_frame(quiet, n):
    frames = random_frames(n, seed=3)
    chunks = list(iter_stream(quiet, [frames[i:i + 1] for i in range(n)]))
    assert sum(len(c) for c in chunks) == n * SPF
    if n:
        assert snr_db(quiet.decode(frames), np.concatenate(chunks)) >= 40


def test_chunks_grow_ahead_of_real_time():
    windows, _ = paced_windows(random_frames(140), speed=3.0)
    counts = [w.count for w in windows]
    assert max(counts) == 32 and counts == sorted(counts[:-1]) + counts[-1:]  # growing, then the tail
    assert sum(len(w.frames) for w in windows) / 140 <= 1.3  # context frames decoded twice


def test_behind_real_time_emits_at_once():
    now = [0.0]
    decoder = StreamDecoder(clock=lambda: now[0])
    decoder.push(random_frames(2))
    assert decoder.ready_window().count == 1  # frame 0 playing from now on
    now[0] = 1.0  # the generator stalled: the listener ran out long ago
    decoder.push(random_frames(2))
    assert decoder.ready_window().count == 2  # everything with right context, without waiting


@pytest.mark.parametrize("speed, stall_at", [(3.0, None), (1.2, None), (3.0, 60), (8.0, 30)])
def test_a_worker_that_skips_streams_which_can_wait_gets_the_same_windows_at_the_same_ticks(speed, stall_at):
    """Two decoders fed the same frames at the same simulated times, looked at on 20 ms ticks: one
    asked for a window on every tick, one only on the ticks where can_wait() is False. Frames come
    at `speed` x real time (stalling for 2 s at frame stall_at) and the codec's measured cost rises
    halfway: the windows and the ticks they leave on must be the same, with most ticks skipped."""
    now = [0.0]
    every, skipping = StreamDecoder(clock=lambda: now[0]), StreamDecoder(clock=lambda: now[0])
    frames = random_frames(120)
    arrivals = [i * FRAME_SECONDS / speed + (2.0 if stall_at is not None and i >= stall_at else 0.0)
                for i in range(len(frames))]
    seen: dict[str, list] = {"every": [], "skipping": []}
    asked = 0
    tick, pushed = 0, 0
    while not (every.done and skipping.done):
        now[0] = tick * 0.02
        while pushed < len(frames) and arrivals[pushed] <= now[0]:
            every.push(frames[pushed:pushed + 1])
            skipping.push(frames[pushed:pushed + 1])
            pushed += 1
        if pushed == len(frames) and not every.done and now[0] > arrivals[-1] + 0.5:
            every.finish()
            skipping.finish()
        if tick == 150:  # the codec turns out slower than measured so far
            every.decode_seconds_per_frame = skipping.decode_seconds_per_frame = 0.004
        while (w := every.ready_window()) is not None:
            seen["every"].append((tick, w.start, w.count))
        if not skipping.can_wait():
            asked += 1
            while (w := skipping.ready_window()) is not None:
                seen["skipping"].append((tick, w.start, w.count))
        tick += 1
    assert seen["skipping"] == seen["every"] and len(seen["every"]) > 4
    assert asked < tick / 2  # most ticks cost nothing for this stream


def test_a_rise_in_the_shared_decode_cost_makes_every_stream_look_again_and_a_small_one_does_not():
    now = [0.0]
    cost = DecodeCost()
    decoders = [StreamDecoder(clock=lambda: now[0], cost=cost) for _ in range(2)]
    for d in decoders:  # 16 frames (1.4 s) emitted at once, ahead of the listener
        d.push(random_frames(17))
        assert d.ready_window().count == 16
    now[0] = 0.1
    for d in decoders:
        d.push(random_frames(1))
        assert d.ready_window() is None and d.can_wait()  # looked at: not due for a while
    cost.per_frame = 0.004  # the codec measures its cost: a wider margin may bring windows forward
    assert not any(d.can_wait() for d in decoders)
    for d in decoders:
        assert d.ready_window() is None and d.can_wait()  # looked at again with it: still not due
    cost.per_frame = 0.0049  # less than a quarter above the cost they looked with
    assert all(d.can_wait() for d in decoders)


async def test_the_codec_core_hands_its_measured_cost_to_every_open_stream():
    from orpheus_local.audio.worker import CodecCore

    codec = ScriptedCodec(seconds_per_frame=0.002)
    core = CodecCore(codec, clock=lambda: codec.now)
    decoded, waiting = core.open(noise_key=1), core.open(noise_key=2)
    decoded.push(random_frames(2))
    assert core.step() == 1  # decoded's first window (2 frames); waiting has no frame yet
    assert decoded.decoder.decode_seconds_per_frame == waiting.decoder.decode_seconds_per_frame == 0.002
    whole = core.open(noise_key=3, whole_file=True)
    assert whole.decoder.decode_seconds_per_frame == 0.002  # a stream opened later reads it too


@pytest.mark.parametrize("code", [0, fmt.CODEBOOK_SIZE - 1])
def test_extreme_codes_decode(quiet, code):
    frames = np.full((6, fmt.FRAME_TOKENS), code)
    frames[::2] = fmt.CODEBOOK_SIZE - 1 - code  # alternate with the other extreme
    one_shot = quiet.decode(frames)
    streamed = np.concatenate(list(iter_stream(quiet, [frames[:2], frames[2:]])))
    assert one_shot.shape == streamed.shape == (6 * SPF,)
    assert np.isfinite(one_shot).all() and np.abs(one_shot).max() > 0
    assert snr_db(one_shot, streamed) >= 40  # the extremes stream like any other code


def test_batched_windows_equal_single_windows(quiet, monkeypatch):
    windows = paced_windows(random_frames(12, seed=4))[0] + paced_windows(random_frames(12, seed=5))[0]
    assert len({len(w.frames) for w in windows}) < len(windows)  # some share a batch
    monkeypatch.setattr(quiet, "max_batch_frames", 8)  # and some batches are split
    batched = quiet.decode_windows(windows)
    for w, pcm in zip(windows, batched):
        np.testing.assert_allclose(pcm, quiet.decode_windows([w])[0], atol=1e-5)
        assert pcm.shape == (w.count * SPF,)


def test_encoded_audio_round_trips_through_ids(snac_dir):
    model = load_snac(snac_dir)
    audio = torch.from_numpy(np.random.default_rng(6).uniform(-0.5, 0.5, (1, 1, 8 * SPF)).astype(np.float32))
    with torch.inference_mode():
        codes = [c[0].numpy() for c in model.encode(audio)]  # [8], [16], [32]
    assert [len(c) for c in codes] == [8, 16, 32]
    frames = fmt.codes_to_frames(codes)
    ids = fmt.frames_to_ids(frames)
    assert len(ids) == 8 * fmt.FRAME_TOKENS
    for i, token in enumerate(ids):
        lo, hi = fmt.position_range(i % fmt.FRAME_TOKENS)
        assert lo <= token < hi
    back = fmt.frames_to_codes(fmt.ids_to_frames(ids))
    for original, restored in zip(codes, back):
        np.testing.assert_array_equal(original, restored)


# --- the codec core, stepped by the test ---------------------------------------------------------


async def test_codec_core_streams_each_stream_and_a_failed_decode_fails_only_its_call(quiet, monkeypatch):
    from orpheus_local.audio.worker import CodecCore

    core = CodecCore(quiet)
    frames = random_frames(6, seed=7)
    first, second = core.open(noise_key=1), core.open(noise_key=2)
    first.push(frames)
    first.end_frames()
    decode = quiet.decode_windows
    monkeypatch.setattr(quiet, "decode_windows", lambda windows: (_ for _ in ()).throw(RuntimeError("codec lost")))
    assert core.step() == 1  # first's windows, in a call that fails
    with pytest.raises(RuntimeError, match="codec lost"):
        [chunk async for chunk in first]
    monkeypatch.setattr(quiet, "decode_windows", decode)
    second.push(frames)
    second.end_frames()
    while core.has_work():
        core.step()
    pcm = np.concatenate([chunk async for chunk in second])
    assert snr_db(quiet.decode(frames), pcm) >= 40 and len(pcm) == 6 * SPF


async def test_a_cancelled_audio_stream_is_dropped_at_the_next_step(quiet):
    from orpheus_local.audio.worker import CodecCore

    core = CodecCore(quiet)
    stream = core.open(noise_key=1)
    stream.push(random_frames(4, seed=8))
    stream.cancel()
    assert core.step() == 0 and not core.has_work()
    assert [chunk async for chunk in stream] == []


async def test_a_closed_codec_ends_its_streams_and_refuses_new_ones(quiet):
    from orpheus_local.audio.worker import CodecCore
    from orpheus_local.errors import NotReadyError

    core = CodecCore(quiet)
    open_stream = core.open(noise_key=1)
    open_stream.push(random_frames(2, seed=9))
    core.close()
    with pytest.raises(NotReadyError):
        [chunk async for chunk in open_stream]
    with pytest.raises(NotReadyError):
        core.open(noise_key=2)


# --- the codec core's order and budget, with a codec whose work and time the test controls -------


class ScriptedCodec:
    """Stands in for SnacCodec: a chunk is a pure function of its stream's key and of its frames'
    codes and positions, whatever else shares the call. Records every call's windows; each call
    advances `now` (the core's clock in these tests) by seconds_per_frame per decoded frame."""

    def __init__(self, seconds_per_frame: float = 0.0):
        self.seconds_per_frame = seconds_per_frame
        self.now = 0.0
        self.calls: list[list] = []

    def decode_windows(self, windows) -> list[np.ndarray]:
        self.calls.append(list(windows))
        self.now += self.seconds_per_frame * sum(len(w.frames) for w in windows)
        return [scripted_pcm(w.frames[w.left:w.left + w.count], w.start, w.noise_key) for w in windows]


def scripted_pcm(frames: np.ndarray, start: int, key: int) -> np.ndarray:
    positions = np.arange(start, start + len(frames))
    values = (frames.sum(axis=1) * 131 + positions * 17 + key * 7919) % 10007 / 10007
    return np.repeat(values.astype(np.float32), SPF)


def decoded_frames(calls) -> int:
    return sum(len(w.frames) for call in calls for w in call)


async def collect(stream) -> np.ndarray:
    return np.concatenate([c async for c in stream])


def step_frames(core, codec) -> int:
    """One step; the frames it decoded."""
    calls = len(codec.calls)
    core.step()
    return decoded_frames(codec.calls[calls:])


def drain(core, codec, bound: int = 1000) -> int:
    """Steps until every stream has ended, each within the core's budget (or one window larger than
    it); the number of steps."""
    for steps in range(1, bound + 1):
        calls = len(codec.calls)
        windows = core.step()
        assert decoded_frames(codec.calls[calls:]) <= core.max_frames_per_step or windows == 1
        if not core.has_work():
            return steps
    raise AssertionError(f"streams still open after {bound} steps")


async def test_a_new_streams_first_window_goes_before_the_backlog_and_a_step_keeps_its_budget():
    from orpheus_local.audio.worker import CodecCore

    codec = ScriptedCodec()
    core = CodecCore(codec, max_frames_per_step=128)
    busy = [core.open(noise_key=k) for k in range(8)]
    for k, s in enumerate(busy):
        s.push(random_frames(2, seed=k))
    core.step()  # their first chunks: these streams are listened to now
    for k, s in enumerate(busy):
        s.push(random_frames(200, seed=10 + k))  # six 32-frame windows each, ready at once
    new = core.open(noise_key=99)
    frames = random_frames(2, seed=99)
    new.push(frames)
    codec.calls.clear()

    assert step_frames(core, codec) <= 128

    assert [(w.noise_key, w.start) for w in codec.calls[0]] == [(99, 0)]  # first, in a call of its own
    first = await asyncio.wait_for(anext(new), 10)
    np.testing.assert_array_equal(first, scripted_pcm(frames[:1], 0, 99))
    assert core.has_waiting()  # the rest of the backlog: later steps, each within the budget
    for s in (*busy, new):
        s.end_frames()
    drain(core, codec)
    for k, s in enumerate(busy):
        expected = scripted_pcm(np.concatenate([random_frames(2, seed=k), random_frames(200, seed=10 + k)]), 0, k)
        np.testing.assert_array_equal(await collect(s), expected)


async def test_whole_file_windows_go_behind_live_ones_and_the_budget_changes_no_sample():
    from orpheus_local.audio.worker import CodecCore

    def run(budget: int):
        codec = ScriptedCodec()
        core = CodecCore(codec, max_frames_per_step=budget)
        streams = {}
        for key, whole_file in [(1, True), (2, False), (3, True), (4, False), (5, False)]:
            streams[key] = core.open(noise_key=key, whole_file=whole_file)
            streams[key].push(random_frames(70 + key, seed=key))
            streams[key].end_frames()
        return codec, core, streams

    codec, core, streams = run(40)
    assert drain(core, codec) > 2
    order = [w for call in codec.calls for w in call]
    last_live = max(i for i, w in enumerate(order) if not w.alone)
    first_whole = min(i for i, w in enumerate(order) if w.alone)
    assert last_live < first_whole
    budgeted = {k: await collect(s) for k, s in streams.items()}

    codec, core, streams = run(10**9)  # no budget: everything in one step
    assert drain(core, codec) == 1
    unbounded = {k: await collect(s) for k, s in streams.items()}
    for key in streams:
        expected = scripted_pcm(random_frames(70 + key, seed=key), 0, key)
        np.testing.assert_array_equal(budgeted[key], expected)
        np.testing.assert_array_equal(unbounded[key], expected)


async def test_whole_file_windows_progress_while_live_windows_fill_every_step():
    from orpheus_local.audio.worker import CodecCore

    codec = ScriptedCodec()
    core = CodecCore(codec, max_frames_per_step=40)
    whole = core.open(noise_key=1, whole_file=True)
    whole.push(random_frames(70, seed=1))
    whole.end_frames()
    live = core.open(noise_key=2)

    def whole_frames_decoded() -> int:
        return sum(w.count for call in codec.calls for w in call if w.alone)

    for i in range(300):  # more live frames every step than one step decodes
        live.push(random_frames(40, seed=100 + i))
        assert step_frames(core, codec) <= 40
        if whole_frames_decoded() == 70:
            break
    assert whole_frames_decoded() == 70 and core.has_waiting()  # done, while the live stream is behind
    pcm = await asyncio.wait_for(collect(whole), 10)
    np.testing.assert_array_equal(pcm, scripted_pcm(random_frames(70, seed=1), 0, 1))
    live.cancel()
    core.step()


async def test_backlog_seconds_is_the_frames_left_waiting_times_the_measured_cost():
    from orpheus_local.audio.worker import CodecCore

    codec = ScriptedCodec(seconds_per_frame=0.002)
    core = CodecCore(codec, max_frames_per_step=33, clock=lambda: codec.now)
    a, b = core.open(noise_key=1), core.open(noise_key=2)
    for s in (a, b):
        s.push(random_frames(100))
        s.end_frames()
    assert core.backlog_seconds() == 0  # nothing measured yet

    core.step()  # a's first window (32 frames and 1 of right context) fills the budget
    assert [(w.noise_key, w.start, len(w.frames)) for call in codec.calls for w in call] == [(1, 0, 33)]
    # left waiting: b's first window and everything after it (100 frames), a's second window from
    # its 2 frames of left context on (100 - 30 frames)
    assert core.backlog_seconds() == pytest.approx((100 + 70) * 0.002)

    codec.seconds_per_frame = 0.004  # the codec slows down: the measured cost follows
    core.step()  # b's first window; then a's and b's second windows wait, 70 frames each
    assert core.backlog_seconds() == pytest.approx(140 * (0.8 * 0.002 + 0.2 * 0.004))
    drain(core, codec)
    assert core.backlog_seconds() == 0


async def test_the_synthesizer_reports_its_codec_workers_backlog():
    from orpheus_local.audio.worker import CodecWorker
    from orpheus_local.pipeline.synthesizer import Synthesizer

    worker = CodecWorker(ScriptedCodec(), max_frames_per_step=33)  # not started: the test steps its core
    synth = Synthesizer(None, None, worker)
    for key in (1, 2):
        stream = worker.open(noise_key=key)
        stream.push(random_frames(100))
    assert synth.codec_backlog_s() == 0
    worker.core.step()
    assert synth.codec_backlog_s() == worker.core.backlog_seconds() > 0
    worker.core.close()
