"""thorbisdb:db:PartitionSet and thorbisdb:db:PartitionGuard — monthly partitions kept by pg_partman.

A PartitionSet registers a table that is already `PARTITION BY RANGE` (the Table kind makes it so) with
pg_partman 4.x (`create_parent`, native) and keeps its `part_config` row as declared: premake, retention,
and always `infinite_time_partitions` (partitions keep coming when no row arrives) and
`ignore_default_data` (a stray far-future row in the default partition must not make maintenance premake
years of partitions and then fail attaching the one its row belongs to). Deleting it removes only the
`part_config` row: partitions and rows stay.

create_parent makes `<table>_default` itself and fails when it exists, so ours (made by the Table kind)
is detached and set aside, and its rows are put back through the parent once the monthly partitions exist,
all in one transaction: they land in their month's partition, or in the new default. (When every premade
month exists already, create_parent returns early without a default: one is made then.)

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

from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import pulumi
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, default_partition_name, qualified
from components.database.session import Statement, connect, run_ddl, scalar
from components.kind import ProviderError, Spec
from components.resource import declared_outputs, provider_inputs

TOKEN = "thorbisdb:db:PartitionSet"
GUARD_TOKEN = "thorbisdb:db:PartitionGuard"
#: pg_partman's word for each interval the schema data allows.
PARTMAN_INTERVALS = {"month": "monthly"}


class PartitionSetSpec(Spec):
    schema_name: str = Field(description="Schema of the partitioned table.")
    table: str = Field(description="The partitioned table (PARTITION BY RANGE on `control`).")
    control: str = Field(description="The partition key column (a timestamptz, timestamp or date).")
    interval: Literal["month"] = Field(default="month", description="One partition per month.")
    premake: int = Field(default=4, ge=1, description="Future partitions kept made ahead (and past ones at set-up).")
    retention: str | None = Field(
        default=None, description="Partitions older than this interval are dropped by maintenance; None keeps all."
    )
    retention_keep_table: bool = Field(
        default=False, description="Detach expired partitions instead of dropping them (default: drop)."
    )


# --- read: pg_partman's configuration of the table ---------------------------------------------------


def partman_schema(conn: psycopg.Connection) -> str:
    schema = scalar(
        conn,
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_partman'",
    )
    if schema is None:
        raise ProviderError(
            "extension pg_partman is not installed in this database: declare it (schema `partman`) in "
            "sql/access.yaml so the Extension resource makes it before any PartitionSet, then run `pulumi up`"
        )
    return str(schema)


def parent_name(spec: PartitionSetSpec) -> str:
    """How pg_partman names the parent in part_config (schema.table, unquoted; it refuses dots)."""
    return f"{spec.schema_name}.{spec.table}"


@dataclass(frozen=True)
class LiveConfig:
    control: str
    monthly: bool
    premake: int
    retention: str | None
    retention_matches: bool
    retention_keep_table: bool
    infinite_time_partitions: bool
    ignore_default_data: bool


def read_config(conn: psycopg.Connection, schema: str, spec: PartitionSetSpec) -> LiveConfig | None:
    query = sql.SQL(
        "SELECT control, partition_interval::interval = interval '1 month', premake, retention, "
        "(retention IS NULL AND {wanted}::text IS NULL) OR retention::interval = {wanted}::interval, "
        "retention_keep_table, infinite_time_partitions, ignore_default_data "
        "FROM {config} WHERE parent_table = {parent}"
    ).format(
        wanted=sql.Literal(spec.retention),
        config=qualified(schema, "part_config"),
        parent=sql.Literal(parent_name(spec)),
    )
    row = conn.execute(query).fetchone()
    return None if row is None else LiveConfig(*row)


def observed_config(live: LiveConfig, spec: PartitionSetSpec) -> dict[str, Any]:
    """The live config in the spec's shape: the declared words wherever the server means the same."""
    return {
        "schemaName": spec.schema_name,
        "table": spec.table,
        "control": live.control,
        "interval": spec.interval if live.monthly else "<not monthly>",
        "premake": live.premake,
        "retention": spec.retention if live.retention_matches else live.retention,
        "retentionKeepTable": live.retention_keep_table,
        "infiniteTimePartitions": live.infinite_time_partitions,
        "ignoreDefaultData": live.ignore_default_data,
    }


