"""What a job store keeps of a v2 job, and what every backend of it answers to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Protocol

QUEUED, PROCESSING, COMPLETED, FAILED = "QUEUED", "PROCESSING", "COMPLETED", "FAILED"
UNFINISHED = (QUEUED, PROCESSING)


@dataclass
class StoredJob:
    """A job as any process sees it. Times are the job clock's seconds (wall time by default, so that
    they mean the same in every process and after a restart)."""

    id: str
    owner: str | None  # SHA-256 hex digest of the API key that submitted it; None on an open server
    instance: str  # the process generating it (JobStore.instance)
    status: str = QUEUED
    created: float = 0.0
    started: float | None = None  # first audio: the engine is working on it
    finished: float | None = None
    expires: float | None = None  # once finished: when it is forgotten
    error: str | None = None  # once FAILED

    def metrics(self, now: float) -> dict:
        """Seconds: waiting until the first audio, generating after it, and both."""
        end = now if self.finished is None else self.finished
        started = end if self.started is None else self.started
        return {
            "queue_time": round(started - self.created, 3),
            "inference_time": round(end - started, 3),
            "total_time": round(end - self.created, 3),
        }


@dataclass
class Refusal:
    """Why a job was not stored: its owner's quota is used, or the store is full. earliest_expiry:
    when the first of the counted jobs is forgotten; None while none of them has finished."""

    reason: Literal["quota", "full"]
    earliest_expiry: float | None


class JobBackend(Protocol):
    """Where jobs live, shared by every process that opens the same store. Nothing is read or
    written before open(). A job still QUEUED or PROCESSING belongs to the instance that inserted it;
    an instance is alive while its lease (heartbeat) lasts, in the backend's own wall time."""

    description: str  # where, for logs and errors (no secrets)

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(self, job: StoredJob, *, now: float, max_jobs: int, quota: int | None) -> Refusal | None:
        """Forget the jobs expired at `now`, then store job unless that would hold more than max_jobs,
        or more than quota of its owner's (quota None: no per-owner bound). Atomic across processes."""

    async def get(self, job_id: str) -> StoredJob | None:
        """The job (expired or not: the caller judges), without its audio."""

    async def audio(self, job_id: str) -> bytes | None:
        """A COMPLETED job's WAV file."""

    async def mark_processing(self, job_id: str, started: float) -> None:
        """QUEUED -> PROCESSING; nothing if it is no longer QUEUED."""

    async def finish(self, job: StoredJob, audio: bytes | None) -> bool:
        """Store job's outcome (status, finished, expires, error) and audio, if the job is still
        unfinished in the store; False if it was deleted or failed by another process meanwhile."""

    async def delete(self, job_id: str, owner: str | None, now: float) -> bool:
        """Forget the job if owner submitted it and it has not expired at `now`."""

    async def heartbeat(self, instance: str, lease_s: float) -> None:
        """instance is alive for lease_s more seconds."""

    async def unfinished(self, job_ids: Iterable[str]) -> set[str]:
        """Those of job_ids that are still QUEUED or PROCESSING in the store."""

    async def fail_orphans(self, finished: float, expires: float, reason: str, *, retiring: str | None = None) -> int:
        """Mark FAILED, with reason, the unfinished jobs of every instance whose lease has run out
        (and of `retiring`, an instance that is stopping, whose lease ends now); forget those
        instances, and forget the jobs expired at `finished`. The number of jobs failed."""
