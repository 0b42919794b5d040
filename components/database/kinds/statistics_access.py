"""thorbisdb:db:StatisticsAccess — who may read the server's statistics and the activity of other sessions.

PostgreSQL lets everyone (PUBLIC) read its statistics: pg_stat_activity, pg_locks, the counters of every
table and function (the pg_stat_* and pg_statio_* views and the pg_stat_* functions under them) and
pg_stat_statements, which keeps the text of every statement. Every application session runs as the same
few roles (authenticator, then authenticated or anon), and PostgreSQL hides a session's details only from
roles other than its own: so one tenant's session reads another's statements with their literals (EXPLAIN,
SET, utility statements keep them), authenticator reads the query of every session of authenticator, and
anyone reads other sessions' advisory lock keys and the rows each table gained. This kind withholds all of
it from PUBLIC and the application's roles, in every database that accepts connections (template1 too, so
that a database created later starts so), and gives it to the readers: the monitoring role, and
pg_read_all_stats, so that a monitoring agent in pg_monitor keeps working. Which objects are statistics is
read from the catalog, never listed: a new PostgreSQL's or pg_stat_statements' views are covered too.

What the admin may not change (on a managed server, whose catalog belongs to another superuser) is
reported as `unrevocable` rather than retried by every `up`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind
from components.database.ddl import shared
from components.database.session import Statement, connect
from components.kind import Expect, Observed, Spec, Status

TOKEN = "thorbisdb:db:StatisticsAccess"
MONITORING_AGENTS = "pg_read_all_stats"
EXTENSION = "pg_stat_statements"

#: The views and functions that report the server's statistics or other sessions' activity, found in the
#: catalog by what they are: pg_catalog's pg_stat_* and pg_statio_* views and pg_stat_* functions (but the
#: column statistics pg_stats*, which RLS and column privileges already filter), pg_locks and the functions
#: that show other sessions' locks, and every view and function of pg_stat_statements. For each: whether
#: the admin may change its privileges, the withheld roles that can use it (PUBLIC: through a grant to
#: everyone, or a function's default), and the readers without a grant of their own.
STATISTICS_QUERY = r"""
WITH extension_objects AS (
  SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = %(extension)s
), objects AS (
  SELECT 'TABLE' AS family, c.oid, c.oid::regclass::text AS name, 'SELECT' AS privilege, c.relowner AS owner,
         c.relacl AS acl, false AS public_by_default
  FROM pg_class c
  WHERE c.relkind = 'v'
    AND ((c.relnamespace = 'pg_catalog'::regnamespace
          AND (c.relname LIKE 'pg\_stat\_%%' OR c.relname LIKE 'pg\_statio\_%%' OR c.relname = 'pg_locks'))
         OR ('pg_class'::regclass, c.oid) IN (SELECT classid, objid FROM extension_objects))
  UNION ALL
  SELECT 'FUNCTION', p.oid, p.oid::regprocedure::text, 'EXECUTE', p.proowner, p.proacl, p.proacl IS NULL
  FROM pg_proc p
  WHERE (p.pronamespace = 'pg_catalog'::regnamespace
         AND (p.proname LIKE 'pg\_stat\_%%'
              OR p.proname IN ('pg_lock_status', 'pg_blocking_pids', 'pg_safe_snapshot_blocking_pids')))
     OR ('pg_proc'::regclass, p.oid) IN (SELECT classid, objid FROM extension_objects)
), granted AS (
  SELECT o.*, ARRAY(SELECT a.grantee FROM aclexplode(o.acl) a WHERE a.privilege_type = o.privilege) AS grantees
  FROM objects o
)
SELECT g.family, g.name, g.privilege,
       pg_has_role(g.owner, 'USAGE') OR (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user),
       ARRAY(SELECT w FROM unnest(%(withheld)s::text[]) w
             WHERE CASE WHEN w = 'PUBLIC' THEN g.public_by_default OR 0 = ANY(g.grantees)
                        WHEN g.family = 'TABLE' THEN has_table_privilege(w, g.oid, 'SELECT')
                        ELSE has_function_privilege(w, g.oid, 'EXECUTE') END),
       ARRAY(SELECT r FROM unnest(%(readers)s::text[]) r
             WHERE NOT (SELECT oid FROM pg_roles WHERE rolname = r) = ANY(g.grantees))
