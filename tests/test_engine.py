"""The batched engine, driven step by step: seeds across batch compositions, slot reuse, aborts,
the queue limit, failures at prefill and at decode. Then its driver: the thread and asyncio side."""

import asyncio

import pytest

from orpheus_local import tokens as fmt
from orpheus_local.config import EngineConfig
from orpheus_local.engine.core import EngineCore
from orpheus_local.engine.driver import EngineDriver
from orpheus_local.engine.request import Request, Status
from orpheus_local.engine.scheduler import MAX_CONTINUATION_WAIT, Scheduler
from orpheus_local.errors import (
    GenerationError,
    InputError,
    NotReadyError,
    QueueFullError,
)
from orpheus_local.params import SynthesisParams
from orpheus_local.weights.checkpoint import load_tokenizer

SLOTS = 4


@pytest.fixture(scope="module")
def core(demo_dirs):
    config = EngineConfig(model=str(demo_dirs[0]), device="cpu", max_slots=SLOTS, max_queue=8,
                          max_prompt_tokens=128, max_new_tokens=300)
    return EngineCore.load(config, demo_dirs[0], "cpu", "float32")


@pytest.fixture(scope="module")
def prompt(demo_dirs):
    return fmt.build_prompt(load_tokenizer(demo_dirs[0]), "Hello <sigh> there", "leah")


@pytest.fixture(scope="module")
def other_prompt(demo_dirs):
    return fmt.build_prompt(load_tokenizer(demo_dirs[0]), "Something else entirely", "leah")


def params(seed, tokens=100, **kw):
    return SynthesisParams(text="x", max_new_tokens=tokens, seed=seed, **kw)


def run(core: EngineCore, until_idle: bool = True, steps: int | None = None):
    """Step the engine (until it is idle, or `steps` times): ({request: ids}, {request: final output})."""
    ids, ended = {}, {}
    count = 0
    while core.has_work() and (steps is None or count < steps):
        for out in core.step():
            ids.setdefault(out.request, []).extend(out.ids)
            if out.finished:
                ended[out.request] = out
        count += 1
    return ids, ended


