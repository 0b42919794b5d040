"""The SQL a planned change would run, with what it costs the application: the strongest lock each statement
takes, the work it does on the rows (none, a scan, a rewrite, a backfill) and how many rows the catalog
estimates that is.

Each kind plans its changes as typed operations (components/database/ddl.py), rendered here exactly as the
apply executes them. Where the preview can reach the stack's database, an update is planned against the
live catalog by the same code the apply runs (`planned_live`: read-only, its comparisons on temporary
copies rolled back); otherwise `planned_create`, `planned_update` and `planned_delete` give what is known
without it, and the rest is decided at apply time: None here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from components.database.base import DatabaseKind
from components.database.ddl import Operation, Transaction, Work
from components.database.locks import TableLock
from components.kind import ProviderError, Spec
from components.registry import kind_of
from ops.events import Change

SpecT = TypeVar("SpecT", bound=Spec)
CREATE = frozenset({"create", "replace"})
DELETE = frozenset({"delete", "replace"})


@dataclass(frozen=True)
class Step:
    """One statement of a change, as the PR preview shows it."""

    sql: str
    lock: TableLock | None
    work: Work
    transaction: Transaction
    rows: int | None = None  # of the locked table, as the catalog estimates them; None when not known

    def note(self) -> str:
        """`ACCESS EXCLUSIVE on public.t (blocks reads and writes); catalog only`, and the rows touched."""
        lock = f"{self.lock.lock.mode} on {self.lock.name} ({self.lock.lock.blocks})" if self.lock else "no table lock"
        touched = f", ~{self.rows:,} rows" if self.rows is not None and self.work is not Work.CATALOG else ""
        batched = "; each batch in its own transaction" if self.transaction is Transaction.BATCHED else ""
        return f"{lock}; {self.work.value}{touched}{batched}"


def parse(spec_type: type[SpecT], inputs: dict[str, Any]) -> SpecT:
    """A kind's spec from an event's inputs (outputs such as `valid` or `adopted` left out)."""
    names = {field.alias or name for name, field in spec_type.model_fields.items()}
    return spec_type.model_validate({key: value for key, value in inputs.items() if key in names})


def planned_operations(
    kind: DatabaseKind[Any, Any], change: Change, conn: psycopg.Connection | None = None
) -> list[Operation] | None:
    """A replacement is the old object's drop, then the new one's creation."""
    if change.op == "update":
        old, new = parse(kind.spec_type, change.old_inputs), parse(kind.spec_type, change.new_inputs)
        if conn is None:
            return kind.planned_update(old, new)
        try:
            return kind.planned_live(conn, old, new, kind.status_of(change.old_outputs))
        except (ProviderError, psycopg.Error):
            return kind.planned_update(old, new)  # the apply will say what is wrong, with what it found then
    steps: list[list[Operation] | None] = []
    if change.op in DELETE:
        steps.append(kind.planned_delete(parse(kind.spec_type, change.old_inputs)))
    if change.op in CREATE:
        steps.append(kind.planned_create(parse(kind.spec_type, change.new_inputs)))
    if not steps or any(step is None for step in steps):
        return None
    return [operation for step in steps for operation in step or []]


def planned_steps(change: Change, conn: psycopg.Connection | None = None) -> list[Step] | None:
    """The statements of a change and their cost, or None when they are computed at apply time."""
    kind_type = kind_of(change.type)
    if kind_type is None or not issubclass(kind_type, DatabaseKind):
        return None
    try:
        operations = planned_operations(kind_type(), change, conn)
    except (ValueError, KeyError, TypeError):
        return None  # inputs still unknown in the preview (computed from another resource's output)
    if operations is None:
        return None
    return [
        Step(op.render(), op.lock, op.work, op.transaction, estimated_rows(conn, op.lock) if op.lock else None)
        for op in operations
    ]


def planned_sql(change: Change, conn: psycopg.Connection | None = None) -> list[str] | None:
    steps = planned_steps(change, conn)
    return None if steps is None else [step.sql for step in steps]


def estimated_rows(conn: psycopg.Connection | None, lock: TableLock) -> int | None:
    """The catalog's estimate of a table's rows (all partitions): reltuples where it was analyzed, else the
    statistics' live tuples; None without a connection or for a table not there yet."""
    if conn is None:
        return None
    row = conn.execute(
        sql.SQL(
            "SELECT sum(CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE coalesce(s.n_live_tup, 0) END)::bigint "
            "FROM ({}) t JOIN pg_class c ON c.oid = t.relid LEFT JOIN pg_stat_user_tables s ON s.relid = t.relid"
        ).format(lock.leaves)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])
