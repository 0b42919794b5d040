"""thorbisdb:db:Policy — a row level security policy: command, roles, permissive, USING, WITH CHECK.

Read from pg_policy. The declared expressions are compared with how the server writes them: the same
policy is made on `CREATE TEMPORARY TABLE shadow (LIKE table)` in a rolled-back transaction and read back,
so `company_id = (select app.current_company_id())` matches its catalog rendering while `true` does not.
A change is an ALTER POLICY where that can express it (roles, expressions); a different command or
permissiveness, or a clause to remove, is a DROP and CREATE in one transaction (never a moment without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, field_validator, model_validator

from components.database.base import DatabaseKind, qualified
from components.database.ddl import Operation, shared
from components.database.locks import Lock, TableLock
from components.database.session import Statement, connect
from components.kind import Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:Policy"
Command = Literal["SELECT", "INSERT", "UPDATE", "DELETE", "ALL"]
_COMMANDS: dict[str, Command] = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


class PolicySpec(Spec):
    schema_name: Replace[str] = Field(description="Schema of the table.")
    table: Replace[str] = Field(description="Table the policy is on.")
    name: Replace[str] = Field(description="Policy name.")
    command: Command = Field(default="ALL", description="SELECT, INSERT, UPDATE, DELETE or ALL (default).")
    roles: list[str] = Field(default_factory=lambda: ["public"], min_length=1, description='Default ["public"].')
    permissive: bool = Field(default=True, description="PERMISSIVE (default, OR-ed) or RESTRICTIVE (AND-ed).")
    using: str | None = Field(default=None, description="Which existing rows are visible / may be touched.")
    with_check: str | None = Field(default=None, description="Which new rows may be written.")

    @field_validator("roles")
    @classmethod
    def distinct(cls, roles: list[str]) -> list[str]:
        if len({role.lower() if role.lower() == "public" else role for role in roles}) != len(roles):
            raise ValueError(f"roles are listed more than once: {roles}")
        return roles

    @model_validator(mode="after")
    def clauses_fit_command(self) -> PolicySpec:
        where = f"policy {self.name} on {self.schema_name}.{self.table}"
        if self.command == "INSERT" and (self.with_check is None or self.using is not None):
            raise ValueError(f"{where}: an INSERT policy takes with_check (the rows it lets in) and no using")
        if self.command in ("SELECT", "DELETE") and (self.using is None or self.with_check is not None):
            raise ValueError(f"{where}: a {self.command} policy takes using (the rows it reaches) and no with_check")
        if self.command == "UPDATE" and (self.using is None or self.with_check is None):
            raise ValueError(
                f"{where}: an UPDATE policy needs using (rows it may change) and with_check (what they may become)"
            )
        if self.command == "ALL" and self.using is None:
            raise ValueError(f"{where}: an ALL policy needs using (with_check defaults to it)")
        return self


class PolicyStatus(Status):
    adopted: bool | None = Field(default=None, description="The policy existed before the stack declared it.")


# --- read: the live policy, in the spec's shape ------------------------------------------------------

POLICY_QUERY = """
SELECT p.polcmd, p.polpermissive,
       ARRAY(SELECT CASE r WHEN 0 THEN 'public' ELSE pg_get_userbyid(r) END FROM unnest(p.polroles) r ORDER BY 1),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_policy p WHERE p.polrelid = to_regclass(%s) AND p.polname = %s
