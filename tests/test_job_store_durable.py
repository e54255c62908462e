"""The v2 job store shared by server processes, on both backends: a SQLite file in a temporary
directory, and a real redis-server on a free loopback port (started here, stopped after; a machine
without redis-server fails these tests rather than skipping them).

Several JobStores over one backend stand for several server processes ("replicas"): limits are
counted across them, any of them reads and deletes any job, results outlive the store that made them,
and the jobs of a killed process become FAILED. Then the same through the HTTP API, against real
`orpheus-local serve` processes sharing a --state-dir or a --jobs-url.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from support.process import free_port, start_server
from support.wav import wav_samples

from orpheus_local.audio.encoders import encode_audio
from orpheus_local.tokens import SAMPLE_RATE, SAMPLES_PER_FRAME
from server.encoding import EncoderPool
from server.errors import ApiError
from server.generation import Admission
from server.job_store import DEFAULT_FILE, SqliteJobBackend, backend_for
from server.job_store.redis_backend import RedisJobBackend
from server.jobs import COMPLETED, FAILED, PROCESSING, QUEUED, STOPPED, JobStore
from server.settings import ServerSettings

# The loop that the stores' fixture closes them in: the tests that use them run in it too.
in_fixture_loop = pytest.mark.asyncio(loop_scope="session")

TTL = 3600.0
ALPHA, BRAVO = "digest-of-key-alpha", "digest-of-key-bravo"
FRAME = np.full(SAMPLES_PER_FRAME, 0.1, np.float32)
WAV = encode_audio(FRAME, "wav", SAMPLE_RATE, 1.0)  # what a job of one frame stores


class Clock:
    """The jobs' clock, moved by hand (every store of a test shares it, as processes share time)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Generation:
    """Waits to be let in (the job stays QUEUED), yields one frame (PROCESSING), waits to be let
    out, then ends; it records being cancelled."""

    def __init__(self, enter: bool = True, leave: bool = False):
        self.enter, self.leave = asyncio.Event(), asyncio.Event()
        if enter:
            self.enter.set()
        if leave:
            self.leave.set()
        self.cancelled = asyncio.Event()

    async def __call__(self, job_id: str):
        try:
            await self.enter.wait()
            yield FRAME
            await self.leave.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def until(condition, timeout: float = 10.0, what: str = "the condition"):
    """Await condition() (a coroutine function) until it is true; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not true after {timeout} s"
        await asyncio.sleep(0.02)


# --- the backends ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A redis-server of this module's own: no persistence, in a temporary directory."""
    port, directory = free_port(), tmp_path_factory.mktemp("redis")
    log = directory / "redis.log"  # a file, not a pipe: a pipe nobody reads would stall the server once full
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(directory), "--logfile", str(log)])
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            assert server.poll() is None, f"redis-server exited: {log.read_text() if log.exists() else ''}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)
        yield url
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    """--jobs-url of an empty store."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/shared/jobs.sqlite3"
    url = request.getfixturevalue("redis_url")
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def encoders():
    pool = EncoderPool(1)
    yield pool
    pool.close()


@pytest.fixture
async def make_store(store_url, clock, encoders, tmp_path):
    """Opened JobStores over the test's backend, each with a backend object (a connection) and an
    admission of its own, as a server process has; all closed at the end."""
    stores = []

    async def make(max_jobs: int = 100, **options) -> JobStore:
        store = JobStore(Admission(100), encoders, backend_for(store_url, tmp_path), max_jobs, TTL, clock=clock,
                         **options)
        stores.append(store)
        await store.open()
        return store

    yield make
    for store in stores:
        await store.close()


async def status(store: JobStore, job_id: str, owner: str | None = ALPHA) -> str | None:
    job = await store.find(job_id, owner)
    return None if job is None else job.status


# --- one store ---------------------------------------------------------------------------------


@in_fixture_loop
async def test_a_job_goes_from_queued_to_processing_to_completed_with_its_times(make_store, clock):
    store = await make_store()
    generation = Generation(enter=False)
    job = await store.submit(generation, owner=ALPHA)
    assert await status(store, job.id) == QUEUED

    clock.now = 1002.0
    generation.enter.set()
    await until(lambda: _is(store, job.id, PROCESSING), what="PROCESSING")
    clock.now = 1005.0
    generation.leave.set()
    await job.task

    stored = await store.find(job.id, ALPHA)
    assert (stored.status, stored.created, stored.started, stored.finished, stored.expires, stored.error) == \
        (COMPLETED, 1000.0, 1002.0, 1005.0, 1005.0 + TTL, None)
    assert stored.metrics(clock.now) == {"queue_time": 2.0, "inference_time": 3.0, "total_time": 5.0}
    assert await store.audio(job.id) == WAV
    assert await store.find(job.id, BRAVO) is None and await store.find(job.id, None) is None
    assert store.admission.count == 0


async def _is(store: JobStore, job_id: str, wanted: str) -> bool:
    return await status(store, job_id) == wanted


@in_fixture_loop
async def test_a_result_is_kept_until_its_time_to_live_is_over(make_store, clock):
    store = await make_store(max_jobs=1)
    job = await store.submit(Generation(leave=True), owner=ALPHA)
    await job.task  # finished at 1000
    clock.now = 1000.0 + TTL - 0.001
    assert await status(store, job.id) == COMPLETED
    with pytest.raises(ApiError) as refused:
        await store.submit(Generation(leave=True), owner=BRAVO)
    assert (refused.value.status, refused.value.headers) == (429, {"Retry-After": "1"})

    clock.now = 1000.0 + TTL
    assert await store.find(job.id, ALPHA) is None
    assert await store.delete(job.id, ALPHA) is False
    again = await store.submit(Generation(leave=True), owner=BRAVO)  # its place is free
    await again.task
    assert await status(store, again.id, BRAVO) == COMPLETED


@in_fixture_loop
async def test_a_failed_generation_is_stored_failed_with_its_reason(make_store):
    store = await make_store()

    async def failing(job_id: str):
        yield FRAME
        raise ApiError(400, "text: too long for one job")

    job = await store.submit(failing, owner=ALPHA)
    await job.task
    stored = await store.find(job.id, ALPHA)
    assert (stored.status, stored.error) == (FAILED, "text: too long for one job")
    assert await store.audio(job.id) in (None, b"")


# --- two stores on one backend: two processes ---------------------------------------------------


@in_fixture_loop
async def test_max_jobs_and_each_keys_quota_are_counted_across_processes(make_store, clock):
    first, second = await make_store(max_jobs=3), await make_store(max_jobs=3)
    a = await first.submit(Generation(leave=True), owner=ALPHA, quota=2)
    await a.task  # finished at 1000
    clock.now = 1010.0
    b = await second.submit(Generation(leave=True), owner=ALPHA, quota=2)
    await b.task  # finished at 1010
    clock.now = 1100.5

    for store in (first, second):
        with pytest.raises(ApiError) as refused:
            await store.submit(Generation(leave=True), owner=ALPHA, quota=2)
        assert refused.value.headers == {"Retry-After": "3500"}  # 1000 + 3600 - 1100.5, rounded up
        assert "this API key's quota of 2 stored v2 jobs is used" in refused.value.message
    running = Generation()
    c = await first.submit(running, owner=BRAVO, quota=2)  # another key: the third job of three
    with pytest.raises(ApiError) as full:
        await second.submit(Generation(leave=True), owner=BRAVO, quota=2)
    assert full.value.message == "too many requests: 3 jobs are stored; retry in 3500 s"
    assert first.admission.count == 1 and second.admission.count == 0  # refusals keep no place

    assert await second.delete(a.id, ALPHA) is True  # a place frees for all
    d = await second.submit(Generation(leave=True), owner=ALPHA, quota=2)
    await d.task
    assert [await status(first, job.id) for job in (a, b, d)] == [None, COMPLETED, COMPLETED]
    running.leave.set()
    await c.task


@in_fixture_loop
async def test_a_job_accepted_by_one_process_is_read_and_deleted_through_another(make_store):
    generating, other = await make_store(heartbeat_s=0.05), await make_store()
    generation = Generation()
    job = await generating.submit(generation, owner=ALPHA)
    await until(lambda: _is(other, job.id, PROCESSING), what="PROCESSING, seen by the other process")
    assert other.get(job.id, ALPHA) is None  # the other process holds no handle: it reads the store

    assert await other.delete(job.id, BRAVO) is False
    assert await other.delete(job.id, ALPHA) is True
    assert await generating.find(job.id, ALPHA) is None  # gone for every process at once
    # The generating process notices on its heartbeat: the generation is cancelled, its place free.
    await asyncio.wait_for(generation.cancelled.wait(), 10)
    await asyncio.wait({job.task})
    assert generating.admission.count == 0 and generating.get(job.id, ALPHA) is None
    assert await other.find(job.id, ALPHA) is None and await other.audio(job.id) is None


@in_fixture_loop
async def test_a_job_deleted_elsewhere_just_before_it_finishes_leaves_no_result(make_store):
    generating, other = await make_store(heartbeat_s=600), await make_store()  # no heartbeat comes in time
    generation = Generation()
    job = await generating.submit(generation, owner=ALPHA)
    await until(lambda: _is(other, job.id, PROCESSING), what="PROCESSING")
    assert await other.delete(job.id, ALPHA) is True
    generation.leave.set()
    await job.task  # finished: its outcome is not written to a job that is gone
    assert job.status == COMPLETED and generating.admission.count == 0
    assert await other.find(job.id, ALPHA) is None and await generating.audio(job.id) is None


@in_fixture_loop
async def test_a_finished_result_outlives_the_process_that_made_it(make_store):
    first = await make_store()
    job = await first.submit(Generation(leave=True), owner=ALPHA)
    await job.task
    await first.close()

    restarted = await make_store()
    assert await status(restarted, job.id) == COMPLETED
    assert await restarted.audio(job.id) == WAV
    assert await restarted.delete(job.id, ALPHA) is True


@in_fixture_loop
async def test_a_process_that_stops_marks_its_unfinished_jobs_failed_at_once(make_store, clock):
    stopping, other = await make_store(), await make_store()
    queued, running = Generation(enter=False), Generation()
    waiting_job = await stopping.submit(queued, owner=ALPHA)
    running_job = await stopping.submit(running, owner=ALPHA)
    await until(lambda: _is(other, running_job.id, PROCESSING), what="PROCESSING")
    clock.now = 1030.0
    await stopping.close()

    for job in (waiting_job, running_job):
        stored = await other.find(job.id, ALPHA)
        assert (stored.status, stored.error, stored.finished, stored.expires) == (FAILED, STOPPED, 1030.0, 1030.0 + TTL)
    assert running.cancelled.is_set() and stopping.admission.count == 0


# The child: a server process's store, generating a job that never ends, killed by the test.
_CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    import numpy as np
    from server.encoding import EncoderPool
    from server.generation import Admission
    from server.job_store import backend_for
    from server.jobs import JobStore

    async def endless(job_id):
        yield np.zeros(2048, np.float32)
        await asyncio.Event().wait()

    async def main(url, state_dir, owner):
        store = JobStore(Admission(1), EncoderPool(1), backend_for(url, Path(state_dir)), 10, 3600.0,
                         heartbeat_s=0.1, lease_s=1.0)
        job = await store.submit(endless, owner=owner)
        while (await store.find(job.id, owner)).status != "PROCESSING":
            await asyncio.sleep(0.01)
        print(job.id, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
""")


