"""Segmind v2 jobs: submitted, generated in the background through the same admission and engine
queue as synchronous requests, kept in memory for a while after they finish, then forgotten."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterable

import numpy as np

from orpheus_local.audio.encoders import encode_audio
from orpheus_local.tokens import SAMPLE_RATE

from . import request_log
from .encoding import EncoderPool
from .errors import RETRY_AFTER_BUSY_S, ApiError, busy
from .generation import Admission, collect

log = logging.getLogger(__name__)

QUEUED, PROCESSING, COMPLETED, FAILED = "QUEUED", "PROCESSING", "COMPLETED", "FAILED"


@dataclass
class Job:
    id: str
    created: float
    started: float | None = None  # first audio: the engine is working on it
    finished: float | None = None
    status: str = QUEUED
    audio: bytes | None = None  # the WAV file, once COMPLETED
    error: str | None = None  # once FAILED
    speed: float = 1.0  # playback speed of the WAV file
    owner: int | None = None  # the API key that submitted it (its index), when keys are configured
    task: asyncio.Task | None = field(default=None, repr=False)
    holds_place: bool = field(default=True, repr=False)  # its admission place, until it ends

    def metrics(self, now: float) -> dict:
        """Seconds: waiting until the first audio, generating after it, and both."""
        end = now if self.finished is None else self.finished
        started = end if self.started is None else self.started
        return {
            "queue_time": round(started - self.created, 3),
            "inference_time": round(end - started, 3),
            "total_time": round(end - self.created, 3),
        }


class JobStore:
    """Jobs by id. A finished job keeps its place in the store (max_jobs in all, and its key's quota)
    until ttl_s after it finished, or until it is deleted. clock: seconds, monotonic."""

    def __init__(self, admission: Admission, encoders: EncoderPool, max_jobs: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.admission = admission
        self.encoders = encoders
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.clock = clock
        self._jobs: dict[str, Job] = {}

    def submit(self, generate: Callable[[str], AsyncIterator[np.ndarray]], *, speed: float = 1.0,
               owner: int | None = None, quota: int | None = None) -> Job:
        """Start generate(job_id) in the background; 429 when the server or the store is full, or when
        owner already has quota jobs stored. quota applies to API keys only: owner None (an open
        server, where every client is the same owner) is bounded by max_jobs alone."""
        self._forget_expired()
        if owner is not None and quota is not None:
            mine = [job for job in self._jobs.values() if job.owner == owner]
            if len(mine) >= quota:
                raise busy(f"this API key's quota of {quota} stored v2 jobs is used (finished ones count until "
                           f"their results expire); DELETE /v2/requests/{{request_id}} frees a place",
                           self._retry_after(mine))
        if len(self._jobs) >= self.max_jobs:
            raise busy(f"{self.max_jobs} jobs are stored", self._retry_after(self._jobs.values()))
        self.admission.acquire()
        job_id = secrets.token_urlsafe(16)  # unguessable: no client can find another's results
        job = self._jobs[job_id] = Job(job_id, created=self.clock(), speed=speed, owner=owner)
        job.task = asyncio.create_task(self._run(job, generate(job_id)), name=f"job-{job_id}")
        # A task cancelled before its first step never enters _run: its place is given back here.
        job.task.add_done_callback(lambda _: self._end(job))
        return job

    def get(self, job_id: str, owner: int | None = None) -> Job | None:
        """The job, if it exists and owner submitted it: another key's job is as good as unknown."""
        self._forget_expired()
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    async def delete(self, job_id: str, owner: int | None = None) -> Job | None:
        """Forget the job (None if get() would not find it); a job still queued or running is
        cancelled first, and its admission place is free on return."""
        job = self.get(job_id, owner)
        if job is None:
            return None
        del self._jobs[job_id]
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait({job.task})
        return job

    async def close(self) -> None:
        """Cancel the jobs still generating (server shutdown)."""
        tasks = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: Job, chunks: AsyncIterator[np.ndarray]) -> None:
        def processing() -> None:
            job.status, job.started = PROCESSING, self.clock()

        # The job outlives the request that submitted it: its generation goes on a log line of its
        # own, with the status it would have had as a request.
        record = request_log.open_record("job", job.id)
        record.status = 499  # cancelled, unless it ends otherwise
        try:
            pcm = await collect(chunks, on_first=processing)
            job.audio = await self.encoders.run(encode_audio, pcm, "wav", SAMPLE_RATE, job.speed)
            job.status, record.status = COMPLETED, 200
        except ApiError as exc:
            job.status, job.error, record.status = FAILED, exc.message, exc.status
        except Exception:
            log.exception("job %s failed", job.id)
            job.status, job.error, record.status = FAILED, f"generation failed (request {job.id})", 500
        finally:
            self._end(job)
            record.write()

    def _end(self, job: Job) -> None:
        """The job has ended (done, failed or cancelled): its time to live starts, its place is given
        back. Once only."""
        if job.holds_place:
            job.holds_place = False
            job.finished = self.clock()
            self.admission.release()

    def _retry_after(self, jobs: Iterable[Job]) -> int:
        """Seconds until the first of jobs to expire does (at least 1); a short wait when none has
        finished yet."""
        finished = [job.finished for job in jobs if job.finished is not None]
        if not finished:
            return RETRY_AFTER_BUSY_S
        return max(1, math.ceil(min(finished) + self.ttl_s - self.clock()))

    def _forget_expired(self) -> None:
        now = self.clock()
        for job_id in [j.id for j in self._jobs.values() if j.finished is not None and j.finished + self.ttl_s <= now]:
            del self._jobs[job_id]
