"""thorbisdb:db:PartitionGuard — every new partition gets forced row level security and its parent's owner.

The PartitionGuard is an event trigger (`ddl_command_end`, CREATE/ALTER TABLE) in our `app` schema that
gives every new partition of a table in a watched schema row level security, enabled and forced, with no
policy, and its parent's owner: a partition read directly then shows nothing. It is an event trigger and
not pg_partman's template table because 4.x copies only indexes, storage options and UNLOGGED from the
template (inherit_template_properties), never RLS or the owner; and because it covers every way a partition
appears (partman's maintenance and partition_data_proc, a hand-made `PARTITION OF`, an ATTACH, our online
conversion). It runs as the role that made the partition, which is enough: only the owner of the parent
can create or attach a partition, and that role may enable RLS on its new table and give it to the parent's
owner. A failure fails the DDL, so a partition without RLS is never committed.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, qualified
from components.database.ddl import Operation, shared
from components.database.session import Statement, connect
from components.kind import Expect, Observed, Replace, Spec, Status

TOKEN = "thorbisdb:db:PartitionGuard"


def unsecured_partitions(conn: psycopg.Connection, schemas: list[str]) -> list[tuple[str, str, str]]:
    """(schema, partition, parent owner) of partitions in `schemas` without forced RLS or their parent's owner."""
    return [
        (row[0], row[1], row[2])
        for row in conn.execute(
            "SELECT n.nspname, c.relname, pg_get_userbyid(p.relowner) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_namespace pn ON pn.oid = p.relnamespace "
            "WHERE p.relkind = 'p' AND pn.nspname = ANY(%s) "
            "AND NOT (c.relrowsecurity AND c.relforcerowsecurity AND c.relowner = p.relowner) ORDER BY 1, 2",
            (schemas,),
        )
    ]


def secure_statements(unsecured: list[tuple[str, str, str]]) -> list[Statement]:
    return [
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY, OWNER TO {}").format(
            qualified(schema, name), sql.Identifier(owner)
        )
        for schema, name, owner in unsecured
    ]


class PartitionGuardSpec(Spec):
    schema_name: str = Field(default="app", description="Schema of the event trigger's function (ours, never `auth`).")
    function_name: str = Field(default="secure_new_partitions", description="Name of the event trigger function.")
    name: Replace[str] = Field(default="thorbis_secure_new_partitions", description="Name of the event trigger.")
    watched_schemas: list[str] = Field(
        default_factory=lambda: ["public"], description="Partitions of tables in these schemas are secured."
    )


class PartitionGuardStatus(Status):
    enabled: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="The event trigger fires at ddl_command_end (false: disabled or changed by hand)."
    )
    current: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="Its function is the stack's (false: replaced by hand)."
    )
    unsecured_partitions: Annotated[int | None, Expect(0)] = Field(
        default=None, description="Partitions in the watched schemas without forced RLS or their parent's owner."
    )


SECURED = PartitionGuardStatus(enabled=True, current=True, unsecured_partitions=0)
GUARD_BODY = """
DECLARE
  command record;
  part record;
BEGIN
  FOR command IN
    SELECT objid FROM pg_catalog.pg_event_trigger_ddl_commands() WHERE object_type = 'table'
  LOOP
    -- the command's table may be the new partition (CREATE TABLE ... PARTITION OF) or its parent (ATTACH)
    FOR part IN
      SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(p.relowner) AS parent_owner
      FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
      JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
      WHERE (i.inhrelid = command.objid OR i.inhparent = command.objid)
        AND p.relkind = 'p' AND pn.nspname = ANY ({watched})
        AND NOT (c.relrowsecurity AND c.relforcerowsecurity AND c.relowner = p.relowner)
    LOOP
      EXECUTE pg_catalog.format(
        'ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY, OWNER TO %I',
        part.nspname, part.relname, part.parent_owner);
    END LOOP;
  END LOOP;
END
"""


def guard_body(conn: psycopg.Connection, spec: PartitionGuardSpec) -> str:
    watched = sql.SQL("ARRAY[{}]::name[]").format(sql.SQL(", ").join(sql.Literal(s) for s in spec.watched_schemas))
    return GUARD_BODY.replace("{watched}", watched.as_string(conn))


def guard_operations(conn: psycopg.Connection, spec: PartitionGuardSpec) -> list[Operation]:
    function = qualified(spec.schema_name, spec.function_name)
    return shared(
        [
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS event_trigger LANGUAGE plpgsql SET search_path = '' AS {}"
            ).format(function, sql.Literal(guard_body(conn, spec))),
            sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(function),
            sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(spec.name)),
            sql.SQL(
                "CREATE EVENT TRIGGER {} ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE') "
                "EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(spec.name), function),
        ]
    )


def read_guard(conn: psycopg.Connection, spec: PartitionGuardSpec) -> Observed[PartitionGuardStatus] | None:
    row = conn.execute(
        "SELECT e.evtenabled <> 'D', e.evtevent = 'ddl_command_end', p.prosrc, "
        "e.evtfoid = to_regprocedure(%s) FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid "
        "WHERE e.evtname = %s",
        (qualified(spec.schema_name, spec.function_name).as_string(conn) + "()", spec.name),
    ).fetchone()
    if row is None:
        return None
    enabled, on_end, source, same_function = row
    status = PartitionGuardStatus(
        enabled=bool(enabled and on_end),
        current=bool(same_function and source == guard_body(conn, spec)),
        unsecured_partitions=len(unsecured_partitions(conn, spec.watched_schemas)),
    )
    return Observed(spec.model_dump(by_alias=True), status)


class PartitionGuardKind(DatabaseKind[PartitionGuardSpec, PartitionGuardStatus]):
    token = TOKEN
    spec_type = PartitionGuardSpec
    status_type = PartitionGuardStatus

    def observe(self, resource_id: str, spec: PartitionGuardSpec) -> Observed[PartitionGuardStatus] | None:
        with connect(self.target) as conn:
            return read_guard(conn, spec)

    def preview_status(self, spec: PartitionGuardSpec) -> PartitionGuardStatus:
        return SECURED

    def create(self, spec: PartitionGuardSpec) -> tuple[str, PartitionGuardStatus]:
        return spec.name, self.converge(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: PartitionGuardSpec) -> PartitionGuardStatus:
        return self.converge(spec)

    def converge(self, spec: PartitionGuardSpec) -> PartitionGuardStatus:
        with connect(self.target) as conn:
            self.apply(conn, guard_operations(conn, spec), what=f"event trigger {spec.name}")
            # partitions made before the guard existed are secured once, here
            unsecured = unsecured_partitions(conn, spec.watched_schemas)
            self.apply(conn, shared(secure_statements(unsecured)), what="secure partitions")
            return SECURED

    def delete(self, resource_id: str, spec: PartitionGuardSpec) -> None:
        drop = [
            sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(spec.name)),
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(qualified(spec.schema_name, spec.function_name)),
        ]
        with connect(self.target) as conn:
            self.apply(conn, shared(drop), what=f"drop event trigger {spec.name}")