@in_fixture_loop
async def test_the_jobs_of_a_killed_process_become_failed_and_a_live_ones_do_not(make_store, store_url, tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, store_url, str(tmp_path), ALPHA],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        orphan = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert orphan, child.stderr.read()
        orphan = orphan.strip()
    finally:
        child.send_signal(signal.SIGKILL)  # no shutdown of any kind: only its lease tells
        child.wait(timeout=10)

    alive = await make_store(heartbeat_s=0.05)
    generation = Generation()
    alive_job = await alive.submit(generation, owner=ALPHA)
    await until(lambda: _is(alive, orphan, FAILED), what="the killed process's job FAILED")  # lease 1 s
    assert (await alive.find(orphan, ALPHA)).error == STOPPED
    assert await status(alive, alive_job.id) == PROCESSING  # a live process's job is left alone
    generation.leave.set()
    await alive_job.task
    assert await status(alive, alive_job.id) == COMPLETED


# --- settings ----------------------------------------------------------------------------------


def test_the_store_is_a_sqlite_file_under_the_state_dir_unless_jobs_url_says_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv("ORPHEUS_STATE_DIR", raising=False)
    monkeypatch.delenv("ORPHEUS_JOBS_URL", raising=False)
    defaults = ServerSettings()
    assert defaults.state_dir == Path.home() / ".local/state/orpheus-local" and defaults.jobs_url is None

    settings = ServerSettings(_cli_parse_args=["--state-dir", str(tmp_path)])
    backend = backend_for(settings.jobs_url, settings.state_dir)
    assert isinstance(backend, SqliteJobBackend) and backend.path == tmp_path / DEFAULT_FILE
    backend = backend_for("sqlite:///var/lib/orpheus/jobs.db", tmp_path)
    assert isinstance(backend, SqliteJobBackend) and backend.path == Path("/var/lib/orpheus/jobs.db")
    backend = backend_for(ServerSettings(jobs_url="redis://:secret@cache:6380/2").jobs_url, tmp_path)
    assert isinstance(backend, RedisJobBackend) and backend.description == "Redis at redis://cache:6380/2"
    for wrong in ("postgres://db/jobs", "sqlite://host/jobs.db", "jobs.sqlite3"):
        with pytest.raises(ValueError, match="must be redis://"):
            ServerSettings(jobs_url=wrong)


