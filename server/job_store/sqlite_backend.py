"""SqliteJobBackend: v2 jobs in one SQLite file, shared by every server process on this machine.

WAL mode lets readers go on while one process writes; a busy timeout makes a process wait for
another's write instead of failing. Each process reaches the file through one connection on one
thread of its own (sqlite3 blocks): the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from .records import FAILED, PROCESSING, QUEUED, Refusal, StoredJob

T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        owner TEXT,
        instance TEXT NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        expires REAL,
        error TEXT,
        audio BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner)",
    "CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires)",
    "CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, alive_until REAL NOT NULL)",
)
_FIELDS = "id, owner, instance, status, created, started, finished, expires, error"
_UNFINISHED = f"status IN ('{QUEUED}', '{PROCESSING}')"


class SqliteJobBackend:
    """wall_clock: seconds since the epoch, for the instances' leases (the same in every process)."""

    def __init__(self, path: Path, wall_clock: Callable[[], float] = time.time):
        self.path = path
        self.description = f"SQLite file {path}"
        self.wall_clock = wall_clock
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="orpheus-jobs-sqlite")
        await self._call(self._open)

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._call(self._close)
        self._thread.shutdown(wait=False)
        self._thread = None

    async def insert(self, job: StoredJob, *, now: float, max_jobs: int, quota: int | None) -> Refusal | None:
        return await self._call(self._insert, job, now, max_jobs, quota)

    async def get(self, job_id: str) -> StoredJob | None:
        return await self._call(self._get, job_id)

    async def audio(self, job_id: str) -> bytes | None:
        return await self._call(self._audio, job_id)

    async def mark_processing(self, job_id: str, started: float) -> None:
        await self._call(self._execute, f"UPDATE jobs SET status = '{PROCESSING}', started = ? "
                                        f"WHERE id = ? AND status = '{QUEUED}'", (started, job_id))

    async def finish(self, job: StoredJob, audio: bytes | None) -> bool:
        changed = await self._call(
            self._execute, f"UPDATE jobs SET status = ?, finished = ?, expires = ?, error = ?, audio = ? "
                           f"WHERE id = ? AND {_UNFINISHED}",
            (job.status, job.finished, job.expires, job.error, audio, job.id))
        return changed == 1

    async def delete(self, job_id: str, owner: str | None, now: float) -> bool:
        changed = await self._call(
            self._execute, "DELETE FROM jobs WHERE id = ? AND owner IS ? AND (expires IS NULL OR expires > ?)",
            (job_id, owner, now))
        return changed == 1

    async def heartbeat(self, instance: str, lease_s: float) -> None:
        await self._call(self._execute, "INSERT INTO instances (id, alive_until) VALUES (?, ?) "
                                        "ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until",
                         (instance, self.wall_clock() + lease_s))

    async def unfinished(self, job_ids: Iterable[str]) -> set[str]:
        return await self._call(self._unfinished, list(job_ids))

    async def fail_orphans(self, finished: float, expires: float, reason: str, *, retiring: str | None = None) -> int:
        return await self._call(self._fail_orphans, finished, expires, reason, retiring)

    # --- on the connection's thread ---

    async def _call(self, fn: Callable[..., T], *args) -> T:
        if self._thread is None:
            raise RuntimeError("the job store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # results are the clients': not world-readable
        # timeout: the busy timeout; isolation_level None: transactions are begun explicitly
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: durable across a crash of the process
            self._db = db
            with self._transaction():
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path} was written by a newer orpheus-local (schema {version})")
                if version < SCHEMA_VERSION:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db = None
            db.close()
            raise

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE: the write lock from the start, so that what is counted is still true
        when the transaction writes (another process waits, up to the busy timeout)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _execute(self, sql: str, params: tuple = ()) -> int:
        return self._db.execute(sql, params).rowcount

    def _insert(self, job: StoredJob, now: float, max_jobs: int, quota: int | None) -> Refusal | None:
        db = self._db
        with self._transaction():
            db.execute("DELETE FROM jobs WHERE expires <= ?", (now,))
            if quota is not None:
                count, earliest = db.execute("SELECT COUNT(*), MIN(expires) FROM jobs WHERE owner IS ?",
                                             (job.owner,)).fetchone()
                if count >= quota:
                    return Refusal("quota", earliest)
            count, earliest = db.execute("SELECT COUNT(*), MIN(expires) FROM jobs").fetchone()
            if count >= max_jobs:
                return Refusal("full", earliest)
            db.execute(f"INSERT INTO jobs ({_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (job.id, job.owner, job.instance, job.status, job.created, job.started, job.finished,
                        job.expires, job.error))
        return None

    def _get(self, job_id: str) -> StoredJob | None:
        row = self._db.execute(f"SELECT {_FIELDS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else StoredJob(*row)

    def _audio(self, job_id: str) -> bytes | None:
        row = self._db.execute("SELECT audio FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def _unfinished(self, job_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(job_ids), 500):  # under SQLite's limit on parameters
            batch = job_ids[start:start + 500]
            marks = ", ".join("?" * len(batch))
            rows = self._db.execute(f"SELECT id FROM jobs WHERE id IN ({marks}) AND {_UNFINISHED}", batch)
            found.update(job_id for (job_id,) in rows)
        return found

    def _fail_orphans(self, finished: float, expires: float, reason: str, retiring: str | None) -> int:
        db = self._db
        with self._transaction():
            if retiring is not None:
                db.execute("DELETE FROM instances WHERE id = ?", (retiring,))
            db.execute("DELETE FROM instances WHERE alive_until <= ?", (self.wall_clock(),))
            failed = db.execute(
                f"UPDATE jobs SET status = '{FAILED}', finished = ?, expires = ?, error = ? "
                f"WHERE {_UNFINISHED} AND instance NOT IN (SELECT id FROM instances)",
                (finished, expires, reason)).rowcount
            db.execute("DELETE FROM jobs WHERE expires <= ?", (finished,))
        return failed
