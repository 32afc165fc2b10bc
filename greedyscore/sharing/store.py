"""Shared results (JSON documents under 128-bit URL-safe ids), stored so a link can show them again:
SQLite by default, PostgreSQL for several app processes (psycopg 3 directly: one table and four
statements need no ORM). Limits: item size, total size (oldest evicted), a time to live, a rate per
client address.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput, GreedyScoreError

ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16), 128 bits; fullmatch: no trailing newline
# Schema version i+1 = MIGRATIONS[:i+1] applied, in order (the same SQL on SQLite and PostgreSQL).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("CREATE TABLE items (id TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL, size BIGINT NOT NULL, "
     "body TEXT NOT NULL)",
     "CREATE INDEX items_created ON items (created)"),
)
PG_LOCK = 0x67736872  # pg_advisory_xact_lock key: one migration / eviction at a time across processes
PG_INSTALL_HINT = "pip install 'psycopg[binary]>=3.2,<4'"


class NotShared(GreedyScoreError):
    """An unknown, malformed, expired or evicted share id."""


class ShareLimit(GreedyScoreError):
    """A share refused by a limit (size, rate)."""


class StoreUnavailable(GreedyScoreError):
    """The share store cannot be opened or reached."""


@dataclass(frozen=True)
class Limits:
    """Every limit is positive and finite, whoever builds one (a negative TTL once emptied the store)."""

    max_item_bytes: int = 5_000_000
    max_total_bytes: int = 500_000_000
    ttl_s: float | None = None  # None: kept until evicted
    per_session: int = 30  # shares per client address ...
    per_seconds: float = 3600.0  # ... in this window

    def __post_init__(self) -> None:
        for name in ("max_item_bytes", "max_total_bytes", "ttl_s", "per_session", "per_seconds"):
            v = getattr(self, name)
            if v is None and name == "ttl_s":
                continue
            whole = name in ("max_item_bytes", "max_total_bytes", "per_session")
            if isinstance(v, bool) or not isinstance(v, int if whole else int | float) or not 0 < v < math.inf:
                raise BadInput(f"the share store's {name} must be a positive finite number, got {v!r}")


class _SQLite:
    """One short connection per call; BEGIN IMMEDIATE serialises writers; WAL lets readers go on."""

    name = "SQLite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._wal()
        except (OSError, sqlite3.Error) as ex:
            raise StoreUnavailable(f"cannot open the share store {path}: {ex} (choose another --store, or "
                                   "--no-share)") from ex

    def _wal(self) -> None:
        """Write-ahead logging, retried: processes opening a new store at once get "database is locked"."""
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.connect() as db:
                    db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as ex:
                if "locked" not in str(ex) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @contextmanager
    def connect(self) -> Iterator[Any]:
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA busy_timeout = 30000")
            yield db

    def begin(self, db: Any) -> None:
        db.execute("BEGIN IMMEDIATE")

    def version(self, db: Any) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def set_version(self, db: Any, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}")


class _Postgres:
    """psycopg 3: one autocommit connection per call, locked transactions, the schema in a one-row table."""

    name = "PostgreSQL"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as ex:
            raise StoreUnavailable(f"--store {_redact(url)} needs psycopg: {PG_INSTALL_HINT}") from ex
        self.psycopg, self.url, self.errors = psycopg, url, (psycopg.Error,)
        try:
            with self.connect():
                pass
        except psycopg.Error as ex:
            first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
            raise StoreUnavailable(f"cannot reach the share store {_redact(url)}: {first}") from ex

    @contextmanager
    def connect(self) -> Iterator[Any]:
        with self.psycopg.connect(self.url, autocommit=True, connect_timeout=10) as db:
            yield _Qmark(db)

    def begin(self, db: Any) -> None:
        db.execute("BEGIN")
        db.execute("SELECT pg_advisory_xact_lock(?)", (PG_LOCK,))

    def version(self, db: Any) -> int:
        db.execute("CREATE TABLE IF NOT EXISTS greedyscore_schema (version INTEGER NOT NULL)")  # under the lock
        row = db.execute("SELECT version FROM greedyscore_schema").fetchone()
        return int(row[0]) if row else 0

    def set_version(self, db: Any, version: int) -> None:
        db.execute("DELETE FROM greedyscore_schema")
        db.execute("INSERT INTO greedyscore_schema (version) VALUES (?)", (version,))


class _Qmark:
    """A psycopg connection that takes SQLite's `?` placeholders, so both stores share their SQL."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.db.execute(sql.replace("?", "%s"), params)


def _redact(url: str) -> str:
    """A store URL without its password (in the authority or as a parameter), for messages."""
    url = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


