"""The write pool and the read pool, transactions with a company's claims, and read-your-writes.

Every transaction opens with one statement that sets the caller's claims and `role` for that transaction
only (`set_config(..., true)`: nothing outlives it on a pooled server connection) and, for read-only
work, `transaction_read_only`. A read-only transaction goes to the read pool (replicas) and asks, in that
same statement, whether the server has replayed the caller's last commit; when it has not (and does not
within `read_your_writes_wait_ms`), the transaction is rolled back and run read-only on the write pool
(the primary), counted as a read-your-writes fallback. The caller's last commit LSN is read after each
write commits, in this process (an application that spreads one user over processes passes `min_lsn`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from thorbis_client.config import ClientConfig

ROLE = "authenticated"
TRACKED_CALLERS = 100_000
_OPEN = """SELECT pg_catalog.set_config('request.jwt.claims', %(claims)s, true),
       pg_catalog.set_config('role', %(role)s, true),
       pg_catalog.set_config('transaction_read_only', %(read_only)s, true),
       coalesce(pg_catalog.pg_last_wal_replay_lsn() >= %(lsn)s::pg_lsn, true),
       pg_catalog.pg_is_in_recovery()"""
_REPLAYED = "SELECT coalesce(pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn, true)"
_COMMITTED = "SELECT pg_catalog.pg_current_wal_lsn()::text"
NO_LSN = "0/0"


class ConnectionLost(psycopg.OperationalError):
    """A statement failed because its server connection broke (a replica stopped under it, PgBouncer
    answering BEGIN or COMMIT with two results as it closes): the work did not happen and may be retried."""


@contextmanager
def losing_connection_is_said(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Any error on a connection that is now broken is a ConnectionLost, whatever psycopg called it."""
    try:
        yield
    except psycopg.Error as error:
        if (conn.broken or conn.closed) and not isinstance(error, ConnectionLost):
            raise ConnectionLost(str(error)) from error
        raise


def canonical_uuid(value: object) -> str:
    """The canonical text of a UUID (a company's or a user's); anything else is refused."""
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def lsn_bytes(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def later_lsn(*candidates: str | None) -> str:
    present = [c for c in candidates if c]
    return max(present, key=lsn_bytes) if present else NO_LSN


@dataclass
class Stats:
    """What the client did, for benchmarks and monitoring; safe to update from many threads."""

    counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


@dataclass
class Transaction:
    """One transaction of one caller: run statements; name cache entries the write makes stale."""

    connection: psycopg.Connection[Any]
    company_id: str
    user_id: str
    read_only: bool
    on_replica: bool
    invalidations: list[tuple[str, str]] = field(default_factory=list)
    commit_lsn: str | None = None
    """Set once a write has committed: where the WAL was after its commit."""

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        return self.connection.execute(query, params)

    def invalidate(self, family: str, key: object) -> None:
        """After this transaction commits, the cache entry `family`/`key` of its company is stale."""
        if self.read_only:
            raise ValueError("a read-only transaction changes nothing: it has no cache entry to invalidate")
        self.invalidations.append((family, str(key)))


class Database:
    """The two pools of a stack (through PgBouncer) and the last commit of each caller."""

    def __init__(self, config: ClientConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.write_pool = self._pool(config.write_dsn, "thorbis-write")
        self.read_pool = self._pool(config.read_dsn, "thorbis-read")
        self._last_commit: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def _pool(self, dsn: str, name: str) -> ConnectionPool[psycopg.Connection[Any]]:
        return ConnectionPool(
            dsn,
            # no server-side prepared statements: PgBouncer 1.18 in transaction mode does not keep them
            kwargs={"autocommit": True, "prepare_threshold": None},
            min_size=self.config.pool_min_size,
            max_size=self.config.pool_max_size,
            name=name,
            open=True,
        )

    def close(self) -> None:
        self.write_pool.close()
        self.read_pool.close()

    # --- read-your-writes ----------------------------------------------------------------------------------

    def last_commit(self, company_id: str, user_id: str) -> str | None:
        with self._lock:
            return self._last_commit.get((company_id, user_id))

    def _committed(self, caller: tuple[str, str], lsn: str) -> None:
        with self._lock:
            self._last_commit[caller] = later_lsn(self._last_commit.get(caller), lsn)
            self._last_commit.move_to_end(caller)
            while len(self._last_commit) > TRACKED_CALLERS:
                self._last_commit.popitem(last=False)

    # --- transactions ----------------------------------------------------------------------------------------

    def _open(self, conn: psycopg.Connection[Any], claims: str, read_only: bool, lsn: str) -> tuple[bool, bool]:
        """Claims, role and read-only for this transaction; whether the server has replayed `lsn`, and
        whether it is a replica."""
        params = {"claims": claims, "role": ROLE, "read_only": "on" if read_only else "off", "lsn": lsn}
        row = conn.execute(_OPEN, params).fetchone()
        assert row is not None
        return bool(row[3]), bool(row[4])

    def _caught_up(self, conn: psycopg.Connection[Any], lsn: str) -> bool:
        deadline = time.monotonic() + self.config.read_your_writes_wait_ms / 1000
        while time.monotonic() < deadline:
            time.sleep(0.002)
            row = conn.execute(_REPLAYED, (lsn,)).fetchone()
            if row is not None and row[0]:
                return True
        return False

    @contextmanager
    def write(self, company_id: str, user_id: str) -> Iterator[Transaction]:
        """A transaction on the primary; after it commits, the caller's commit LSN is recorded."""
        claims = _claims(company_id, user_id)
        with self.write_pool.connection() as conn, losing_connection_is_said(conn):
            with conn.transaction():
                self._open(conn, claims, read_only=False, lsn=NO_LSN)
                transaction = Transaction(conn, company_id, user_id, read_only=False, on_replica=False)
                yield transaction
            row = conn.execute(_COMMITTED).fetchone()
        assert row is not None
        transaction.commit_lsn = str(row[0])
        self._committed((company_id, user_id), transaction.commit_lsn)
        self.stats.add("writes")

    @contextmanager
    def read(self, company_id: str, user_id: str, min_lsn: str | None = None) -> Iterator[Transaction]:
        """A read-only transaction on a replica that has replayed what the caller must see, else on the
        primary."""
        claims = _claims(company_id, user_id)
        needed = later_lsn(self.last_commit(company_id, user_id), min_lsn)
        with self.read_pool.connection() as conn, losing_connection_is_said(conn), conn.transaction():
            fresh, on_replica = self._open(conn, claims, read_only=True, lsn=needed)
            if fresh or self._caught_up(conn, needed):
                self.stats.add("replica_reads" if on_replica else "primary_reads")
                yield Transaction(conn, company_id, user_id, read_only=True, on_replica=on_replica)
                return
        self.stats.add("read_your_writes_fallbacks")
        with self.write_pool.connection() as conn, losing_connection_is_said(conn), conn.transaction():
            self._open(conn, claims, read_only=True, lsn=NO_LSN)
            self.stats.add("primary_reads")
            yield Transaction(conn, company_id, user_id, read_only=True, on_replica=False)


def _claims(company_id: str, user_id: str) -> str:
    return json.dumps({"sub": user_id, "company_id": company_id, "role": ROLE})
