"""Table locks as data: which lock a planned statement takes on which table, and how a transaction takes
them all up front, in one order, before it does anything else.

PostgreSQL takes a statement's locks as it goes, so DDL that needs two tables can hold the first while it
waits for the second, which an application's transaction holds while it waits for the first: a deadlock,
and the session PostgreSQL aborts is the one whose deadlock check runs first, which may be the
application's. A transaction of ours therefore starts with `LOCK TABLE` of every table it will lock, in
one order: it waits for the first with the stack's lock_timeout while it holds nothing, and for each of
the others at most SECOND_LOCK_WAIT, far below PostgreSQL's default deadlock_timeout (1 s) that the
application's sessions check after; then it gives them all back and tries again later. A transaction that
waits at `LOCK TABLE` has no snapshot yet, so no CREATE INDEX CONCURRENTLY waits for it either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from psycopg import sql

#: The longest a transaction that holds a lock waits for another (PostgreSQL's deadlock_timeout is 1 s).
SECOND_LOCK_WAIT = "100ms"


class Lock(IntEnum):
    """PostgreSQL's table lock modes, weakest first."""

    NONE = 0
    ACCESS_SHARE = 1
    ROW_SHARE = 2
    ROW_EXCLUSIVE = 3
    SHARE_UPDATE_EXCLUSIVE = 4
    SHARE = 5
    SHARE_ROW_EXCLUSIVE = 6
    EXCLUSIVE = 7
    ACCESS_EXCLUSIVE = 8

    @property
    def mode(self) -> str:
        """As LOCK TABLE and the documentation write it: ACCESS EXCLUSIVE."""
        return self.name.replace("_", " ")

    @property
    def blocks_writes(self) -> bool:
        """INSERT, UPDATE and DELETE (ROW EXCLUSIVE) wait for it."""
        return self >= Lock.SHARE

    @property
    def blocks(self) -> str:
        """What the application cannot do while it is held."""
        if self is Lock.ACCESS_EXCLUSIVE:
            return "blocks reads and writes"
        if self.blocks_writes:
            return "blocks writes"
        return "blocks no reads or writes"


@dataclass(frozen=True, order=True)
class TableLock:
    """A lock a statement takes on a table (ordered by the table's name: the order locks are taken in)."""

    schema: str
    table: str
    lock: Lock
    #: The table alone, not its partitions (a statement that does not recurse, such as CREATE INDEX ON ONLY).
    only: bool = False

    @property
    def relation(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def leaves(self) -> sql.Composed:
        """A query of the tables that hold its rows (`relid`): its leaf partitions, or the table itself when it
        is not partitioned (pg_partition_tree lists nothing for a table outside any partition tree)."""
        table = sql.SQL("to_regclass({})").format(sql.Literal(self.relation.as_string()))
        return sql.SQL(
            "SELECT c.oid AS relid FROM pg_class c WHERE c.relkind <> 'p' "
            "AND c.oid IN (SELECT relid FROM pg_partition_tree({table}) UNION SELECT {table})"
        ).format(table=table)


def strongest(locks: Iterable[TableLock]) -> list[TableLock]:
    """One lock per table, the strongest asked for, in the order they are taken."""
    per_table: dict[tuple[str, str], TableLock] = {}
    for lock in locks:
        kept = per_table.get((lock.schema, lock.table), lock)
        per_table[(lock.schema, lock.table)] = TableLock(
            lock.schema, lock.table, max(kept.lock, lock.lock), kept.only and lock.only
        )
    return sorted(per_table.values())


def lock_statement(lock: TableLock) -> sql.Composed:
    """LOCK TABLE: a partitioned table's partitions too (as the statements that recurse lock them), unless
    `only`."""
    only = sql.SQL("ONLY " if lock.only else "")
    return sql.SQL("LOCK TABLE {}{} IN {} MODE").format(only, lock.relation, sql.SQL(lock.lock.mode))


def upfront_statements(locks: Iterable[TableLock]) -> list[sql.Composed]:
    """LOCK TABLE of each table, in order; after the first, waits are bounded by SECOND_LOCK_WAIT."""
    ordered = [lock for lock in strongest(locks) if lock.lock is not Lock.NONE]
    if not ordered:
        return []
    first, *others = ordered
    short_wait = sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SECOND_LOCK_WAIT))
    return [lock_statement(first), short_wait, *(lock_statement(lock) for lock in others)]