def test_same_seed_same_ids_alone_or_beside_seven_others(core, prompt, other_prompt):
    alone = core.add(prompt, params(11), ignore_eos=True)
    expected = run(core)[0][alone]
    crowded = core.add(prompt, params(11), ignore_eos=True)
    others = [core.add(other_prompt if s % 2 else prompt, params(100 + s, 100 + 7 * s), ignore_eos=True)
              for s in range(7)]  # more than the slots: some wait, slots are reused mid-run
    ids = run(core)[0]
    assert len(expected) == 98 and ids[crowded] == expected
    assert all(len(ids[o]) == (100 + 7 * s) // 7 * 7 for s, o in enumerate(others))


def test_the_seed_and_the_prompt_each_change_the_ids(core, prompt, other_prompt):
    # A low temperature lets the tiny random model's logits, not only the draw's noise, decide.
    base = core.add(prompt, params(5, temperature=0.1), ignore_eos=True)
    reseeded = core.add(prompt, params(6, temperature=0.1), ignore_eos=True)
    reprompted = core.add(other_prompt, params(5, temperature=0.1), ignore_eos=True)
    ids = run(core)[0]
    assert ids[reseeded] != ids[base] and ids[reprompted] != ids[base]


def test_a_lower_slot_finishing_mid_run_leaves_the_others_ids_unchanged(core, prompt):
    short = core.add(prompt, params(1), ignore_eos=True, max_tokens=35)  # slot 0, gone after 35 steps
    long = core.add(prompt, params(2, 140), ignore_eos=True)  # slot 1
    ids, ended = run(core)
    assert (short.slot, long.slot) == (0, 1) and ended[short].reason == ended[long].reason == "length"
    alone = core.add(prompt, params(2, 140), ignore_eos=True)
    assert run(core)[0][alone] == ids[long] and len(ids[long]) == 140


def test_every_id_fits_the_frame_layout_and_lengths_are_exact(core, prompt):
    request = core.add(prompt, params(3, 103, temperature=1.5, top_p=1.0), ignore_eos=True)
    ids, ended = run(core)
    assert len(ids[request]) == 98  # 103 sampled, the 15th frame incomplete and never handed out
    assert ended[request].reason == "length" and len(request.generated) == 103
    for k, token in enumerate(ids[request]):
        lo, hi = fmt.position_range(k % 7)
        assert lo <= token < hi


def test_an_abort_frees_the_slot_at_the_next_step_and_the_slot_carries_nothing_over(core, prompt):
    first = core.add(prompt, params(21), ignore_eos=True)
    expected = run(core)[0][first]
    leaving = core.add(prompt, params(22, 300), ignore_eos=True)
    run(core, steps=10)
    core.abort(leaving)
    (out,) = core.step()
    assert out.request is leaving and out.finished and out.reason is None and out.error is None
    assert not core.has_work() and sorted(core.scheduler.free_slots) == list(range(SLOTS))
    again = core.add(prompt, params(21), ignore_eos=True)
    assert run(core)[0][again] == expected  # the aborted request's slot, reused


def test_an_aborted_waiting_request_never_runs(core, prompt):
    waiting = core.add(prompt, params(1), ignore_eos=True)
    core.abort(waiting)
    ids, ended = run(core)
    assert ids[waiting] == [] and ended[waiting].finished and waiting.slot is None


def test_queue_limit_raises_queue_full(core, prompt):
    added = [core.add(prompt, params(s), ignore_eos=True) for s in range(8)]
    with pytest.raises(QueueFullError):
        core.add(prompt, params(9), ignore_eos=True)
    for r in added:
        core.abort(r)
    run(core)
    assert core.stats() == {"queued": 0, "running": 0, "slots": SLOTS}


def test_a_continuation_gets_past_a_full_queue_and_a_new_request_does_not(core, prompt):
    full = EngineCore(core.runner, max_queue=1)  # the module's runner: this core is never stepped
    full.add(prompt, params(1), "first", ignore_eos=True)
    with pytest.raises(QueueFullError, match="^1 requests are already waiting for a slot$"):
        full.add(prompt, params(2), "second", ignore_eos=True)
    for index in (1, 2, 3):  # the first request's later parts
        full.add(prompt, params(2 + index), f"first-{index}.0", ignore_eos=True, continuation=True)
    with pytest.raises(QueueFullError):
        full.add(prompt, params(9), "third", ignore_eos=True)
    assert [r.request_id for r in full.scheduler.waiting] == ["first"]
    assert [r.request_id for _, r in full.scheduler.continuing] == ["first-1.0", "first-2.0", "first-3.0"]
    assert full.stats() == {"queued": 4, "running": 0, "slots": SLOTS}


def _waiting_request(name: str) -> Request:
    return Request(name, [1, 2, 3], SynthesisParams(text="Hi.", max_new_tokens=100), seed=0)


def test_free_slots_go_to_new_requests_before_the_parts_queued_ahead_of_a_listener():
    scheduler = Scheduler(num_slots=2, max_queue=8)  # one slot is kept for new requests
    scheduler.add(_waiting_request("long-1.0"), continuation=True)
    scheduler.add(_waiting_request("long-2.0"), continuation=True)
    scheduler.add(_waiting_request("new"))
    admitted, _ = scheduler.admit()
    assert [r.request_id for r in admitted] == ["new"]  # though it came last
    scheduler.release(admitted[0], Status.FINISHED)
    admitted, _ = scheduler.admit()
    assert [r.request_id for r in admitted] == ["long-1.0"]  # no new request waits: the parts go on


def test_a_continuation_that_has_waited_its_longest_goes_before_new_requests():
    scheduler = Scheduler(num_slots=2, max_queue=MAX_CONTINUATION_WAIT + 8)
    scheduler.add(_waiting_request("long-1.0"), continuation=True)
    order = []
    for i in range(MAX_CONTINUATION_WAIT + 2):  # new requests keep coming, one slot frees per step
        scheduler.add(_waiting_request(f"new-{i}"))
        admitted, _ = scheduler.admit()
        order += [r.request_id for r in admitted]
        for request in admitted:
            scheduler.release(request, Status.FINISHED)
    assert order.index("long-1.0") == MAX_CONTINUATION_WAIT - 1  # admitted at its MAX_CONTINUATION_WAIT-th admission
    assert len(order) == MAX_CONTINUATION_WAIT + 3  # every new request, and the part


def test_parts_queued_ahead_of_their_listeners_never_take_the_slots_kept_for_new_requests():
    scheduler = Scheduler(num_slots=16, max_queue=8)  # 2 slots kept for new requests
    for i in range(20):
        scheduler.add(_waiting_request(f"long-{i}.0"), continuation=True)
    admitted, _ = scheduler.admit()
    assert len(admitted) == 14 and len(scheduler.continuing) == 6
    for _ in range(MAX_CONTINUATION_WAIT + 1):  # however long they wait
        assert scheduler.admit() == ([], [])
    scheduler.add(_waiting_request("new-a"))
    scheduler.add(_waiting_request("new-b"))
    assert [r.request_id for r in scheduler.admit()[0]] == ["new-a", "new-b"]


def test_a_failing_prefill_fails_its_requests_only(core, prompt, monkeypatch):
    good = core.add(prompt, params(31, 200), ignore_eos=True)
    run(core, steps=3)
    prefill = core.runner.prefill

    def failing_prefill(requests):
        if any(r.request_id == "bad" for r in requests):
            raise RuntimeError("injected fault")
        return prefill(requests)

    monkeypatch.setattr(core.runner, "prefill", failing_prefill)
    bad = core.add(prompt, params(32), "bad", ignore_eos=True)
    ids, ended = run(core)
    assert isinstance(ended[bad].error, GenerationError) and "bad" in str(ended[bad].error)
    assert ended[good].error is None and len(good.generated) == 200


def test_a_failing_decode_step_fails_its_batch_and_the_engine_goes_on(core, prompt, monkeypatch):
    batch = [core.add(prompt, params(s), ignore_eos=True) for s in range(2)]
    run(core, steps=2)
    decode = core.runner.decode
    monkeypatch.setattr(core.runner, "decode", lambda requests: (_ for _ in ()).throw(RuntimeError("device lost")))
    outputs = core.step()
    assert {out.request for out in outputs} == set(batch)
    assert all(isinstance(out.error, GenerationError) and out.finished for out in outputs)
    assert not core.has_work() and sorted(core.scheduler.free_slots) == list(range(SLOTS))
    monkeypatch.setattr(core.runner, "decode", decode)
    after = core.add(prompt, params(7), ignore_eos=True)
    assert len(run(core)[0][after]) == 98


def test_prompt_longer_than_the_cache_allows_is_an_input_error(core):
    with pytest.raises(InputError) as caught:
        core.add([fmt.START_OF_HUMAN] * 129, params(1))
    assert caught.value.field == "text" and "too long" in caught.value.message


# --- the driver: the engine on its thread, ids handed to asyncio ---------------------------------


async def collect(stream):
    return [i async for ids in stream for i in ids]


async def test_driver_streams_what_the_core_computes(core, prompt):
    expected = run_alone(core, prompt, params(40))
    driver = EngineDriver(core).start()
    try:
        streams = [driver.submit(prompt, params(40), "a", ignore_eos=True),
                   driver.submit(prompt, params(41), "b", ignore_eos=True)]
        got = await asyncio.gather(*map(collect, streams))
    finally:
        driver.close()
    assert got[0] == expected and got[1] != expected
    assert [s.finish_reason for s in streams] == ["length", "length"]


def run_alone(core, prompt, p):
    request = core.add(prompt, p, ignore_eos=True)
    return run(core)[0][request]


async def test_driver_close_ends_every_stream_and_refuses_new_ones(core, prompt, monkeypatch):
    gate = asyncio.Event()
    driver = EngineDriver(core)
    # Not started: nothing steps, so the requests are still waiting when close() runs.
    with pytest.raises(NotReadyError):
        driver.submit(prompt, params(1), "early")
    driver.start()
    step = core.step
    loop = asyncio.get_running_loop()

    def step_then_signal():
        outputs = step()
        loop.call_soon_threadsafe(gate.set)
        return outputs

    monkeypatch.setattr(core, "step", step_then_signal)
    running = driver.submit(prompt, params(2, 300), "running", ignore_eos=True)
    await gate.wait()  # admitted and stepping
    await asyncio.to_thread(driver.close)
    with pytest.raises(NotReadyError):
        driver.submit(prompt, params(3), "late")
    ids = await collect(running)  # ended: cancelled by the close, whatever it had got
    assert len(ids) < 300 and running.finish_reason is None
    assert core.stats()["running"] == 0


async def test_cancel_from_the_consumer_aborts_the_request(core, prompt):
    driver = EngineDriver(core).start()
    try:
        stream = driver.submit(prompt, params(5, 300), "leaving", ignore_eos=True)
        first = await anext(stream)
        stream.cancel()
        rest = await collect(stream)
    finally:
        driver.close()
    assert len(first) == 7 and len(rest) < 280 and stream.finish_reason is None
    assert core.stats()["running"] == 0


def test_requests_without_a_seed_get_fresh_random_ones(core, prompt):
    requests = [core.add(prompt, SynthesisParams(text="x", seed=None)) for _ in range(4)]
    for r in requests:
        core.abort(r)
    run(core)
    seeds = {r.seed for r in requests}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)


