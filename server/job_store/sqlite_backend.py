"""SqliteJobBackend: v2 jobs in one SQLite file, shared by every server process on this machine
(server/sqlite_file.py: WAL, a busy timeout, one connection on a thread of its own).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable

from ..sqlite_file import SqliteFile
from .records import FAILED, PROCESSING, QUEUED, Refusal, StoredJob

SCHEMA_VERSION = 1
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


class SqliteJobBackend(SqliteFile):
    """wall_clock: seconds since the epoch, for the instances' leases (the same in every process)."""

    def __init__(self, path: Path, wall_clock: Callable[[], float] = time.time):
        super().__init__(path, "orpheus-jobs-sqlite", "job store")
        self.description = f"SQLite file {path}"
        self.wall_clock = wall_clock

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

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: durable across a crash of the process
        with self._transaction():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer orpheus-local (schema {version})")
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