# --- through the HTTP API, between real server processes -----------------------------------------

V2 = "/v2/orpheus-3b-0.1"
JOB = {"text": "Hello there.", "voice": "tara", "max_new_tokens": 100, "seed": 1}
KEYS = ("durable-key-alpha-0123456789", "durable-key-bravo-9876543210")
AS_ALPHA, AS_BRAVO = {"x-api-key": KEYS[0]}, {"x-api-key": KEYS[1]}


def _started(*flag_sets: tuple[str, ...]) -> list:
    """Servers started side by side (each loads on a core of its own); all stopped if one fails."""
    with ThreadPoolExecutor(len(flag_sets)) as pool:
        futures = [pool.submit(start_server, *flags) for flags in flag_sets]
    servers = [f.result() for f in futures if f.exception() is None]
    if len(servers) < len(futures):
        for server in servers:
            server.stop()
        raise next(f.exception() for f in futures if f.exception() is not None)
    return servers


def _completed(server, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.base_url, headers=AS_ALPHA, timeout=10) as client:
        while True:
            answer = client.get(f"/v2/requests/{job_id}/status")
            assert answer.status_code == 200, answer.text
            if answer.json()["status"] == COMPLETED:
                return answer.json()
            assert time.monotonic() < deadline, f"not COMPLETED after {timeout} s: {answer.json()}"
            time.sleep(0.1)


