"""Planned changes as data, as Alembic keeps its operations: each statement a kind plans is an Operation,
rendered once and both shown (the PR preview, ops/sql_preview.py) and executed (here, through
session.run_ddl with the stack's lock_timeout and retries) from the same object.

An operation also says what it costs the application: the locks it takes on which tables (taken up front
by its transaction, components/database/locks.py) and the work it does on their rows (none, a scan, a
rewrite, a backfill in batches), which the PR preview shows with the rows the catalog estimates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import psycopg
from psycopg import sql

from components.database.locks import Lock, TableLock, strongest
from components.database.session import Statement, Timeouts, run_ddl, scalar
from components.kind import ProviderError


class Transaction(Enum):
    """How an operation runs with those next to it."""

    #: In one transaction with the adjacent SHARED operations: all of them or none.
    SHARED = "shared"
    #: In a transaction of its own, after the ones before it committed (VALIDATE CONSTRAINT: its scan then
    #: holds no lock that blocks writers).
    OWN = "own"
    #: Outside any transaction (CREATE INDEX CONCURRENTLY).
    NONE = "none"
    #: Over the table's pages, a range at a time, each range in a transaction of its own (a backfill): writers
    #: wait at most for the rows of one range.
    BATCHED = "batched"


#: Pages of a table one batch of a backfill covers (8 kB each).
BATCH_PAGES = 1000


@dataclass(frozen=True)
class Batches:
    """A statement run over a table's pages: `statement(first, end)` covers ctid first <= ctid < end."""

    table: TableLock
    statement: Callable[[sql.Composable, sql.Composable], Statement]
    pages: int = BATCH_PAGES

    def batch(self, start: int) -> Statement:
        return self.statement(sql.Literal(f"({start},0)"), sql.Literal(f"({start + self.pages},0)"))


class Work(Enum):
    """What a statement does to the rows of the tables it locks."""

    CATALOG = "catalog only"
    SCAN = "reads every row"
    REWRITE = "rewrites the table"
    BACKFILL = "backfills rows in batches"
    MOVE = "moves rows in batches"


@dataclass(frozen=True)
class Operation:
    """One statement of a plan."""

    statement: Statement
    transaction: Transaction = Transaction.SHARED
    #: Run (outside a transaction) before a retry, to undo what a failed attempt left: the INVALID index of
    #: a CONCURRENTLY build that hit a lock timeout.
    cleanup: Statement | None = None
    #: The tables it locks and how: taken up front by its transaction; the PR preview shows the strongest.
    locks: tuple[TableLock, ...] = ()
    work: Work = Work.CATALOG
    #: For a BATCHED operation: the ranges it runs over (its statement is the first range's, as shown).
    batches: Batches | None = None
    #: It carries a secret (a password's verifier): its text is never shown, in an error either.
    secret: bool = False

    def render(self, context: psycopg.Connection | None = None) -> str:
        return self.statement.as_string(context)

    @property
    def lock(self) -> TableLock | None:
        """The strongest lock it takes."""
        return max(self.locks, key=lambda lock: lock.lock, default=None)


def batched(batches: Batches, work: Work) -> Operation:
    """A statement run range by range over a table (rows added later are the caller's: a default or trigger)."""
    return Operation(batches.batch(0), Transaction.BATCHED, locks=(batches.table,), work=work, batches=batches)


def shared(statements: Iterable[Statement], *locks: TableLock) -> list[Operation]:
    """Statements that run in one transaction (each taking `locks`)."""
    return [Operation(statement, locks=locks) for statement in statements]


def render(operations: Iterable[Operation]) -> list[str]:
    return [operation.render() for operation in operations]


def apply(conn: psycopg.Connection, operations: Iterable[Operation], timeouts: Timeouts, what: str) -> None:
    """Run a plan in order: each run of adjacent SHARED operations in one transaction, each OWN one in its
    own transaction, each NONE one outside a transaction (after the others on its tables: serialized)."""
    batch: list[Operation] = []
    for operation in operations:
        if operation.transaction is Transaction.SHARED:
            batch.append(operation)
            continue
        run_shared(conn, batch, timeouts, what)
        batch = []
        if operation.batches is not None:
            run_batches(conn, operation.batches, timeouts, what)
            continue
        with serialized(conn, operation.locks, concurrently=operation.transaction is Transaction.NONE):
            run_ddl(
                conn,
                [operation.statement],
                timeouts,
                transactional=operation.transaction is Transaction.OWN,
                what=what,
                before_retry=cleanup_step(conn, operation.cleanup, timeouts),
                locks=operation.locks,
                secret=operation.secret,
            )
    run_shared(conn, batch, timeouts, what)


