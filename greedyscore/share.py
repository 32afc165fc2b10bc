"""Shared results, stored so a link can show them again (issue 11; the store only, no UI yet).

SQLite (stdlib `sqlite3`, WAL, one file) with a versioned schema. An item is a JSON document
(what a reply's `to_json` gives, plus its messages and settings); its id is 128 random bits,
URL-safe. Limits, each with a message that says so: per-item size, total size (oldest evicted
first), an optional time to live, and a per-session rate.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import GreedyScoreError

ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16): 128 bits
MIGRATIONS: tuple[tuple[str, ...], ...] = (  # schema version i+1 = MIGRATIONS[:i+1] applied, in order
    ("CREATE TABLE items (id TEXT PRIMARY KEY, created REAL NOT NULL, size INTEGER NOT NULL, body TEXT NOT NULL)",
     "CREATE INDEX items_created ON items (created)"),
)


class NotShared(GreedyScoreError):
    """An unknown, malformed, expired or evicted share id."""


class ShareLimit(GreedyScoreError):
    """A share refused by a limit (size, rate)."""


@dataclass(frozen=True)
class Limits:
    max_item_bytes: int = 2_000_000
    max_total_bytes: int = 200_000_000
    ttl_s: float | None = None  # None: kept until evicted
    per_session: int = 30  # shares per session ...
    per_seconds: float = 3600.0  # ... in this window


class ShareStore:
    """Thread-safe: one short connection per call (SQLite's own locking, WAL, busy timeout)."""

    def __init__(self, path: str | Path, limits: Limits = Limits(), clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.limits = limits
        self.clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA busy_timeout = 30000")
            yield db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise GreedyScoreError(f"the share store is schema version {version}, newer than this greedyscore "
                                       f"({len(MIGRATIONS)}): upgrade greedyscore or use another --store")
            for step in MIGRATIONS[version:]:  # one transaction: all of them or none
                for statement in step:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        with self._db() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def put(self, item: dict[str, Any], session: str = "") -> str:
        """Store `item`; -> its new id. Raises ShareLimit when a limit refuses it."""
        body = json.dumps(item, allow_nan=False)  # ASCII escapes: even a lone surrogate from a client stores
        size = len(body.encode("utf-8"))
        if size > self.limits.max_item_bytes:
            raise ShareLimit(f"this result is {size:,} bytes, more than the {self.limits.max_item_bytes:,} a share may "
                             "hold: share a shorter reply")
        self._count(session)
        now, item_id = self.clock(), secrets.token_urlsafe(16)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO items (id, created, size, body) VALUES (?, ?, ?, ?)", (item_id, now, size, body))
            self._evict(db, now)
            db.execute("COMMIT")
        return item_id

    def get(self, item_id: str) -> dict[str, Any]:
        """The stored item; NotShared with a clear message when there is none to show."""
        if not isinstance(item_id, str) or not ID_RE.match(item_id):
            raise NotShared("that share link is not valid: check that it was copied whole")
        with self._db() as db:
            row = db.execute("SELECT created, body FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise NotShared("nothing is shared under that link: it may have been removed to make room")
        if self.limits.ttl_s is not None and self.clock() - row[0] > self.limits.ttl_s:
            raise NotShared("that share has expired")
        return json.loads(row[1])

    def _evict(self, db: sqlite3.Connection, now: float) -> None:
        """Expired items, then the oldest until the total fits."""
        if self.limits.ttl_s is not None:
            db.execute("DELETE FROM items WHERE created < ?", (now - self.limits.ttl_s,))
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM items").fetchone()[0]
        while total > self.limits.max_total_bytes:
            oldest = db.execute("SELECT id, size FROM items ORDER BY created, rowid LIMIT 1").fetchone()
            db.execute("DELETE FROM items WHERE id = ?", (oldest[0],))
            total -= oldest[1]

    def _count(self, session: str) -> None:
        now, window = self.clock(), self.limits.per_seconds
        with self._lock:
            recent = self._recent.setdefault(session, deque())
            while recent and now - recent[0] > window:
                recent.popleft()
            if len(recent) >= self.limits.per_session:
                wait = window - (now - recent[0])
                raise ShareLimit(f"you have shared {len(recent)} results recently, the most this server allows: "
                                 f"try again in {wait / 60:.0f} minutes")
            recent.append(now)

