"""Planned changes as data, as Alembic keeps its operations: each statement a kind plans is an Operation,
rendered once and both shown (the PR preview, ops/sql_preview.py) and executed (here, through
session.run_ddl with the stack's lock_timeout and retries) from the same object.

Issue 13 (online schema evolution) adds what it measures to Operation: the strongest lock a statement
takes, whether it rewrites or backfills the table, the rows it touches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import psycopg

from components.database.session import Statement, run_ddl
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


@dataclass(frozen=True)
class Operation:
    """One statement of a plan."""

    statement: Statement
    transaction: Transaction = Transaction.SHARED
    #: Run (outside a transaction) before a retry, to undo what a failed attempt left: the INVALID index of
    #: a CONCURRENTLY build that hit a lock timeout.
    cleanup: Statement | None = None

    def render(self, context: psycopg.Connection | None = None) -> str:
        return self.statement.as_string(context)


def shared(statements: Iterable[Statement]) -> list[Operation]:
    """Statements that run in one transaction."""
    return [Operation(statement) for statement in statements]


def render(operations: Iterable[Operation]) -> list[str]:
    return [operation.render() for operation in operations]


def apply(conn: psycopg.Connection, operations: Iterable[Operation], lock_timeout: str, what: str) -> None:
    """Run a plan in order: each run of adjacent SHARED operations in one transaction, each OWN one in its
    own transaction, each NONE one outside a transaction."""
    batch: list[Statement] = []
    for operation in operations:
        if operation.transaction is Transaction.SHARED:
            batch.append(operation.statement)
            continue
        run_ddl(conn, batch, lock_timeout, what=what)
        batch = []
        run_ddl(
            conn,
            [operation.statement],
            lock_timeout,
            transactional=operation.transaction is Transaction.OWN,
            what=what,
            before_retry=cleanup_step(conn, operation.cleanup, lock_timeout),
        )
    run_ddl(conn, batch, lock_timeout, what=what)


def cleanup_step(conn: psycopg.Connection, cleanup: Statement | None, lock_timeout: str) -> Callable[[], None] | None:
    if cleanup is None:
        return None
    return lambda: run_ddl(conn, [cleanup], lock_timeout, transactional=False)


def apply_drop(conn: psycopg.Connection, operations: list[Operation], lock_timeout: str, what: str) -> None:
    """A plan that drops an object RESTRICT: when other objects depend on it, say which and what to do."""
    try:
        apply(conn, operations, lock_timeout, what)
    except ProviderError as error:
        cause = error.__cause__
        if not isinstance(cause, psycopg.errors.DependentObjectsStillExist):
            raise
        dependents = "; ".join((cause.diag.message_detail or "other objects depend on it").splitlines())
        raise ProviderError(
            f"{what}: refused because {dependents}. Remove or change those objects first (declare them in the "
            "program with depends_on on this one, so Pulumi changes them in order), then run `pulumi up` again"
        ) from cause
