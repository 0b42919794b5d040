"""thorbisdb:db:View — a view: its query, security_barrier, security_invoker and owner.

The live query is pg_get_viewdef; the declared one is made a TEMPORARY view in a rolled-back transaction
and read back the same way, so layout, case and implicit aliases never show as drift, while another
query does. CREATE OR REPLACE VIEW cannot drop, rename or retype columns: such a change is a DROP (RESTRICT)
and CREATE in one transaction that keeps the view's grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, copied_grants, qualified
from components.database.ddl import Operation, apply_drop, shared
from components.database.session import Statement, connect
from components.kind import Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:View"
_TRUE = {"true", "on", "yes", "1", "t", "y"}


class ViewSpec(Spec):
    schema_name: Replace[str] = Field(description="Schema of the view.")
    name: Replace[str] = Field(description="View name.")
    query: str = Field(description="The SELECT the view stands for.")
    security_barrier: bool = Field(default=False, description="Keep leaky functions after the view's quals.")
    security_invoker: bool = Field(
        default=True,
        description="Read the tables as the caller, under their row level security (default). False reads "
        "them as the view's owner, bypassing the policies that the owner is not subject to.",
    )
    owner: str | None = Field(default=None, description="Owning role; None leaves the owner as it is.")


class ViewStatus(Status):
    adopted: bool | None = Field(default=None, description="The view existed before the stack declared it.")


# --- read: the live view, in the spec's shape --------------------------------------------------------

VIEW_QUERY = """
SELECT pg_get_viewdef(c.oid), coalesce(c.reloptions, '{}'), pg_get_userbyid(c.relowner)
FROM pg_class c WHERE c.oid = to_regclass(%s) AND c.relkind = 'v'
"""


@dataclass(frozen=True)
class LiveView:
    definition: str
    options: dict[str, str]
    owner: str

    def flag(self, option: str) -> bool:
        return self.options.get(option, "false").lower() in _TRUE


def read_view(conn: psycopg.Connection, relation: sql.Identifier) -> LiveView | None:
    row = conn.execute(VIEW_QUERY, (relation.as_string(conn),)).fetchone()
    if row is None:
        return None
    definition, options, owner = row
    return LiveView(definition, dict(option.partition("=")[::2] for option in options), owner)


def canonical_definition(conn: psycopg.Connection, spec: ViewSpec) -> str:
    """pg_get_viewdef of the declared query, from a temporary view in a rolled-back transaction."""
    shadow = sql.Identifier("pg_temp", f"shadow_{spec.name}"[:63])
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("CREATE TEMPORARY VIEW {} AS {}").format(shadow, sql.SQL(spec.query)))
            shadow_view = read_view(conn, shadow)
            assert shadow_view is not None
            return shadow_view.definition
    except psycopg.Error as error:
        raise ProviderError(
            f"view {spec.schema_name}.{spec.name}: the query is not valid: {str(error).strip()}"
        ) from error


def observed(conn: psycopg.Connection, spec: ViewSpec) -> Observed[ViewStatus] | None:
    """The live view as a spec: the declared query when the server writes both alike, else the live one."""
    live = read_view(conn, qualified(spec.schema_name, spec.name))
    if live is None:
        return None
    same_query = live.definition == canonical_definition(conn, spec)
    inputs = {
        "schemaName": spec.schema_name,
        "name": spec.name,
        "query": spec.query if same_query else live.definition,
        "securityBarrier": live.flag("security_barrier"),
        "securityInvoker": live.flag("security_invoker"),
        "owner": live.owner if spec.owner is not None else None,
    }
    return Observed(inputs, ViewStatus())


# --- render: the DDL ---------------------------------------------------------------------------------


def create_statement(spec: ViewSpec, *, replace: bool) -> Statement:
    return sql.SQL("CREATE {}VIEW {} WITH (security_barrier = {}, security_invoker = {}) AS {}").format(
        sql.SQL("OR REPLACE " if replace else ""),
        qualified(spec.schema_name, spec.name),
        sql.SQL(str(spec.security_barrier).lower()),
        sql.SQL(str(spec.security_invoker).lower()),
        sql.SQL(spec.query),
    )


def owner_statements(spec: ViewSpec) -> list[Statement]:
    if spec.owner is None:
        return []
    return [
        sql.SQL("ALTER VIEW {} OWNER TO {}").format(qualified(spec.schema_name, spec.name), sql.Identifier(spec.owner))
    ]


def replace_operations(spec: ViewSpec) -> list[Operation]:
    return shared([create_statement(spec, replace=True), *owner_statements(spec)])


def remake_operations(conn: psycopg.Connection, spec: ViewSpec) -> list[Operation]:
    """Dropped (RESTRICT) and made again in one transaction that gives its grants back: for a change of its
    columns, which CREATE OR REPLACE cannot make."""
    relation = qualified(spec.schema_name, spec.name)
    drop = sql.SQL("DROP VIEW {} RESTRICT").format(relation)
    return shared(
        [drop, create_statement(spec, replace=False), *owner_statements(spec), *copied_grants(conn, relation)]
    )


class ViewKind(DatabaseKind[ViewSpec, ViewStatus]):
    token = TOKEN
    spec_type = ViewSpec
    status_type = ViewStatus

    def observe(
        self, resource_id: str, spec: ViewSpec, recorded: ViewStatus | None = None
    ) -> Observed[ViewStatus] | None:
        with connect(self.target) as conn:
            return observed(conn, spec)

    def create(self, spec: ViewSpec) -> tuple[str, ViewStatus]:
        with connect(self.target) as conn:
            existed = read_view(conn, qualified(spec.schema_name, spec.name)) is not None
            self.converge(conn, spec)
        return f"{spec.schema_name}.{spec.name}", ViewStatus(adopted=existed)

    def update(self, resource_id: str, old: dict[str, Any], spec: ViewSpec) -> ViewStatus:
        with connect(self.target) as conn:
            self.converge(conn, spec)
        return ViewStatus()

    def converge(self, conn: psycopg.Connection, spec: ViewSpec) -> None:
        what = f"view {spec.schema_name}.{spec.name}"
        try:
            self.apply(conn, replace_operations(spec), what=what)
        except ProviderError as error:
            if not isinstance(error.__cause__, psycopg.errors.InvalidTableDefinition):
                raise
            apply_drop(conn, remake_operations(conn, spec), self.target.timeouts, what)

    def delete(self, resource_id: str, spec: ViewSpec, recorded: ViewStatus | None = None) -> None:
        drop = sql.SQL("DROP VIEW IF EXISTS {} RESTRICT").format(qualified(spec.schema_name, spec.name))
        with connect(self.target) as conn:
            apply_drop(conn, shared([drop]), self.target.timeouts, f"drop view {spec.schema_name}.{spec.name}")
