"""The serving process's interpreter settings: the heap loaded at start-up is frozen before /ready."""

from __future__ import annotations

import gc
import threading

from support.asgi import FakeSynth, serve

from server.process_tuning import settle_heap


class Cycle:
    def __init__(self):
        self.me = self


def test_settle_heap_freezes_what_exists_and_still_collects_what_comes_after():
    gc.collect()
    before = gc.get_freeze_count()
    try:
        kept = Cycle()  # reachable at the freeze: frozen, never walked again
        settle_heap()
        assert gc.get_freeze_count() > before
        assert kept.me is kept
        Cycle()  # garbage made after the freeze: a cycle only the collector frees
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()


async def test_on_ready_runs_once_after_loading_and_before_ready():
    seen = []
    states = []
    loading = threading.Event()

    def load():
        loading.wait(30)
        return FakeSynth()

    async with serve(load, on_ready=lambda: seen.append(states[0].ready)) as (client, app):
        states.append(app.state.server)
        assert (await client.get("/ready")).status_code == 503  # still loading
        loading.set()
        await app.state.server.loaded.wait()
        assert (await client.get("/ready")).status_code == 200
    assert seen == [False]
