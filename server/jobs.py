"""Segmind v2 jobs: submitted, generated in the background through the same admission and engine
queue as synchronous requests, and kept in a store that every server process shares
(server/job_store/: a SQLite file by default, or Redis) until their results expire.

Who does what:
- The process that accepts a job generates it: its task runs there, holding one of that process's
  admission places, and it writes the job's progress to the store (PROCESSING at the first audio,
  then COMPLETED with the WAV file, or FAILED with the reason).
- Any process answers a job's status, result and DELETE, from the store. A job belongs to the
  SHA-256 digest of the API key that submitted it, which is the same in every process and after a
  restart. max_jobs, the per-key quota and the time to live are counted in the store, atomically,
  so they hold across processes.

Processes that stop: each process is an instance with an id of its own, and renews a lease in the
store every HEARTBEAT_S (the lease lasts LEASE_S). At start-up and on each heartbeat, a process
marks FAILED (STOPPED says why) the unfinished jobs of every instance whose lease has run out: the
jobs of a process that crashed or was killed become FAILED within LEASE_S + HEARTBEAT_S, never stay
PROCESSING. A process that stops normally cancels its unfinished jobs and marks them FAILED at once.
Finished results outlive the processes: they can be fetched after a restart until they expire.

DELETE in a process other than the generating one: the job leaves the store at once (its URLs
answer 404; its places in max_jobs and in its key's quota are free). The generating process notices
on its next heartbeat and cancels the generation, which gives back its admission place; and since
an outcome is only ever written to a job still unfinished in the store, nothing of a deleted job is
stored again. In the generating process itself, DELETE cancels at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import numpy as np

from orpheus_local.audio.encoders import encode_audio
from orpheus_local.tokens import SAMPLE_RATE

from . import request_log
from .encoding import EncoderPool
from .errors import RETRY_AFTER_BUSY_S, ApiError, busy
from .generation import Admission, collect
from .job_store import JobBackend
from .job_store.records import (
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    UNFINISHED,
    Refusal,
    StoredJob,
)

log = logging.getLogger(__name__)

__all__ = ["COMPLETED", "FAILED", "PROCESSING", "QUEUED", "Job", "JobStore", "JobStoreError", "StoredJob"]

HEARTBEAT_S = 2.0
# Long enough that a busy event loop does not lose it; short enough that a dead process's jobs
# are soon FAILED.
LEASE_S = 15.0
STOPPED = "the server stopped before this job finished; submit it again"


class JobStoreError(Exception):
    """The store cannot be opened (start-up fails with this)."""


@dataclass
class Job:
    """A job as the process generating it holds it: its task and its admission place."""

    id: str
    owner: str | None  # the submitting API key's digest; None on an open server
    created: float
    speed: float = 1.0  # playback speed of the WAV file
    status: str = QUEUED
    started: float | None = None
    finished: float | None = None
    error: str | None = None  # once FAILED
    task: asyncio.Task | None = field(default=None, repr=False)
    holds_place: bool = field(default=True, repr=False)  # its admission place, until it ends


class JobStore:
    """Jobs by id, in `backend`. A finished job keeps its place (in max_jobs, and in its key's quota)
    until ttl_s after it finished, or until it is deleted. clock: seconds since the epoch, for the
    jobs' times (a test moves it by hand); the leases run on the backend's wall time."""

    def __init__(self, admission: Admission, encoders: EncoderPool, backend: JobBackend, max_jobs: int, ttl_s: float,
                 clock: Callable[[], float] = time.time, *, heartbeat_s: float = HEARTBEAT_S, lease_s: float = LEASE_S):
        self.admission = admission
        self.encoders = encoders
        self.backend = backend
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._jobs: dict[str, Job] = {}  # the jobs this process accepted, until they expire
        # Outcomes not written yet (the store was unreachable): each heartbeat tries again.
        self._unstored: dict[str, tuple[StoredJob, bytes | None]] = {}
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._heartbeat: asyncio.Task | None = None

    async def open(self) -> None:
        """Open the store, take this instance's lease, fail the jobs of instances that are gone, and
        keep the lease from then on. At start-up; every other method opens the store if need be."""
        async with self._open_lock:
            if self._opened:
                return
            try:
                await self.backend.open()
                await self.backend.heartbeat(self.instance, self.lease_s)
            except Exception as exc:
                with suppress(Exception):
                    await self.backend.close()
                raise JobStoreError(f"cannot open the v2 job store ({self.backend.description}): {exc}") from exc
            self._opened = True
            self._heartbeat = asyncio.create_task(self._keep_alive(), name="job-store-heartbeat")
            log.info("v2 jobs kept in the %s", self.backend.description)

    async def submit(self, generate: Callable[[str], AsyncIterator[np.ndarray]], *, speed: float = 1.0,
                     owner: str | None = None, quota: int | None = None) -> Job:
        """Start generate(job_id) in the background; 429 when this server is full, when the store is,
        or when owner already has quota jobs stored. quota applies to API keys only: owner None (an
        open server, where every client is the same owner) is bounded by max_jobs alone."""
        await self.open()
        self._forget_expired()
        self.admission.acquire()
        job_id = secrets.token_urlsafe(16)  # unguessable: no client can find another's results
        now = self.clock()
        try:
            refusal = await self.backend.insert(StoredJob(job_id, owner, self.instance, created=now), now=now,
                                                max_jobs=self.max_jobs, quota=quota if owner is not None else None)
        except BaseException:
            self.admission.release()
            raise
        if refusal is not None:
            self.admission.release()
            raise self._refused(refusal, quota, now)
        job = self._jobs[job_id] = Job(job_id, owner, created=now, speed=speed)
        job.task = asyncio.create_task(self._run(job, generate(job_id)), name=f"job-{job_id}")
        # A task cancelled before its first step never enters _run: its place is given back here.
        job.task.add_done_callback(lambda _: self._end(job))
        return job

    async def find(self, job_id: str, owner: str | None = None) -> StoredJob | None:
        """The job as the store has it (whichever process generates it), if owner submitted it and it
        has not expired: another key's job is as good as unknown."""
        await self.open()
        job = await self.backend.get(job_id)
        if job is None or job.owner != owner or (job.expires is not None and job.expires <= self.clock()):
            return None
        return job

    async def audio(self, job_id: str) -> bytes | None:
        """A COMPLETED job's WAV file (None if it is gone meanwhile); find() it first."""
        await self.open()
        return await self.backend.audio(job_id)

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """This process's own handle on a job it accepted (its generation task), while the job is
        kept; None for another owner's job or one that another process accepted."""
        self._forget_expired()
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    async def delete(self, job_id: str, owner: str | None = None) -> bool:
        """Forget the job (False if find() would not find it). If this process is generating it, the
        generation is cancelled and its admission place is free on return; if another process is, that
        one cancels it on its next heartbeat."""
        await self.open()
        if not await self.backend.delete(job_id, owner, self.clock()):
            return False
        job = self._jobs.pop(job_id, None)
        if job is not None and job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait({job.task})
        return True

    async def close(self) -> None:
        """Server shutdown: cancel the jobs still generating, mark them FAILED in the store, give up
        the lease."""
        tasks = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        if self._heartbeat is not None:
            tasks.append(self._heartbeat)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if self._opened:
                await self._store_unstored()
                now = self.clock()
                await self.backend.fail_orphans(now, now + self.ttl_s, STOPPED, retiring=self.instance)
        except Exception as exc:
            log.warning("v2 jobs of this server not marked FAILED in the store at shutdown (other servers will, "
                        "once its lease runs out): %s", exc)
        finally:
            self._opened = False
            await self.backend.close()

    # --- generation ---

    async def _run(self, job: Job, chunks: AsyncIterator[np.ndarray]) -> None:
        # The job outlives the request that submitted it: its generation goes on a log line of its
        # own, with the status it would have had as a request.
        record = request_log.open_record("job", job.id)
        record.status = 499  # cancelled (deleted, or the server stopped), unless it ends otherwise
        audio = None
        try:
            try:
                pcm = await collect(self._noting_start(job, chunks))
                audio = await self.encoders.run(encode_audio, pcm, "wav", SAMPLE_RATE, job.speed)
                job.status, record.status = COMPLETED, 200
            except ApiError as exc:
                job.status, job.error, record.status = FAILED, exc.message, exc.status
            except Exception:
                log.exception("job %s failed", job.id)
                job.status, job.error, record.status = FAILED, f"generation failed (request {job.id})", 500
            job.finished = self.clock()
            await self._store_outcome(self._stored(job), audio)
        finally:
            self._end(job)
            record.write()

    async def _noting_start(self, job: Job, chunks: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
        """chunks; PROCESSING in the store once the first arrives."""
        async with aclosing(chunks):
            async for pcm in chunks:
                if job.started is None:
                    job.status, job.started = PROCESSING, self.clock()
                    try:
                        await self.backend.mark_processing(job.id, job.started)
                    except Exception as exc:  # progress only: the generation goes on
                        log.warning("job %s: PROCESSING not stored: %s", job.id, exc)
                yield pcm

    def _stored(self, job: Job) -> StoredJob:
        return StoredJob(job.id, job.owner, self.instance, job.status, job.created, job.started, job.finished,
                         expires=job.finished + self.ttl_s, error=job.error)

    async def _store_outcome(self, stored: StoredJob, audio: bytes | None) -> None:
        try:
            if not await self.backend.finish(stored, audio):
                log.info("job %s was deleted, or failed by another server, before it finished: its outcome is "
                         "dropped", stored.id)
        except Exception as exc:
            # Kept until the store takes it (each heartbeat tries again): the job must not stay PROCESSING.
            log.warning("job %s: outcome not stored yet: %s", stored.id, exc)
            self._unstored[stored.id] = stored, audio

    def _end(self, job: Job) -> None:
        """The job has ended (done, failed or cancelled): its admission place is given back. Once only."""
        if job.holds_place:
            job.holds_place = False
            if job.finished is None:
                job.finished = self.clock()
            self.admission.release()

    # --- the heartbeat ---

    async def _keep_alive(self) -> None:
        while True:
            try:
                await self._beat()
            except Exception as exc:  # the store unreachable for a moment: try again on the next beat
                log.warning("v2 job store heartbeat failed: %s", exc)
            await asyncio.sleep(self.heartbeat_s)

    async def _beat(self) -> None:
        await self.backend.heartbeat(self.instance, self.lease_s)
        now = self.clock()
        if failed := await self.backend.fail_orphans(now, now + self.ttl_s, STOPPED):
            log.warning("%d v2 jobs of servers that stopped were marked FAILED", failed)
        await self._store_unstored()
        await self._cancel_deleted()

    async def _store_unstored(self) -> None:
        for stored, audio in list(self._unstored.values()):
            del self._unstored[stored.id]
            await self._store_outcome(stored, audio)

    async def _cancel_deleted(self) -> None:
        """Cancel the generations of jobs that are no longer unfinished in the store: deleted through
        another process (or failed by one, if this process lost its lease)."""
        generating = [job for job in self._jobs.values()
                      if job.status in UNFINISHED and job.task is not None and not job.task.done()]
        if not generating:
            return
        still = await self.backend.unfinished(job.id for job in generating)
        for job in generating:
            # job.status is looked at again: the job may have finished while the store was asked
            if job.id not in still and job.status in UNFINISHED:
                log.info("job %s was deleted through another server: its generation is cancelled", job.id)
                self._jobs.pop(job.id, None)
                job.task.cancel()

    # --- limits ---

    def _refused(self, refusal: Refusal, quota: int | None, now: float) -> ApiError:
        if refusal.earliest_expiry is None:  # none has finished yet: a short wait
            retry_after = RETRY_AFTER_BUSY_S
        else:
            retry_after = max(1, math.ceil(refusal.earliest_expiry - now))
        if refusal.reason == "quota":
            return busy(f"this API key's quota of {quota} stored v2 jobs is used (finished ones count until "
                        f"their results expire); DELETE /v2/requests/{{request_id}} frees a place", retry_after)
        return busy(f"{self.max_jobs} jobs are stored", retry_after)

    def _forget_expired(self) -> None:
        """Drop this process's handles on jobs whose results have expired (the store forgets them too)."""
        now = self.clock()
        for job_id in [j.id for j in self._jobs.values() if j.finished is not None and j.finished + self.ttl_s <= now]:
            del self._jobs[job_id]