def ensure_range_partitioned(conn: psycopg.Connection, spec: PartitionSetSpec) -> None:
    relation = qualified(spec.schema_name, spec.table).as_string(conn)
    row = conn.execute(
        "SELECT p.partstrat, ARRAY(SELECT attname FROM pg_attribute a WHERE a.attrelid = p.partrelid "
        "AND a.attnum = ANY(p.partattrs)) FROM pg_partitioned_table p WHERE p.partrelid = to_regclass(%s)",
        (relation,),
    ).fetchone()
    if row is None or row[0] != "r" or list(row[1]) != [spec.control]:
        raise ProviderError(
            f"partition set {parent_name(spec)}: the table is not PARTITION BY RANGE ({spec.control}); declare "
            "`partition` on it in sql/schema (a populated plain table is converted online by the Table resource)"
        )


def default_partition(conn: psycopg.Connection, schema: str, table: str) -> str | None:
    found = scalar(
        conn,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s) AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
        (qualified(schema, table).as_string(conn),),
    )
    return None if found is None else str(found)


def column_names(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (qualified(schema, table).as_string(conn),),
        )
    ]


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


# --- render: registration and configuration ----------------------------------------------------------


def register_statements(conn: psycopg.Connection, schema: str, spec: PartitionSetSpec) -> list[Statement]:
    """create_parent, with our default partition set aside first and its rows put back through the parent."""
    parent = qualified(spec.schema_name, spec.table)
    ours = default_partition(conn, spec.schema_name, spec.table)
    statements: list[Statement] = []
    holding = f"{spec.table}_default_moving"[:63]
    if ours is not None:
        statements += [
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, qualified(spec.schema_name, ours)),
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(qualified(spec.schema_name, ours), sql.Identifier(holding)),
        ]
    statements.append(
        sql.SQL(
            "SELECT {}.create_parent(p_parent_table := {}, p_control := {}, p_type := 'native', "
            "p_interval := {}, p_premake := {})"
        ).format(
            sql.Identifier(schema),
            sql.Literal(parent_name(spec)),
            sql.Literal(spec.control),
            sql.Literal(PARTMAN_INTERVALS[spec.interval]),
            sql.Literal(spec.premake),
        )
    )
    # create_parent returns before making its default when every premade month exists already
    default = qualified(spec.schema_name, default_partition_name(spec.table))
    statements.append(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT").format(default, parent))
    if ours is not None:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in column_names(conn, spec.schema_name, spec.table))
        statements += [
            # detached, it may lose RLS: with RLS forced and no policy a non-superuser owner would move nothing
            sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY").format(
                qualified(spec.schema_name, holding)
            ),
            # the rows go back through the parent: into their month's partition, or into partman's default
            sql.SQL("WITH moved AS (DELETE FROM {} RETURNING *) INSERT INTO {} ({}) SELECT {} FROM moved").format(
                qualified(spec.schema_name, holding), parent, columns, columns
            ),
            sql.SQL("DROP TABLE {}").format(qualified(spec.schema_name, holding)),
        ]
    return statements


def config_statement(schema: str, spec: PartitionSetSpec) -> Statement:
    return sql.SQL(
        "UPDATE {} SET premake = {}, retention = {}, retention_keep_table = {}, "
        "infinite_time_partitions = true, ignore_default_data = true WHERE parent_table = {}"
    ).format(
        qualified(schema, "part_config"),
        sql.Literal(spec.premake),
        sql.Literal(spec.retention),
        sql.Literal(spec.retention_keep_table),
        sql.Literal(parent_name(spec)),
    )


def check_retention(conn: psycopg.Connection, spec: PartitionSetSpec) -> None:
    if spec.retention is None:
        return
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SELECT {}::interval").format(sql.Literal(spec.retention)))
    except psycopg.Error as error:
        raise ProviderError(
            f"partition set {parent_name(spec)}: retention {spec.retention!r} is not an interval "
            "(write e.g. '24 months'), or null to keep every partition"
        ) from error


