"""Connections to the stack's database and DDL that waits for its locks politely.

Every DDL statement runs with the stack's `lock_timeout`, so it never queues for long behind a busy
table (and never blocks the writers queued behind it); on a lock timeout it is retried with backoff. A
transaction that declares the tables it locks takes them up front (components/database/locks.py), and
one that holds a lock which blocks writers runs with the stack's `statement_timeout` too, so it never
holds that lock for long either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from components.connection import ConnectionSpec
from components.database.locks import TableLock, strongest, upfront_statements
from components.kind import ProviderError, Unreachable

LOCK_ATTEMPTS = 8
#: How our sessions show in pg_stat_activity and in the server's log (tests read the DDL we ran from it).
APPLICATION_NAME = "thorbisdb"
#: statement_timeout of work that blocks no writer (an index built CONCURRENTLY, a validation, a batch of a
#: backfill): none, whatever the server's or the role's default (Supabase sets one per role).
UNBOUNDED = "0"
#: A whole statement, as psycopg executes it (fragments are sql.Composable).
Statement = sql.Composed | sql.SQL
#: Statements decided inside the batch's transaction, after the locks taken before it (what they read
#: cannot change before the commit).
Deferred = Callable[[psycopg.Connection], Iterable[Statement]]


@dataclass(frozen=True)
class Timeouts:
    """How long a schema change may wait for a lock, and hold one that blocks writers."""

    lock: str = "5s"
    statement: str = "5s"


@dataclass(frozen=True)
class DatabaseTarget:
    """What every database-layer operation needs: where to connect, how long to wait for locks."""

    connection: ConnectionSpec
    lock_timeout: str = "5s"
    allow_data_loss: bool = False
    statement_timeout: str = "5s"

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(self.lock_timeout, self.statement_timeout)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DatabaseTarget:
        if "connection" not in config:
            raise ProviderError(
                "this thorbisdb provider has no `connection`: database resources need the explicit provider that "
                "components/database declares"
            )
        return cls(
            connection=ConnectionSpec.model_validate(config["connection"]),
            lock_timeout=str(config.get("lockTimeout", "5s")),
            allow_data_loss=bool(config.get("allowDataLoss", False)),
            statement_timeout=str(config.get("statementTimeout", "5s")),
        )


class DatabaseUnreachable(Unreachable):
    """The database does not answer: its objects cannot be read, which is not the same as gone."""


@contextmanager
def connect(target: DatabaseTarget) -> Iterator[psycopg.Connection]:
    """A session on the target database: an idle one this process opened before (reset with DISCARD ALL when
    taken), or a new one. It goes back to the idle ones only when it ends clean, otherwise it is closed."""
    key = target.connection.model_dump_json()
    conn = IDLE.take(key) or opened(target.connection)
    try:
        yield conn
    except BaseException:
        conn.close()
        raise
    IDLE.give_back(key, conn)


def opened(spec: ConnectionSpec) -> psycopg.Connection:
    try:
        # Extensions live in their own schema; DDL must resolve their types and operator classes. Nothing is
        # prepared server-side: DISCARD ALL (between two uses of a session) would drop it under psycopg.
        conn = psycopg.connect(
            **spec.conninfo(),
            autocommit=True,
            prepare_threshold=None,
            options="-c search_path=public,extensions",
            application_name=APPLICATION_NAME,
        )
    except psycopg.OperationalError as error:
        raise DatabaseUnreachable(
            f"cannot connect to {spec.database} on {spec.primary.host}:{spec.primary.port}: {str(error).strip()}"
        ) from error
    yield_to_applications(conn)
    return conn


class IdleSessions:
    """Sessions this provider process keeps open between requests, by target. Opening one (SCRAM, a backend
    fork) costs ~10 ms, most of the time a refresh of the whole stack takes. Hand-written rather than
    psycopg_pool: a pool waits out its timeout for a server that is down, where a read must fail at once
    (its objects are then kept as recorded)."""

    KEPT = 8

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions: dict[str, list[psycopg.Connection]] = {}

    def take(self, key: str) -> psycopg.Connection | None:
        """An idle session that still answers (the server may have restarted since), reset, or None."""
        while True:
            with self.lock:
                kept = self.sessions.get(key)
                if not kept:
                    return None
                conn = kept.pop()
            try:
                # what the last work set (temporary tables, SET, prepared statements) goes, and the round trip
                # is the check that the session still answers
                conn.execute("DISCARD ALL")
                yield_to_applications(conn)
                return conn
            except psycopg.Error:
                conn.close()

    def give_back(self, key: str, conn: psycopg.Connection) -> None:
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            conn.close()
            return
        with self.lock:
            kept = self.sessions.setdefault(key, [])
            if len(kept) < self.KEPT:
                kept.append(conn)
                return
        conn.close()


IDLE = IdleSessions()


def yield_to_applications(conn: psycopg.Connection) -> None:
    """In a deadlock between our DDL and the application's transactions, PostgreSQL aborts the session that
    looks for it first: ours looks after 10 ms (the application's after the default 1 s), so the DDL is
    the one aborted, and retried. Only superusers may set it; elsewhere the server's setting stays."""
    with suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("SET deadlock_timeout = '10ms'")


def run_ddl(
    conn: psycopg.Connection,
    statements: Iterable[Statement | Deferred],
    timeouts: Timeouts,
    *,
    transactional: bool = True,
    what: str = "DDL",
    before_retry: Callable[[], None] | None = None,
    locks: Iterable[TableLock] = (),
    secret: bool = False,
) -> None:
    """Run statements (in one transaction unless they must run outside one, like CONCURRENTLY), after
    taking `locks` up front (components/database/locks.py).

    A lock timeout or a deadlock (DDL of parallel resources meeting a CONCURRENTLY build) is retried
    with backoff; outside a transaction, `before_retry` first undoes what the failed attempt left.
    A `secret` batch (a password's verifier) fails with the server's message alone: no statement text.
    """
    batch = list(statements)
    if not batch:
        return
    taken = strongest(locks)
    for attempt in range(LOCK_ATTEMPTS):
        try:
            execute_batch(conn, batch, timeouts, transactional, taken)
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            pass
        except (psycopg.errors.InternalError_, psycopg.errors.UniqueViolation) as error:
            if not (transactional and concurrent_catalog_update(error)):
                raise failure(conn, what, error, batch, secret) from None if secret else error
        except psycopg.errors.QueryCanceled as error:
            held = ", ".join(f"{lock.lock.mode} on {lock.name}" for lock in taken if lock.lock.blocks_writes)
            raise ProviderError(
                f"{what}: a statement ran longer than statement_timeout {timeouts.statement} while it held "
                f"{held or 'a lock that blocks writers'}, and was cancelled (nothing of its transaction was kept); "
                "run it when the table is quieter or raise thorbis:statementTimeout"
            ) from error
        except psycopg.Error as error:
            raise failure(conn, what, error, batch, secret) from None if secret else error
        time.sleep(min(0.25 * 2**attempt, 4.0))
        if before_retry is not None:
            before_retry()
    raise ProviderError(
        f"{what}: could not take its lock within lock_timeout {timeouts.lock} in {LOCK_ATTEMPTS} attempts; "
        "a long transaction holds the table: end it or raise thorbis:lockTimeout"
    )


def statement_timeout(timeouts: Timeouts, locks: list[TableLock]) -> str:
    """The stack's statement_timeout where a lock that blocks writers is held; none for online work."""
    return timeouts.statement if any(lock.lock.blocks_writes for lock in locks) else UNBOUNDED


def failure(
    conn: psycopg.Connection, what: str, error: psycopg.Error, batch: list[Statement | Deferred], secret: bool
) -> ProviderError:
    """The error a failed batch is reported as. A secret batch says the server's message and nothing else:
    psycopg's own text can quote the statement (LINE 1: ...), and the exception it chains would carry it."""
    if secret:
        return ProviderError(f"{what} failed: {error.diag.message_primary or type(error).__name__}")
    only = batch[0] if len(batch) == 1 else None
    statement_text = only.as_string(conn) if isinstance(only, sql.Composable) else f"{len(batch)} statements"
    return ProviderError(f"{what} failed: {str(error).strip()} (running {statement_text})")


def execute_batch(
    conn: psycopg.Connection,
    batch: list[Statement | Deferred],
    timeouts: Timeouts,
    transactional: bool,
    locks: list[TableLock],
) -> None:
    scope = sql.SQL("LOCAL " if transactional else "")
    settings = [
        sql.SQL("SET {}lock_timeout = {}").format(scope, sql.Literal(timeouts.lock)),
        sql.SQL("SET {}statement_timeout = {}").format(scope, sql.Literal(statement_timeout(timeouts, locks))),
    ]
    if transactional:
        with conn.transaction():
            execute_all(conn, [*settings, *upfront_statements(locks), *batch])
    else:
        execute_all(conn, [*settings, *batch])


def execute_all(conn: psycopg.Connection, batch: list[Statement | Deferred]) -> None:
    for step in batch:
        if isinstance(step, sql.Composable):
            conn.execute(step)
        else:
            for statement in step(conn):
                conn.execute(statement)


def concurrent_catalog_update(error: psycopg.Error) -> bool:
    """Two GRANTs on one object, or two ALTER DEFAULT PRIVILEGES for one owner and schema, at once
    (resources run in parallel): PostgreSQL fails the later one instead of waiting; its transaction
    rolled back, so it is simply run again."""
    constraint = getattr(error.diag, "constraint_name", None) or ""
    return "tuple concurrently updated" in str(error) or (
        isinstance(error, psycopg.errors.UniqueViolation) and constraint.startswith("pg_")
    )


def scalar(conn: psycopg.Connection, query: Statement | str, params: tuple[Any, ...] = ()) -> Any:
    # without parameters, psycopg leaves a literal '%' (as in a CHECK's regular expression) alone
    row = conn.execute(query, params or None).fetchone()
    return None if row is None else row[0]
