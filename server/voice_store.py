"""ClonedVoiceStore: cloned voices in one SQLite file under --state-dir (voices.sqlite3), so they
survive restarts and every server process of the machine sees the same ones.

A voice belongs to the API key that made it, known by the key's SHA-256 digest as v2 jobs are
(server/auth.py); on an open server (no keys) the owner is None and every client shares them. A name
is matched whatever its case or Unicode normalization (voice_key), within its owner's voices only.
As the job store's, the file is reached through one connection on one thread of its own
(server/sqlite_file.py), so the event loop never waits on the disk.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.params import VoiceReference
from orpheus_local.voices import voice_key

from .sqlite_file import SqliteFile

DEFAULT_FILE = "voices.sqlite3"
_SCHEMA = """CREATE TABLE IF NOT EXISTS voices (
    owner TEXT,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    transcript TEXT NOT NULL,
    audio_ids BLOB NOT NULL,
    created REAL NOT NULL
)"""
_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS voices_by_owner ON voices (ifnull(owner, ''), key)"


@dataclass(frozen=True)
class VoiceSummary:
    name: str
    transcript: str
    seconds: float  # of reference audio
    created: float

    def as_json(self) -> dict:
        return {"id": self.name, "object": "audio.voice", "name": self.name, "transcript": self.transcript,
                "seconds": round(self.seconds, 2), "created_at": int(self.created)}


class ClonedVoiceStore(SqliteFile):
    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        super().__init__(path, "orpheus-voices-sqlite", "voice store")
        self.clock = clock

    async def add(self, owner: str | None, voice: VoiceReference, *, quota: int) -> VoiceSummary | str:
        """Store voice; or why not: "exists" (owner has a voice of that name), "quota" (owner has quota)."""
        return await self._call(self._add, owner, voice, quota)

    async def find(self, owner: str | None, name: str) -> VoiceReference | None:
        return await self._call(self._find, owner, name)

    async def delete(self, owner: str | None, name: str) -> bool:
        return await self._call(self._delete, owner, name)

    async def list(self, owner: str | None) -> list[VoiceSummary]:
        return await self._call(self._list, owner)

    # --- on the connection's thread ---

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(_SCHEMA)
        db.execute(_INDEX)

    def _add(self, owner: str | None, voice: VoiceReference, quota: int) -> VoiceSummary | str:
        db = self._db
        with self._transaction():  # the count is still true when the row is written
            if db.execute("SELECT 1 FROM voices WHERE owner IS ? AND key = ?", (owner, voice_key(voice.name))).fetchone():
                return "exists"
            if db.execute("SELECT COUNT(*) FROM voices WHERE owner IS ?", (owner,)).fetchone()[0] >= quota:
                return "quota"
            created = self.clock()
            db.execute("INSERT INTO voices (owner, key, name, transcript, audio_ids, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (owner, voice_key(voice.name), voice.name, voice.transcript,
                        np.asarray(voice.audio_ids, dtype="<u4").tobytes(), created))
        return VoiceSummary(voice.name, voice.transcript, _seconds(len(voice.audio_ids)), created)

    def _find(self, owner: str | None, name: str) -> VoiceReference | None:
        row = self._db.execute("SELECT name, transcript, audio_ids FROM voices WHERE owner IS ? AND key = ?",
                               (owner, voice_key(name))).fetchone()
        if row is None:
            return None
        return VoiceReference(row[0], row[1], tuple(np.frombuffer(row[2], dtype="<u4").tolist()))

    def _delete(self, owner: str | None, name: str) -> bool:
        return self._db.execute("DELETE FROM voices WHERE owner IS ? AND key = ?", (owner, voice_key(name))).rowcount == 1

    def _list(self, owner: str | None) -> list[VoiceSummary]:
        rows = self._db.execute("SELECT name, transcript, length(audio_ids), created FROM voices WHERE owner IS ? "
                                "ORDER BY created", (owner,))
        return [VoiceSummary(name, transcript, _seconds(size // 4), created) for name, transcript, size, created in rows]


def _seconds(audio_ids: int) -> float:
    return audio_ids / fmt.FRAME_TOKENS * fmt.SAMPLES_PER_FRAME / fmt.SAMPLE_RATE