class PartitionSetKind(DatabaseKind[PartitionSetSpec]):
    token = TOKEN
    spec_type = PartitionSetSpec
    replace_on = frozenset({"schemaName", "table", "control", "interval"})

    def observe(self, resource_id: str, spec: PartitionSetSpec) -> dict[str, Any] | None:
        with connect(self.target) as conn:
            live = read_config(conn, partman_schema(conn), spec)
        return None if live is None else observed_config(live, spec)

    def drifted(self, old_state: dict[str, Any], spec: PartitionSetSpec) -> list[str]:
        return [key for key in ("infiniteTimePartitions", "ignoreDefaultData") if not old_state.get(key, True)]

    def preview_outputs(self, spec: PartitionSetSpec) -> dict[str, Any]:
        return {"infiniteTimePartitions": True, "ignoreDefaultData": True}

    def create(self, spec: PartitionSetSpec) -> tuple[str, dict[str, Any]]:
        return parent_name(spec), self.converge(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: PartitionSetSpec) -> dict[str, Any]:
        return self.converge(spec)

    def converge(self, spec: PartitionSetSpec) -> dict[str, Any]:
        what = f"partition set {parent_name(spec)}"
        with connect(self.target) as conn:
            schema = partman_schema(conn)
            ensure_range_partitioned(conn, spec)
            check_retention(conn, spec)
            statements = [] if read_config(conn, schema, spec) else register_statements(conn, schema, spec)
            run_ddl(conn, [*statements, config_statement(schema, spec)], self.target.lock_timeout, what=what)
            # the partitions create_parent made (and its new default) get RLS and the owner even before the guard
            run_ddl(conn, secure_statements(unsecured_partitions(conn, [spec.schema_name])), self.target.lock_timeout)
            live = read_config(conn, schema, spec)
        assert live is not None
        return {"infiniteTimePartitions": live.infinite_time_partitions, "ignoreDefaultData": live.ignore_default_data}

    def delete(self, resource_id: str, spec: PartitionSetSpec) -> None:
        """Forget the set in pg_partman; every partition and row stays (and the Table still owns them)."""
        with connect(self.target) as conn:
            schema = partman_schema(conn)
            template = scalar(
                conn,
                sql.SQL("SELECT template_table FROM {} WHERE parent_table = %s").format(
                    qualified(schema, "part_config")
                ),
                (parent_name(spec),),
            )
            statements: list[Statement] = [
                sql.SQL("DELETE FROM {} WHERE parent_table = {}").format(
                    qualified(schema, "part_config"), sql.Literal(parent_name(spec))
                )
            ]
            template_schema, _, template_table = str(template or "").partition(".")
            if template_schema == schema and template_table:  # partman's own empty template: no data in it
                template_relation = qualified(template_schema, template_table)
                if not scalar(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(template_relation)):
                    statements.append(sql.SQL("DROP TABLE IF EXISTS {}").format(template_relation))
            run_ddl(conn, statements, self.target.lock_timeout, what=f"forget partition set {parent_name(spec)}")


@dataclass
class PartitionSetArgs:
    schema_name: pulumi.Input[str]
    table: pulumi.Input[str]
    control: pulumi.Input[str]
    interval: pulumi.Input[str] = "month"
    premake: pulumi.Input[int] = 4
    retention: pulumi.Input[str] | None = None
    retention_keep_table: pulumi.Input[bool] = False


class PartitionSet(pulumi.CustomResource):
    infinite_time_partitions: pulumi.Output[bool]
    ignore_default_data: pulumi.Output[bool]

    def __init__(self, name: str, args: PartitionSetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            TOKEN,
            name,
            {**provider_inputs(args), **declared_outputs("infiniteTimePartitions", "ignoreDefaultData")},
            opts,
        )


# --- the guard: every new partition gets forced RLS and its parent's owner ---------------------------


