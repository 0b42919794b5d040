"""thorbisdb:db:PartitionGuard — every partition of the stack's partitioned tables is secured.

A partition read directly skips its parent's policies, so each one gets row level security enabled and
forced with no policy, its parent's owner, and no privilege of its own (access goes through the parent):
`app.secure_partitions(tables, apply)`, a function declared in sql/access.yaml, says which partitions are
not so and, with `apply`, secures them. It runs as whoever calls it: the maintenance job after pg_partman
made next months' partitions (sql/maintenance.yaml's maintain_partitions, as the admin that scheduled it),
a PartitionSet after create_parent, and this resource at every `up`, which also reports any partition that
is not secured (a hand-made `PARTITION OF`) as drift. New partitions hold no row before their month comes.

No event trigger: creating one takes a superuser, which the stack's role is not on Supabase, and one
would fire for every table of the database, not only the stack's. An event trigger made by older stacks
(the `name` below) is dropped.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, qualified
from components.database.ddl import shared
from components.database.session import connect, scalar
from components.kind import Expect, Observed, Replace, Spec, Status

TOKEN = "thorbisdb:db:PartitionGuard"


class PartitionGuardSpec(Spec):
    schema_name: str = Field(default="app", description="Schema of the securing function (ours, never `auth`).")
    function_name: str = Field(default="secure_partitions", description="The securing function (sql/access.yaml).")
    tables: list[str] = Field(default_factory=list, description="The partitioned tables, schema-qualified.")
    name: Replace[str] = Field(
        default="thorbis_secure_new_partitions", description="The event trigger older stacks made: dropped."
    )


class PartitionGuardStatus(Status):
    unsecured_partitions: Annotated[int | None, Expect(0)] = Field(
        default=None,
        description="Partitions of the tables without forced RLS, with another owner than their parent's, or "
        "with privileges of their own.",
    )


def securing(tables: list[str], apply: bool, spec: PartitionGuardSpec | None = None) -> sql.Composed:
    """The call that lists the partitions of `tables` that are not secured (and secures them, with `apply`);
    tables that do not exist are skipped."""
    spec = spec or PartitionGuardSpec()
    return sql.SQL("SELECT * FROM {}({}::text[], {})").format(
        qualified(spec.schema_name, spec.function_name), sql.Literal(tables), sql.Literal(apply)
    )


def unsecured(conn: psycopg.Connection, spec: PartitionGuardSpec) -> list[str]:
    return [row[0] for row in conn.execute(securing(spec.tables, False, spec))]


def legacy_trigger_drops(spec: PartitionGuardSpec) -> list[sql.Composed]:
    """The event trigger and its function that stacks before this resource's rework made."""
    return [
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(spec.name)),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(qualified(spec.schema_name, "secure_new_partitions")),
    ]


class PartitionGuardKind(DatabaseKind[PartitionGuardSpec, PartitionGuardStatus]):
    token = TOKEN
    spec_type = PartitionGuardSpec
    status_type = PartitionGuardStatus

    def observe(
        self, resource_id: str, spec: PartitionGuardSpec, recorded: PartitionGuardStatus | None = None
    ) -> Observed[PartitionGuardStatus] | None:
        with connect(self.target) as conn:
            function = qualified(spec.schema_name, spec.function_name).as_string(conn)
            if not scalar(conn, "SELECT to_regproc(%s) IS NOT NULL", (function,)):
                return None
            found = unsecured(conn, spec)
        return Observed(spec.model_dump(by_alias=True), PartitionGuardStatus(unsecured_partitions=len(found)))

    def preview_status(self, spec: PartitionGuardSpec) -> PartitionGuardStatus:
        return PartitionGuardStatus(unsecured_partitions=0)

    def create(self, spec: PartitionGuardSpec) -> tuple[str, PartitionGuardStatus]:
        return spec.name, self.converge(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: PartitionGuardSpec) -> PartitionGuardStatus:
        return self.converge(spec)

    def converge(self, spec: PartitionGuardSpec) -> PartitionGuardStatus:
        with connect(self.target) as conn:
            self.apply(conn, shared(legacy_trigger_drops(spec)), what=f"drop event trigger {spec.name}")
            self.apply(conn, shared([securing(spec.tables, True, spec)]), what="secure partitions")
            left = unsecured(conn, spec)
        return PartitionGuardStatus(unsecured_partitions=len(left))

    def delete(self, resource_id: str, spec: PartitionGuardSpec, recorded: PartitionGuardStatus | None = None) -> None:
        """Partitions stay secured; only an older stack's event trigger goes."""
        with connect(self.target) as conn:
            self.apply(conn, shared(legacy_trigger_drops(spec)), what=f"drop event trigger {spec.name}")
