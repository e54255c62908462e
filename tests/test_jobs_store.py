"""JobStore on its own (over a SQLite file): the per-key quota, the store's bound, Retry-After from
the injected clock, and deleting jobs (their generation cancelled, their admission place given back).
Both backends, several processes and restarts: tests/test_job_store_durable.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from orpheus_local.tokens import SAMPLES_PER_FRAME
from server.encoding import EncoderPool
from server.errors import ApiError
from server.generation import Admission
from server.job_store import SqliteJobBackend
from server.jobs import COMPLETED, QUEUED, JobStore

# The store's fixture closes it in the loop the tests run in.
pytestmark = pytest.mark.asyncio(loop_scope="session")

TTL = 3600.0
# Owners: the digests of two API keys (any strings do here).
ALPHA, BRAVO = "digest-of-key-alpha", "digest-of-key-bravo"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def one_frame(job_id: str):
    yield np.full(SAMPLES_PER_FRAME, 0.1, np.float32)


class Waiting:
    """A generation that yields one frame, then waits until released; it records being cancelled."""

    def __init__(self):
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self, job_id: str):
        self.started.set()
        try:
            yield np.full(SAMPLES_PER_FRAME, 0.1, np.float32)
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def encoders():
    pool = EncoderPool(1)
    yield pool
    pool.close()


@pytest.fixture
async def make_store(clock, encoders, tmp_path):
    stores = []

    def make(max_jobs: int = 100, in_flight: int = 100) -> JobStore:
        backend = SqliteJobBackend(tmp_path / f"jobs-{len(stores)}.sqlite3")
        store = JobStore(Admission(in_flight), encoders, backend, max_jobs, TTL, clock=clock)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def finished(store: JobStore, owner: str | None = None, quota: int | None = None):
    job = await store.submit(one_frame, owner=owner, quota=quota)
    await job.task
    assert job.status == COMPLETED
    assert (await store.find(job.id, owner)).status == COMPLETED
    return job


async def refusal(store: JobStore, owner: str | None = None, quota: int | None = None) -> ApiError:
    with pytest.raises(ApiError) as refused:
        await store.submit(one_frame, owner=owner, quota=quota)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert store.admission.count == sum(not job.task.done() for job in store._jobs.values())  # no place kept
    return refused.value


def quota_message(quota: int, retry: str) -> str:
    return (f"too many requests: this API key's quota of {quota} stored v2 jobs is used (finished ones count "
            f"until their results expire); DELETE /v2/requests/{{request_id}} frees a place; {retry}")


async def test_a_key_at_its_quota_waits_for_its_oldest_result_while_another_key_submits(make_store, clock):
    store = make_store()
    await finished(store, owner=ALPHA, quota=2)  # finished at 1000
    clock.now = 1010.0
    await finished(store, owner=ALPHA, quota=2)  # finished at 1010
    clock.now = 1100.4

    refused = await refusal(store, owner=ALPHA, quota=2)
    assert refused.headers == {"Retry-After": "3500"}  # 1000 + 3600 - 1100.4, rounded up
    assert refused.message == quota_message(2, "retry in 3500 s")
    await finished(store, owner=BRAVO, quota=2)  # another key is not held back

    clock.now = 4600.0  # the first result's time is up
    await finished(store, owner=ALPHA, quota=2)
    refused = await refusal(store, owner=ALPHA, quota=2)
    assert refused.headers == {"Retry-After": "10"}  # the result of 1010 is the oldest now
    assert refused.message == quota_message(2, "retry in 10 s")


async def test_a_key_whose_jobs_are_all_unfinished_gets_the_short_retry_after(make_store, clock):
    store = make_store()
    waiting = Waiting()
    await store.submit(waiting, owner=ALPHA, quota=1)
    await finished(store, owner=BRAVO, quota=1)  # another key's result does not count for this one
    refused = await refusal(store, owner=ALPHA, quota=1)
    assert refused.headers == {"Retry-After": "1"}
    assert refused.message == quota_message(1, "retry shortly")
    waiting.release.set()


async def test_the_quota_is_not_applied_on_an_open_server(make_store):
    store = make_store(max_jobs=3)
    for _ in range(3):
        await finished(store, owner=None, quota=1)
    refused = await refusal(store, owner=None, quota=1)  # only the store's own bound
    assert refused.message == "too many requests: 3 jobs are stored; retry in 3600 s"


async def test_a_full_store_waits_for_its_oldest_result_or_briefly_while_all_are_unfinished(make_store, clock):
    store = make_store(max_jobs=2)
    waiting = Waiting()
    first = await store.submit(waiting, owner=ALPHA)
    clock.now = 1005.0
    second = await store.submit(waiting, owner=BRAVO)
    refused = await refusal(store, owner="digest-of-key-charlie")
    assert refused.headers == {"Retry-After": "1"}
    assert refused.message == "too many requests: 2 jobs are stored; retry shortly"

    waiting.release.set()
    await asyncio.gather(first.task, second.task)  # both finished at 1005
    clock.now = 1200.25
    refused = await refusal(store, owner="digest-of-key-charlie")
    assert refused.headers == {"Retry-After": "3405"}  # 1005 + 3600 - 1200.25, rounded up
    assert refused.message == "too many requests: 2 jobs are stored; retry in 3405 s"


async def test_retry_after_is_at_least_one_second_and_the_place_is_free_when_it_says(make_store, clock):
    store = make_store(max_jobs=1)
    await finished(store)  # finished at 1000, expires at 4600
    clock.now = 4599.5
    assert (await refusal(store)).headers == {"Retry-After": "1"}
    clock.now = 4599.999
    assert (await refusal(store)).headers == {"Retry-After": "1"}
    clock.now = 4600.0
    await finished(store)


async def test_deleting_a_running_job_cancels_its_generation_and_gives_back_its_place(make_store):
    store = make_store()
    waiting = Waiting()
    job = await store.submit(waiting, owner=ALPHA)
    await asyncio.wait_for(waiting.started.wait(), 5)
    assert store.admission.count == 1

    assert await store.delete(job.id, owner=ALPHA) is True
    assert waiting.cancelled and job.task.cancelled()
    assert store.admission.count == 0
    assert store.get(job.id, owner=ALPHA) is None
    assert await store.delete(job.id, owner=ALPHA) is False


async def test_deleting_a_queued_job_cancels_it_and_gives_back_its_place(make_store):
    store = make_store()
    never = asyncio.Event()

    async def queued(job_id: str):  # no audio yet: the engine has not reached it
        await never.wait()
        yield np.zeros(SAMPLES_PER_FRAME, np.float32)

    job = await store.submit(queued)
    assert (await store.find(job.id)).status == QUEUED
    assert await store.delete(job.id) is True
    assert job.task.cancelled() and store.admission.count == 0
    assert store.get(job.id) is None and await store.find(job.id) is None


async def test_closing_the_store_before_a_job_starts_gives_back_its_place(make_store):
    store = make_store()
    waiting = Waiting()
    job = await store.submit(waiting)
    await store.close()  # its task has not run a step yet
    assert not waiting.started.is_set() and job.task.cancelled()
    assert store.admission.count == 0


async def test_another_owners_job_or_an_unknown_one_is_not_deleted(make_store):
    store = make_store()
    job = await finished(store, owner=ALPHA)
    assert await store.delete(job.id, owner=BRAVO) is False
    assert await store.delete(job.id, owner=None) is False
    assert await store.delete("unknown", owner=ALPHA) is False
    assert store.get(job.id, owner=ALPHA) is job


async def test_deleting_a_result_frees_its_keys_quota_place(make_store):
    store = make_store()
    first = await finished(store, owner=ALPHA, quota=1)
    await refusal(store, owner=ALPHA, quota=1)
    assert await store.delete(first.id, owner=ALPHA) is True
    await finished(store, owner=ALPHA, quota=1)