FROM granted g ORDER BY 1, 2
"""
DATABASES_QUERY = "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"


class StatisticsAccessSpec(Spec):
    readers: list[str] = Field(
        default_factory=list, description="Roles that read the statistics (the monitoring role), besides superusers."
    )
    withheld_from: list[str] = Field(
        default_factory=lambda: ["PUBLIC"],
        description="Roles that must read none of them: PUBLIC (everyone) and the application's roles.",
    )


class StatisticsAccessStatus(Status):
    exposed: Annotated[list[str] | None, Expect([])] = Field(
        default=None, description="`database: object` that a withheld role can still read (`up` revokes it)."
    )
    unrevocable: list[str] | None = Field(
        default=None,
        description="`database: object` that the admin may not change (not its owner, not a superuser) or a "
        "database it cannot connect to: left as the server has it; its superuser must revoke them from PUBLIC.",
    )


@dataclass(frozen=True)
class Access:
    """One view or function of the statistics in one database: who can use it that must not, and which
    readers lack a grant of their own."""

    database: str
    family: str  # TABLE or FUNCTION, as GRANT names them
    name: str  # regclass / regprocedure text: the server's own quoting
    privilege: str
    changeable: bool  # the admin owns it, or is a superuser
    holders: list[str]
    lacking: list[str]

    @property
    def label(self) -> str:
        return f"{self.database}: {self.name}"

    @property
    def target(self) -> sql.Composable:
        return sql.SQL("{} {}").format(sql.SQL(self.family), sql.SQL(self.name))

    def statements(self) -> list[Statement]:
        target = self.target
        privilege = sql.SQL(self.privilege)
        statements: list[Statement] = []
        if self.holders:
            roles = sql.SQL(", ").join(map(grantee, self.holders))
            statements.append(sql.SQL("REVOKE {} ON {} FROM {}").format(privilege, target, roles))
        if self.lacking:
            roles = sql.SQL(", ").join(map(grantee, self.lacking))
            statements.append(sql.SQL("GRANT {} ON {} TO {}").format(privilege, target, roles))
        return statements


def grantee(role: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if role == "PUBLIC" else sql.Identifier(role)


def existing_roles(conn: psycopg.Connection, roles: list[str]) -> list[str]:
    found = {name for (name,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,))}
    return [role for role in roles if role == "PUBLIC" or role in found]


def accesses(conn: psycopg.Connection, spec: StatisticsAccessSpec) -> list[Access]:
    params = {
        "extension": EXTENSION,
        "withheld": existing_roles(conn, spec.withheld_from),
        "readers": existing_roles(conn, [MONITORING_AGENTS, *spec.readers]),
    }
    return [
        Access(conn.info.dbname, family, name, privilege, bool(changeable), list(holders), list(lacking))
        for family, name, privilege, changeable, holders, lacking in conn.execute(STATISTICS_QUERY, params)
    ]


class StatisticsAccessKind(DatabaseKind[StatisticsAccessSpec, StatisticsAccessStatus]):
    token = TOKEN
    spec_type = StatisticsAccessSpec
    status_type = StatisticsAccessStatus

    def databases(self) -> list[str]:
        """Every database that accepts connections: an application role may log in to any of them, and
        pg_stat_activity and pg_locks show the whole server from each."""
        with connect(self.target) as conn:
            return [name for (name,) in conn.execute(DATABASES_QUERY)]

    @contextmanager
    def database(self, name: str) -> Iterator[psycopg.Connection | None]:
        """The admin's connection to one database; None when it may not connect there."""
        try:
            conn = psycopg.connect(**self.target.connection.conninfo(database=name), autocommit=True)
        except psycopg.OperationalError:
            yield None
            return
        with conn:
            yield conn

    def status(self, spec: StatisticsAccessSpec) -> StatisticsAccessStatus:
        exposed: list[str] = []
        unrevocable: list[str] = []
        for name in self.databases():
            with self.database(name) as conn:
                if conn is None:
                    unrevocable.append(f"{name}: the admin cannot connect")
                    continue
                for access in accesses(conn, spec):
                    if access.holders:
                        (exposed if access.changeable else unrevocable).append(access.label)
        return StatisticsAccessStatus(exposed=exposed, unrevocable=unrevocable)

    def observe(
        self, resource_id: str, spec: StatisticsAccessSpec, recorded: StatisticsAccessStatus | None = None
    ) -> Observed[StatisticsAccessStatus] | None:
        return Observed(spec.model_dump(by_alias=True), self.status(spec))

    def create(self, spec: StatisticsAccessSpec) -> tuple[str, StatisticsAccessStatus]:
        return "statistics", self.update("statistics", {}, spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: StatisticsAccessSpec) -> StatisticsAccessStatus:
        for name in self.databases():
            with self.database(name) as conn:
                if conn is not None:
                    statements = [
                        s for access in accesses(conn, spec) if access.changeable for s in access.statements()
                    ]
                    self.apply(conn, shared(statements), what=f"statistics access in database {name}")
        return self.status(spec)

    def delete(
        self, resource_id: str, spec: StatisticsAccessSpec, recorded: StatisticsAccessStatus | None = None
    ) -> None:
        """The readers' grants are withdrawn (a role that holds privileges cannot be dropped, and the stack
        drops its roles next); the rest is left as it is: PostgreSQL's default (everyone reads every
        statistic) is what this kind ends, and a destroyed stack's server should not go back to it by itself
        (`GRANT ... TO PUBLIC` does, by hand)."""
        for name in self.databases():
            with self.database(name) as conn:
                if conn is not None:
                    readers = [grantee(role) for role in existing_roles(conn, spec.readers)]
                    statements: list[Statement] = [
                        sql.SQL("REVOKE {} ON {} FROM {}").format(
                            sql.SQL(access.privilege), access.target, sql.SQL(", ").join(readers)
                        )
                        for access in accesses(conn, spec)
                        if access.changeable and readers
                    ]
                    self.apply(conn, shared(statements), what=f"statistics access in database {name}")
