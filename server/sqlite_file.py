"""SqliteFile: one SQLite file under the state directory, reached through one connection on one
thread of its own (sqlite3 blocks), so the event loop never waits on the disk. The v2 job store and
the cloned-voice store are both this.

The file is private to the server's user (it holds clients' results or recordings of their
voices); WAL mode lets readers go on while one process writes, and a busy timeout makes a process
wait for another's write instead of failing.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

from orpheus_local.thread_names import name_os_thread

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000


class SqliteFile:
    """Subclasses create their tables in _prepare(), and do their work in methods run by _call()."""

    def __init__(self, path: Path, thread_name: str, what: str):
        self.path = path
        self._thread_name = thread_name
        self._what = what  # for the error when used before open()
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name, initializer=name_os_thread,
                                          initargs=(self._thread_name,))
        await self._call(self._open)

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._call(self._close)
        self._thread.shutdown(wait=False)
        self._thread = None

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    async def _call(self, fn: Callable[..., T], *args) -> T:
        if self._thread is None:
            raise RuntimeError(f"the {self._what} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- on the connection's thread ---

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Create or check the tables; db is self._db already."""

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # clients' data: not world-readable
        # timeout: the busy timeout; isolation_level None: transactions are begun explicitly
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            self._db = db
            self._prepare(db)
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