class PartitionGuardSpec(Spec):
    schema_name: str = Field(default="app", description="Schema of the event trigger's function (ours, never `auth`).")
    function_name: str = Field(default="secure_new_partitions", description="Name of the event trigger function.")
    name: str = Field(default="thorbis_secure_new_partitions", description="Name of the event trigger.")
    watched_schemas: list[str] = Field(
        default_factory=lambda: ["public"], description="Partitions of tables in these schemas are secured."
    )


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


def guard_statements(conn: psycopg.Connection, spec: PartitionGuardSpec) -> list[Statement]:
    function = qualified(spec.schema_name, spec.function_name)
    return [
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


def read_guard(conn: psycopg.Connection, spec: PartitionGuardSpec) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT e.evtenabled <> 'D', e.evtevent = 'ddl_command_end', p.prosrc, "
        "e.evtfoid = to_regprocedure(%s) FROM pg_event_trigger e JOIN pg_proc p ON p.oid = e.evtfoid "
        "WHERE e.evtname = %s",
        (qualified(spec.schema_name, spec.function_name).as_string(conn) + "()", spec.name),
    ).fetchone()
    if row is None:
        return None
    enabled, on_end, source, same_function = row
    return {
        **spec.model_dump(by_alias=True),
        "enabled": bool(enabled and on_end),
        "current": bool(same_function and source == guard_body(conn, spec)),
        "unsecuredPartitions": len(unsecured_partitions(conn, spec.watched_schemas)),
    }


class PartitionGuardKind(DatabaseKind[PartitionGuardSpec]):
    token = GUARD_TOKEN
    spec_type = PartitionGuardSpec
    replace_on = frozenset({"name"})

    def observe(self, resource_id: str, spec: PartitionGuardSpec) -> dict[str, Any] | None:
        with connect(self.target) as conn:
            return read_guard(conn, spec)

    def drifted(self, old_state: dict[str, Any], spec: PartitionGuardSpec) -> list[str]:
        drift = [key for key in ("enabled", "current") if not old_state.get(key, True)]
        return drift + (["unsecuredPartitions"] if old_state.get("unsecuredPartitions", 0) else [])

    def preview_outputs(self, spec: PartitionGuardSpec) -> dict[str, Any]:
        return {"enabled": True, "current": True, "unsecuredPartitions": 0}

    def create(self, spec: PartitionGuardSpec) -> tuple[str, dict[str, Any]]:
        return spec.name, self.converge(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: PartitionGuardSpec) -> dict[str, Any]:
        return self.converge(spec)

    def converge(self, spec: PartitionGuardSpec) -> dict[str, Any]:
        with connect(self.target) as conn:
            run_ddl(conn, guard_statements(conn, spec), self.target.lock_timeout, what=f"event trigger {spec.name}")
            # partitions made before the guard existed are secured once, here
            unsecured = unsecured_partitions(conn, spec.watched_schemas)
            run_ddl(conn, secure_statements(unsecured), self.target.lock_timeout, what="secure partitions")
            return {"enabled": True, "current": True, "unsecuredPartitions": 0}

    def delete(self, resource_id: str, spec: PartitionGuardSpec) -> None:
        with connect(self.target) as conn:
            run_ddl(
                conn,
                [
                    sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(spec.name)),
                    sql.SQL("DROP FUNCTION IF EXISTS {}()").format(qualified(spec.schema_name, spec.function_name)),
                ],
                self.target.lock_timeout,
                what=f"drop event trigger {spec.name}",
            )


@dataclass
class PartitionGuardArgs:
    schema_name: pulumi.Input[str] = "app"
    function_name: pulumi.Input[str] = "secure_new_partitions"
    name: pulumi.Input[str] = "thorbis_secure_new_partitions"
    watched_schemas: pulumi.Input[list[str]] = field(default_factory=lambda: ["public"])


class PartitionGuard(pulumi.CustomResource):
    enabled: pulumi.Output[bool]
    current: pulumi.Output[bool]
    unsecured_partitions: pulumi.Output[int]

    def __init__(self, name: str, args: PartitionGuardArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            GUARD_TOKEN,
            name,
            {**provider_inputs(args), **declared_outputs("enabled", "current", "unsecuredPartitions")},
            opts,
        )