class ShareStore:
    """Thread-safe and shared by processes; `where`: a file path (SQLite) or a postgresql:// URL."""

    def __init__(self, where: str | Path, limits: Limits = Limits(), clock: Callable[[], float] = time.time) -> None:
        self.where = str(where)
        self.backend = (_Postgres(self.where) if self.where.startswith(("postgresql://", "postgres://"))
                        else _SQLite(Path(where).expanduser()))
        self.limits = limits
        self.clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        with self._db() as db:
            self._migrate(db)

    def __str__(self) -> str:
        return f"{self.backend.name} {_redact(self.where)}"

    @contextmanager
    def _db(self) -> Iterator[Any]:
        """A connection; the database's own failures become one clear message."""
        try:
            with self.backend.connect() as db:
                yield db
        except self.backend.errors as ex:  # the details go to the operator's log, not to visitors
            first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
            print(f"greedyscore: share store {self}: {type(ex).__name__}: {first}", file=sys.stderr, flush=True)
            raise StoreUnavailable("the share store is unavailable just now: try again in a moment") from ex

    @contextmanager
    def _transaction(self, db: Any) -> Iterator[None]:
        self.backend.begin(db)
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _migrate(self, db: Any) -> None:
        with self._transaction(db):  # one transaction: every step or none
            version = self.backend.version(db)
            if version > len(MIGRATIONS):
                raise StoreUnavailable(f"the share store is schema version {version}, newer than this greedyscore "
                                       f"({len(MIGRATIONS)}): upgrade greedyscore or use another --store")
            for step in MIGRATIONS[version:]:
                for statement in step:
                    db.execute(statement)
            if version < len(MIGRATIONS):
                self.backend.set_version(db, len(MIGRATIONS))

    @property
    def schema_version(self) -> int:
        with self._db() as db, self._transaction(db):
            return self.backend.version(db)

    def put(self, item: dict[str, Any], client: str = "") -> str:
        """Store `item`; -> its new id. Raises ShareLimit when a limit refuses it."""
        body = json.dumps(item, allow_nan=False)  # ASCII escapes: even a lone surrogate from a client stores
        size = len(body.encode("utf-8"))
        cap = min(self.limits.max_item_bytes, self.limits.max_total_bytes)
        if size > cap:
            raise ShareLimit(f"this result is {size:,} bytes, more than the {cap:,} a share may hold: share a "
                             "shorter reply")
        self._count(client)
        now, item_id = self.clock(), secrets.token_urlsafe(16)
        with self._db() as db, self._transaction(db):
            db.execute("INSERT INTO items (id, created, size, body) VALUES (?, ?, ?, ?)", (item_id, now, size, body))
            self._evict(db, now, item_id)
        return item_id

    def get(self, item_id: str) -> dict[str, Any]:
        """The stored item; NotShared with a clear message when there is none to show."""
        if not isinstance(item_id, str) or not ID_RE.fullmatch(item_id):
            raise NotShared("that share link is not valid: check that it was copied whole")
        with self._db() as db:
            row = db.execute("SELECT created, body FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise NotShared("nothing is shared under that link: it may have been removed to make room")
        if self.limits.ttl_s is not None and self.clock() - row[0] > self.limits.ttl_s:
            raise NotShared("that share has expired")
        try:
            return json.loads(row[1])
        except ValueError as ex:
            raise NotShared("that shared result is damaged and cannot be shown") from ex

    def _evict(self, db: Any, now: float, keep: str) -> None:
        """Expired items, then the oldest until the total fits; never `keep`, the one just stored."""
        if self.limits.ttl_s is not None:
            db.execute("DELETE FROM items WHERE created < ? AND id <> ?", (now - self.limits.ttl_s, keep))
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM items").fetchone()[0]
        while total > self.limits.max_total_bytes:
            oldest = db.execute("SELECT id, size FROM items WHERE id <> ? ORDER BY created, id LIMIT 1",
                                (keep,)).fetchone()
            if oldest is None:
                break
            db.execute("DELETE FROM items WHERE id = ?", (oldest[0],))
            total -= oldest[1]

    def _count(self, client: str) -> None:
        """The rate limit, per client (its address), in this process; clients gone quiet are forgotten."""
        now, window = self.clock(), self.limits.per_seconds
        with self._lock:
            for key in [k for k, q in self._recent.items() if not q or now - q[-1] > window]:
                del self._recent[key]
            recent = self._recent.setdefault(client, deque())
            while recent and now - recent[0] > window:
                recent.popleft()
            if len(recent) >= self.limits.per_session:
                wait = math.ceil((window - (now - recent[0])) / 60)
                raise ShareLimit(f"you have shared {len(recent)} results recently, the most this server allows: "
                                 f"try again in {wait} minute{'s' if wait != 1 else ''}")
            recent.append(now)