async def test_a_fault_outside_prefill_and_decode_ends_every_request_and_the_driver_goes_on(core, prompt, monkeypatch):
    driver = EngineDriver(core).start()
    try:
        admit = core.scheduler.admit
        monkeypatch.setattr(core.scheduler, "admit", lambda: (_ for _ in ()).throw(RuntimeError("bookkeeping bug")))
        stream = driver.submit(prompt, params(1), "victim", ignore_eos=True)
        with pytest.raises(GenerationError, match="victim"):
            await collect(stream)
        monkeypatch.setattr(core.scheduler, "admit", admit)
        after = await collect(driver.submit(prompt, params(2), "after", ignore_eos=True))
    finally:
        driver.close()
    assert len(after) == 98 and core.stats()["queued"] == core.stats()["running"] == 0


class ScriptedRunner:
    """Gives each slot's request the ids of its script, one per step (prefill and decode alike)."""

    num_slots, max_prompt_tokens, max_reference_tokens = 3, 64, 0

    def __init__(self, scripts: dict[int, list[int]]):
        self.scripts = scripts  # slot -> ids
        self.given = {}

    def prefill(self, requests):
        for r in requests:
            self.given[r.slot] = 0
        return [self._next(r.slot) for r in requests]

    def decode(self, requests):
        return [self._next(r.slot) for r in requests]

    def release(self, request):
        pass

    def _next(self, slot):
        self.given[slot] += 1
        return self.scripts[slot][self.given[slot] - 1]


def test_ids_go_out_in_whole_frames_and_an_end_mid_frame_keeps_its_ids_in_generated():
    audio = [fmt.AUDIO_BASE + (k % 7) * fmt.CODEBOOK_SIZE + k for k in range(30)]
    runner = ScriptedRunner({0: audio[:10] + [fmt.END_OF_SPEECH], 1: audio[:21] + [fmt.END_OF_SPEECH], 2: audio})
    core = EngineCore(runner, max_queue=4)
    stops_mid_frame = core.add([1, 2], params(1))
    stops_at_frame = core.add([1, 2], params(2))
    capped = core.add([1, 2], params(3), max_tokens=16)  # its limit: 16 ids, two frames and two more
    ids, ended = run(core)
    assert ids[stops_mid_frame] == audio[:7] and stops_mid_frame.generated == audio[:10]
    assert ids[stops_at_frame] == audio[:21] and stops_at_frame.generated == audio[:21]
    assert ids[capped] == audio[:14] and capped.generated == audio[:16]
    assert [ended[r].reason for r in (stops_mid_frame, stops_at_frame, capped)] == ["stop", "stop", "length"]