"""


@dataclass(frozen=True)
class LivePolicy:
    command: Command
    permissive: bool
    roles: list[str]
    using: str | None
    with_check: str | None


def read_policy(conn: psycopg.Connection, relation: sql.Identifier, name: str) -> LivePolicy | None:
    row = conn.execute(POLICY_QUERY, (relation.as_string(conn), name)).fetchone()
    if row is None:
        return None
    command, permissive, roles, using, with_check = row
    return LivePolicy(_COMMANDS[command], permissive, list(roles), using, with_check)


def canonical(conn: psycopg.Connection, spec: PolicySpec) -> LivePolicy:
    """The declared policy as the server writes it: made on a temporary copy of the table's columns in a
    rolled-back transaction (to PUBLIC, so only the expressions and the command matter)."""
    shadow = sql.Identifier("pg_temp", f"shadow_{spec.table}"[:63])
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {})").format(shadow, qualified(spec.schema_name, spec.table))
            )
            conn.execute(create_statement(spec.model_copy(update={"roles": ["public"]}), shadow))
            live = read_policy(conn, shadow, spec.name)
            assert live is not None
            return live
    except psycopg.Error as error:
        raise ProviderError(
            f"policy {spec.name} on {spec.schema_name}.{spec.table}: the spec is not a valid policy: "
            f"{str(error).strip()}"
        ) from error


def observed(conn: psycopg.Connection, spec: PolicySpec) -> Observed[PolicyStatus] | None:
    """The live policy as a spec: the declared text wherever the server writes both alike."""
    live = read_policy(conn, qualified(spec.schema_name, spec.table), spec.name)
    if live is None:
        return None
    wanted = canonical(conn, spec)
    declared_roles = {role.lower() if role.lower() == "public" else role for role in spec.roles}
    inputs = {
        "schemaName": spec.schema_name,
        "table": spec.table,
        "name": spec.name,
        "command": live.command,
        "roles": spec.roles if set(live.roles) == declared_roles else live.roles,
        "permissive": live.permissive,
        "using": spec.using if live.using == wanted.using else live.using,
        "withCheck": spec.with_check if live.with_check == wanted.with_check else live.with_check,
    }
    return Observed(inputs, PolicyStatus())


# --- render: the DDL ---------------------------------------------------------------------------------


def roles_list(roles: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("PUBLIC") if role.lower() == "public" else sql.Identifier(role) for role in roles)


def clauses(spec: PolicySpec) -> list[sql.Composable]:
    found: list[sql.Composable] = [sql.SQL("TO {}").format(roles_list(spec.roles))]
    if spec.using is not None:
        found.append(sql.SQL("USING ({})").format(sql.SQL(spec.using)))
    if spec.with_check is not None:
        found.append(sql.SQL("WITH CHECK ({})").format(sql.SQL(spec.with_check)))
    return found


def create_statement(spec: PolicySpec, relation: sql.Identifier) -> Statement:
    return sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} {}").format(
        sql.Identifier(spec.name),
        relation,
        sql.SQL("PERMISSIVE" if spec.permissive else "RESTRICTIVE"),
        sql.SQL(spec.command),
        sql.SQL(" ").join(clauses(spec)),
    )


def drop_statement(spec: PolicySpec) -> Statement:
    return sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(
        sql.Identifier(spec.name), qualified(spec.schema_name, spec.table)
    )


def on_table(spec: PolicySpec) -> TableLock:
    """CREATE, ALTER and DROP POLICY take ACCESS EXCLUSIVE on the table alone (not its partitions): taken up
    front, before the transaction has a snapshot that a CONCURRENTLY build on the table would wait for."""
    return TableLock(spec.schema_name, spec.table, Lock.ACCESS_EXCLUSIVE, only=True)


def create_operations(spec: PolicySpec) -> list[Operation]:
    return shared([create_statement(spec, qualified(spec.schema_name, spec.table))], on_table(spec))


def drop_operations(spec: PolicySpec) -> list[Operation]:
    return shared([drop_statement(spec)], on_table(spec))


def plan(spec: PolicySpec, live: LivePolicy | None) -> list[Operation]:
    """From the live policy to the spec, in one transaction: ALTER POLICY can change roles and set
    expressions, but not the command, permissiveness, or remove a clause."""
    relation = qualified(spec.schema_name, spec.table)
    if live is None:
        return create_operations(spec)
    alterable = (
        live.command == spec.command
        and live.permissive == spec.permissive
        and (spec.using is not None or live.using is None)
        and (spec.with_check is not None or live.with_check is None)
    )
    if not alterable:
        return [*drop_operations(spec), *create_operations(spec)]
    alter = sql.SQL("ALTER POLICY {} ON {} {}").format(
        sql.Identifier(spec.name), relation, sql.SQL(" ").join(clauses(spec))
    )
    return shared([alter], on_table(spec))


class PolicyKind(DatabaseKind[PolicySpec, PolicyStatus]):
    token = TOKEN
    spec_type = PolicySpec
    status_type = PolicyStatus

    def observe(
        self, resource_id: str, spec: PolicySpec, recorded: PolicyStatus | None = None
    ) -> Observed[PolicyStatus] | None:
        with connect(self.target) as conn:
            return observed(conn, spec)

    def planned_create(self, spec: PolicySpec) -> list[Operation] | None:
        return create_operations(spec)  # a change is an ALTER POLICY, or a DROP and CREATE: the live one decides

    def planned_delete(self, spec: PolicySpec) -> list[Operation] | None:
        return drop_operations(spec)

    def create(self, spec: PolicySpec) -> tuple[str, PolicyStatus]:
        with connect(self.target) as conn:
            existed = read_policy(conn, qualified(spec.schema_name, spec.table), spec.name) is not None
            self.converge(conn, spec)
        return f"{spec.schema_name}.{spec.table}.{spec.name}", PolicyStatus(adopted=existed)

    def update(self, resource_id: str, old: dict[str, Any], spec: PolicySpec) -> PolicyStatus:
        with connect(self.target) as conn:
            self.converge(conn, spec)
        return PolicyStatus()

    def converge(self, conn: psycopg.Connection, spec: PolicySpec) -> None:
        live = read_policy(conn, qualified(spec.schema_name, spec.table), spec.name)
        self.apply(conn, plan(spec, live), what=f"policy {spec.name} on {spec.schema_name}.{spec.table}")

    def delete(self, resource_id: str, spec: PolicySpec, recorded: PolicyStatus | None = None) -> None:
        with connect(self.target) as conn:  # a missing table takes its policies with it; IF EXISTS: the policy
            if read_policy(conn, qualified(spec.schema_name, spec.table), spec.name) is None:
                return
            self.apply(conn, drop_operations(spec), what=f"drop policy {spec.name} on {spec.schema_name}.{spec.table}")
