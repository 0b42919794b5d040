"""thorbisdb:db:Schema — a schema and its owner.

A schema that existed before the stack (Supabase's `extensions`, a `partman` made for pg_partman) is
adopted: it keeps its owner, and destroy never drops it. An empty one of the declared owner is what a create
of the stack leaves when a kill stops the `up` before the engine records it: the stack's own, not adopted.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind
from components.database.ddl import Operation, shared
from components.database.session import Statement, connect, scalar
from components.kind import Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:Schema"


class SchemaSpec(Spec):
    name: Replace[str] = Field(description="Schema name.")
    owner: str = Field(description="Role that owns the schema.")


class SchemaStatus(Status):
    adopted: bool | None = Field(default=None, description="The schema existed before the stack declared it.")


def owner_statement(spec: SchemaSpec) -> Statement:
    return sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(spec.name), sql.Identifier(spec.owner))


def create_operations(spec: SchemaSpec) -> list[Operation]:
    return shared([sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(spec.name)), owner_statement(spec)])


def drop_operations(spec: SchemaSpec) -> list[Operation]:
    return shared([sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(spec.name))])


def left_by_an_interrupted_create(conn: psycopg.Connection, spec: SchemaSpec, found: dict[str, Any]) -> bool:
    """Of the declared owner and holding nothing: no object of any kind depends on it."""
    if found["owner"] != spec.owner:
        return False
    holding = scalar(
        conn,
        "SELECT count(*) FROM pg_depend WHERE refclassid = 'pg_namespace'::regclass "
        "AND refobjid = (SELECT oid FROM pg_namespace WHERE nspname = %s)",
        (spec.name,),
    )
    return bool(holding == 0)


class SchemaKind(DatabaseKind[SchemaSpec, SchemaStatus]):
    token = TOKEN
    spec_type = SchemaSpec
    status_type = SchemaStatus

    def observe(
        self, resource_id: str, spec: SchemaSpec, recorded: SchemaStatus | None = None
    ) -> Observed[SchemaStatus] | None:
        with connect(self.target) as conn:
            owner = scalar(conn, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", (spec.name,))
        if owner is None:
            return None
        adopted = recorded is not None and recorded.adopted
        return Observed({"owner": spec.owner if adopted else owner.strip('"')}, SchemaStatus())

    def create(self, spec: SchemaSpec) -> tuple[str, SchemaStatus]:
        found = self.observe(spec.name, spec)
        with connect(self.target) as conn:
            if found is None:
                self.apply(conn, create_operations(spec), what=f"schema {spec.name}")
                return spec.name, SchemaStatus(adopted=False)
            return spec.name, SchemaStatus(adopted=not left_by_an_interrupted_create(conn, spec, found.inputs))

    def update(self, resource_id: str, old: dict[str, Any], spec: SchemaSpec) -> SchemaStatus:
        if not self.status_of(old).adopted:  # an adopted schema keeps the owner it had
            with connect(self.target) as conn:
                self.apply(conn, shared([owner_statement(spec)]), what=f"schema {spec.name}")
        return SchemaStatus()

    def delete(self, resource_id: str, spec: SchemaSpec, recorded: SchemaStatus | None = None) -> None:
        if recorded is not None and recorded.adopted:  # it was there before the stack: it stays
            return
        with connect(self.target) as conn:
            objects = scalar(
                conn,
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = %s",
                (spec.name,),
            )
            if objects and not self.target.allow_data_loss:
                raise ProviderError(
                    f"refusing to drop schema {spec.name}: it still holds {objects} relations; "
                    "set thorbis:allowDataLoss true to drop them with it"
                )
            self.apply(conn, drop_operations(spec), what=f"drop schema {spec.name}")
