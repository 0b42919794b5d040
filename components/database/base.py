"""What every kind of database object shares: the target database, from the explicit provider's config."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TypeVar

import psycopg
from psycopg import sql

from components.database.ddl import Operation, apply
from components.database.session import DatabaseTarget, Statement
from components.kind import Kind, Spec, Status

SpecT = TypeVar("SpecT", bound=Spec)
StatusT = TypeVar("StatusT", bound=Status)


class DatabaseKind(Kind[SpecT, StatusT]):
    """A kind whose objects live inside the database the explicit provider's `connection` names."""

    @property
    def target(self) -> DatabaseTarget:
        return DatabaseTarget.from_config(self.provider_config)

    def apply(self, conn: psycopg.Connection, operations: Iterable[Operation], what: str) -> None:
        """Run a plan with the stack's lock and statement timeouts (components/database/ddl.py)."""
        apply(conn, operations, self.target.timeouts, what)

    # What a change runs where it is known without the server, as the PR preview shows it: the same
    # operations the apply runs. None (the default) where the live catalog decides.

    def planned_create(self, spec: SpecT) -> list[Operation] | None:
        return None

    def planned_update(self, old: SpecT, new: SpecT) -> list[Operation] | None:
        return None

    def planned_delete(self, spec: SpecT) -> list[Operation] | None:
        return None

    def planned_live(
        self, conn: psycopg.Connection, old: SpecT, new: SpecT, recorded: StatusT | None = None
    ) -> list[Operation] | None:
        """What an update would run now, planned against the live database (read-only), as the PR preview shows
        it where it can reach the database, knowing the status the stack recorded; by default the plan known
        without it."""
        return self.planned_update(old, new)


#: PostgreSQL's longest name (NAMEDATALEN - 1 bytes).
MAX_NAME = 63


def bounded(name: str) -> str:
    """A PostgreSQL name of at most 63 bytes, kept unique by a short hash when it must be cut."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9]}_{digest}"


def qualified(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def default_partition_name(table: str) -> str:
    """pg_partman's name for the default partition (check_name_length(table, '_default')): the Table kind
    makes it under this name, so that pg_partman finds it and a conversion swaps it."""
    return f"{table[: 63 - len('_default')]}_default"


def partition_name(table: str, suffix: str) -> str:
    """pg_partman's name for a child (check_name_length(table, suffix, true)): `<table>_p<YYYY_MM>`."""
    if len(table) + len(suffix) >= 61:
        return f"{table[: 61 - len(suffix)]}_p{suffix}"
    return f"{table}_p{suffix}"


def copied_grants(
    conn: psycopg.Connection, source: sql.Identifier, target: sql.Identifier | None = None
) -> list[Statement]:
    """The grants on `source` (but its owner's), as statements that give them on `target`: a relation
    that replaces it, or `source` itself once dropped and made again."""
    rows = conn.execute(
        "SELECT a.privilege_type, CASE a.grantee WHEN 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END "
        "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner",
        (source.as_string(conn),),
    ).fetchall()
    return [
        sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privilege), target or source, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC")
        )
        for privilege, grantee in rows
    ]