def _audio(server, job_id: str, headers: dict = AS_ALPHA) -> bytes:
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        result = client.get(f"/v2/requests/{job_id}")
        assert result.status_code == 200 and result.json()["status"] == COMPLETED, result.text
        assert result.json()["output"] == f"{server.base_url}/v2/requests/{job_id}/output.wav"
        audio = client.get(result.json()["output"])
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    return audio.content


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_job_through_the_api_is_answered_by_every_server_and_outlives_a_restart(
        backend, request, demo_dirs, demo_config, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{key}\n" for key in KEYS))
    store = ["--state-dir", str(tmp_path / "state")]
    if backend == "redis":
        store += ["--jobs-url", request.getfixturevalue("redis_url")]
        with redis.Redis.from_url(store[-1]) as client:
            client.flushdb()
    common = ("--api-keys-file", str(keys), "--no-warmup", *store)
    generating = ("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu", "--backend", demo_config.backend,
                  *common)
    # The servers that only answer from the store need no model: the host-only engine starts faster.
    answering = ("--simulated-step-ms", "5", *common)

    with ExitStack() as stack:
        first, replica = _started(generating, answering)
        stack.callback(replica.stop)
        stack.callback(first.stop)
        submitted = httpx.post(first.base_url + V2, json=JOB, headers=AS_ALPHA, timeout=30)
        assert submitted.status_code == 200 and submitted.json()["status"] == QUEUED, submitted.text
        job_id = submitted.json()["request_id"]

        done = _completed(replica, job_id)  # polled at the replica, generated by the first
        assert done["status_url"] == f"{replica.base_url}/v2/requests/{job_id}/status"
        wav = _audio(replica, job_id)
        assert wav_samples(wav) > 0 and _audio(first, job_id) == wav
        with httpx.Client(base_url=replica.base_url, timeout=10) as client:
            assert client.get(f"/v2/requests/{job_id}/status", headers=AS_BRAVO).status_code == 404  # not its key's
        assert (first.stop(), replica.stop()) == (0, 0)  # SIGTERM: drained and stopped

    (restarted,) = _started(answering)
    try:
        assert _completed(restarted, job_id)["status"] == COMPLETED
        assert _audio(restarted, job_id) == wav
    finally:
        assert restarted.stop() == 0
    if backend == "sqlite":
        assert (tmp_path / "state" / DEFAULT_FILE).is_file()
    assert "Traceback" not in first.output + replica.output + restarted.output
