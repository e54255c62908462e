"""Where v2 jobs are kept, chosen by --jobs-url: a SQLite file (the default: jobs.sqlite3 under
--state-dir, for the server processes of one machine) or Redis (for many machines)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .records import JobBackend
from .sqlite_backend import SqliteJobBackend

DEFAULT_FILE = "jobs.sqlite3"
REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_url(url: str) -> str:
    """url if some backend takes it; else ValueError saying which URLs do."""
    parts = urlsplit(url)
    if parts.scheme in REDIS_SCHEMES or (parts.scheme == "sqlite" and not parts.netloc and parts.path):
        return url
    raise ValueError("must be redis://[:password@]host[:port][/db], rediss://..., unix:///path/redis.sock, "
                     "or sqlite:///path/to/jobs.sqlite3")


def backend_for(jobs_url: str | None, state_dir: Path) -> JobBackend:
    """The backend for jobs_url (None: the SQLite file under state_dir), not yet opened."""
    if jobs_url is None:
        return SqliteJobBackend(state_dir / DEFAULT_FILE)
    check_url(jobs_url)
    parts = urlsplit(jobs_url)
    if parts.scheme == "sqlite":
        return SqliteJobBackend(Path(parts.path).expanduser())
    from .redis_backend import (
        RedisJobBackend,  # redis is imported by those who use it only
    )

    return RedisJobBackend(jobs_url)


__all__ = ["DEFAULT_FILE", "JobBackend", "SqliteJobBackend", "backend_for", "check_url"]