def run_shared(conn: psycopg.Connection, batch: list[Operation], timeouts: Timeouts, what: str) -> None:
    locks = [lock for operation in batch for lock in operation.locks]
    statements = [operation.statement for operation in batch]
    secret = any(operation.secret for operation in batch)
    with serialized(conn, locks, concurrently=False):
        run_ddl(conn, statements, timeouts, what=what, locks=locks, secret=secret)


def run_batches(conn: psycopg.Connection, batches: Batches, timeouts: Timeouts, what: str) -> None:
    """Each range in a transaction of its own, with triggers off where the role may turn them off: a backfill
    is not the application's update (it must not bump updated_at or fire the application's triggers)."""
    pages = int(  # of its largest partition, for a partitioned table (each has its own pages)
        scalar(
            conn,
            sql.SQL("SELECT max(pg_relation_size(relid)) / current_setting('block_size')::int FROM ({}) t").format(
                batches.table.leaves
            ),
        )
        or 0
    )
    quiet = [sql.SQL("SET LOCAL session_replication_role = replica")] if may_replicate(conn) else []
    for start in range(0, pages + 1, batches.pages):
        run_ddl(conn, [*quiet, batches.batch(start)], timeouts, what=f"{what}: backfill", locks=[batches.table])


def may_replicate(conn: psycopg.Connection) -> bool:
    return bool(scalar(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))


def cleanup_step(conn: psycopg.Connection, cleanup: Statement | None, timeouts: Timeouts) -> Callable[[], None] | None:
    if cleanup is None:
        return None
    return lambda: run_ddl(conn, [cleanup], timeouts, transactional=False)


#: How often a statement waiting for its turn on a table asks again.
TURN_POLL_SECONDS = 0.1
#: How long a transaction waits for its turn before going on (a deadlock is then detected and retried).
TURN_WAIT_SECONDS = 60.0


@contextmanager
def serialized(conn: psycopg.Connection, locks: Iterable[TableLock], concurrently: bool) -> Iterator[None]:
    """DDL on a table waits until no other session of ours runs DDL on it. A CONCURRENTLY build or drop waits
    for every transaction that holds or awaits a lock on its table: two builds wait for each other, and a
    transaction of ours queued behind the build's lock (policy, row security, a new table's foreign keys)
    deadlocks with it. The turn is a session advisory lock per table, taken in the tables' order and asked
    for with pg_try_advisory_lock in a loop: a session blocked inside pg_advisory_lock would hold a snapshot
    that the running build waits for. A transaction takes turns only on the tables it locks as strongly as
    a build (SHARE UPDATE EXCLUSIVE or more), and waits at most TURN_WAIT_SECONDS."""
    wanted = [lock for lock in strongest(locks) if concurrently or lock.lock >= Lock.SHARE_UPDATE_EXCLUSIVE]
    keys = [f"thorbisdb concurrently {lock.name}" for lock in wanted]
    deadline = None if concurrently else time.monotonic() + TURN_WAIT_SECONDS
    taken: list[str] = []
    try:
        for key in keys:
            while not scalar(conn, "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)):
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(TURN_POLL_SECONDS)
            else:
                taken.append(key)
        yield
    finally:
        for key in reversed(taken):
            scalar(conn, "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def apply_drop(conn: psycopg.Connection, operations: list[Operation], timeouts: Timeouts, what: str) -> None:
    """A plan that drops an object RESTRICT: when other objects depend on it, say which and what to do."""
    try:
        apply(conn, operations, timeouts, what)
    except ProviderError as error:
        cause = error.__cause__
        if not isinstance(cause, psycopg.errors.DependentObjectsStillExist):
            raise
        dependents = "; ".join((cause.diag.message_detail or "other objects depend on it").splitlines())
        raise ProviderError(
            f"{what}: refused because {dependents}. Remove or change those objects first (declare them in the "
            "program with depends_on on this one, so Pulumi changes them in order), then run `pulumi up` again"
        ) from cause
