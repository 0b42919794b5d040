"""thorbisdb:db:RowSecurity — a table's row level security: enabled and forced, with exactly its declared policies.

It comes after the table and its declared policies, and in one transaction it drops every other policy on
the table (a permissive policy ORs with ours: `USING (true)` left from a dashboard is a leak) and enables
and forces RLS. So an adopted table in use is never without a policy its application relies on: until this
runs, RLS is as the table had it and our policies only add to what the application sees; from its commit,
the declared policies alone apply. A new table has RLS from its CREATE already (kinds/table.py).

An undeclared policy, or RLS turned off, is drift: preview shows it with what the policy allows, and `up`
removes it. Deleting the resource leaves RLS on (turning it off would open the table) and drops nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, qualified
from components.database.ddl import Operation, shared
from components.database.locks import Lock, TableLock
from components.database.session import Statement, connect
from components.database.table_shape import rls_statements
from components.kind import Access, Expect, Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:RowSecurity"
POLICIES_QUERY = """
SELECT p.policyname, p.permissive, p.cmd, p.roles::text[], p.qual, p.with_check
FROM pg_catalog.pg_policies p WHERE p.schemaname = %s AND p.tablename = %s ORDER BY 1
"""
TABLE_QUERY = "SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_class c WHERE c.oid = to_regclass(%s)"


class RowSecuritySpec(Spec):
    schema_name: Replace[str] = Field(description="Schema of the table.")
    table: Replace[str] = Field(description="The table.")
    policies: list[str] = Field(description="Its declared policies (resources of their own): any other is dropped.")


class RowSecurityStatus(Status):
    enabled: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="Row level security is enabled and forced (false: turned off by hand)."
    )
    undeclared_policies: Access[Annotated[list[str] | None, Expect([])]] = Field(
        default=None, description="Policies on the table the stack does not declare, each with what it allows."
    )


@dataclass(frozen=True)
class LivePolicy:
    name: str
    permissive: str
    command: str
    roles: list[str]
    using: str | None
    with_check: str | None

    def described(self) -> str:
        """What the policy allows, as a reviewer reads it."""
        clauses = [
            f"USING ({self.using})" if self.using else "",
            f"WITH CHECK ({self.with_check})" if self.with_check else "",
        ]
        allows = " ".join(clause for clause in clauses if clause)
        return f"{self.name}: {self.permissive} FOR {self.command} TO {', '.join(self.roles)} {allows}".strip()


@dataclass(frozen=True)
class LiveRowSecurity:
    enabled: bool
    forced: bool
    policies: list[LivePolicy]

    def undeclared(self, spec: RowSecuritySpec) -> list[LivePolicy]:
        return [policy for policy in self.policies if policy.name not in spec.policies]


def read_row_security(conn: psycopg.Connection, spec: RowSecuritySpec) -> LiveRowSecurity | None:
    row = conn.execute(TABLE_QUERY, (qualified(spec.schema_name, spec.table).as_string(conn),)).fetchone()
    if row is None:
        return None
    policies = [LivePolicy(*found) for found in conn.execute(POLICIES_QUERY, (spec.schema_name, spec.table))]
    return LiveRowSecurity(row[0], row[1], policies)


def status(live: LiveRowSecurity, spec: RowSecuritySpec) -> RowSecurityStatus:
    return RowSecurityStatus(
        enabled=live.enabled and live.forced,
        undeclared_policies=[policy.described() for policy in live.undeclared(spec)],
    )


def secure_operations(spec: RowSecuritySpec, live: LiveRowSecurity) -> list[Operation]:
    """Undeclared policies dropped and RLS enabled and forced, in one transaction (never one without the other)."""
    relation = qualified(spec.schema_name, spec.table)
    statements: list[Statement] = [
        sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(policy.name), relation)
        for policy in live.undeclared(spec)
    ]
    if not (live.enabled and live.forced):
        statements += rls_statements(relation)
    # the table alone (neither statement recurses), up front as every DDL transaction's locks
    return shared(statements, TableLock(spec.schema_name, spec.table, Lock.ACCESS_EXCLUSIVE, only=True))


class RowSecurityKind(DatabaseKind[RowSecuritySpec, RowSecurityStatus]):
    token = TOKEN
    spec_type = RowSecuritySpec
    status_type = RowSecurityStatus

    def observe(
        self, resource_id: str, spec: RowSecuritySpec, recorded: RowSecurityStatus | None = None
    ) -> Observed[RowSecurityStatus] | None:
        with connect(self.target) as conn:
            live = read_row_security(conn, spec)
        return None if live is None else Observed(spec.model_dump(by_alias=True), status(live, spec))

    def preview_status(self, spec: RowSecuritySpec) -> RowSecurityStatus:
        return RowSecurityStatus(enabled=True, undeclared_policies=[])

    def create(self, spec: RowSecuritySpec) -> tuple[str, RowSecurityStatus]:
        return f"{spec.schema_name}.{spec.table}", self.converge(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: RowSecuritySpec) -> RowSecurityStatus:
        return self.converge(spec)

    def converge(self, spec: RowSecuritySpec) -> RowSecurityStatus:
        what = f"row level security of {spec.schema_name}.{spec.table}"
        with connect(self.target) as conn:
            live = read_row_security(conn, spec)
            if live is None:
                raise ProviderError(f"{what}: the table does not exist; declare it (a Table) first")
            missing = sorted(set(spec.policies) - {policy.name for policy in live.policies})
            if missing:
                raise ProviderError(
                    f"{what}: refusing to turn it on without the declared policies {', '.join(missing)}: the "
                    "application would be refused; declare them (Policy resources this one depends on) first"
                )
            self.apply(conn, secure_operations(spec, live), what=what)
            now = read_row_security(conn, spec)
        assert now is not None
        return status(now, spec)

    def delete(self, resource_id: str, spec: RowSecuritySpec, recorded: RowSecurityStatus | None = None) -> None:
        """Row level security stays on: turning it off would open the table to every role with privileges."""
