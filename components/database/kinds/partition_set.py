"""thorbisdb:db:PartitionSet — monthly partitions kept by pg_partman.

A PartitionSet registers a table that is already `PARTITION BY RANGE` (the Table kind makes it so) with
pg_partman 4.x (`create_parent`, native) and keeps its `part_config` row as declared: premake, retention,
and always `infinite_time_partitions` (partitions keep coming when no row arrives) and
`ignore_default_data` (a stray far-future row in the default partition must not make maintenance premake
years of partitions and then fail attaching the one its row belongs to). Deleting it removes only the
`part_config` row: partitions and rows stay.

create_parent makes `<table>_default` itself and fails when it exists, so ours (made by the Table kind)
is detached and set aside, and its rows are put back through the parent once the monthly partitions exist:
they land in their month's partition, or in the new default. (When every premade month exists already,
create_parent returns early without a default: one is made then.) That transaction holds ACCESS EXCLUSIVE
on the table, so the rows are moved out of the default partition before it, a month per transaction, as
pg_partman's partition_data_proc does: the month's partition is made beside the table, the month's rows
moved into it and it is attached. Each such transaction holds ACCESS EXCLUSIVE on the table for one
month's rows (a weaker lock would let a query planned before the attach miss the month's rows); writers
go on between months. Only the rows outside the premade window are left for the registration to move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, default_partition_name, partition_name, qualified
from components.database.conversion import drop_foreign_keys_first, partition_security, referenced_tables
from components.database.ddl import Operation, Work, shared
from components.database.kinds.partition_guard import securing
from components.database.locks import Lock, TableLock
from components.database.session import Statement, connect, scalar
from components.kind import Expect, Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:PartitionSet"
#: pg_partman's word for each interval the schema data allows.
PARTMAN_INTERVALS = {"month": "monthly"}


class PartitionSetSpec(Spec):
    schema_name: Replace[str] = Field(description="Schema of the partitioned table.")
    table: Replace[str] = Field(description="The partitioned table (PARTITION BY RANGE on `control`).")
    control: Replace[str] = Field(description="The partition key column (a timestamptz, timestamp or date).")
    interval: Replace[Literal["month"]] = Field(default="month", description="One partition per month.")
    premake: int = Field(default=4, ge=1, description="Future partitions kept made ahead (and past ones at set-up).")
    retention: str | None = Field(
        default=None, description="Partitions older than this interval are dropped by maintenance; None keeps all."
    )
    retention_keep_table: bool = Field(
        default=False, description="Detach expired partitions instead of dropping them (default: drop)."
    )


class PartitionSetStatus(Status):
    infinite_time_partitions: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="Partitions keep coming when no row arrives (always set by the stack)."
    )
    ignore_default_data: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="A stray row in the default partition does not stall maintenance (always set)."
    )
    partition_interval: str | None = Field(
        default=None, description="pg_partman's interval of the set, as it keeps it."
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
    interval: str
    monthly: bool
    premake: int
    retention: str | None
    retention_matches: bool
    retention_keep_table: bool
    infinite_time_partitions: bool
    ignore_default_data: bool


def read_config(conn: psycopg.Connection, schema: str, spec: PartitionSetSpec) -> LiveConfig | None:
    query = sql.SQL(
        "SELECT control, partition_interval, partition_interval::interval = interval '1 month', premake, retention, "
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


def config_status(live: LiveConfig) -> PartitionSetStatus:
    return PartitionSetStatus(
        infinite_time_partitions=live.infinite_time_partitions,
        ignore_default_data=live.ignore_default_data,
        partition_interval=live.interval,
    )


def observed_config(live: LiveConfig, spec: PartitionSetSpec) -> Observed[PartitionSetStatus]:
    """The live config in the spec's shape: the declared words wherever the server means the same (an
    interval that is not a month has no word in the spec: none, and the status says which it is)."""
    inputs = {
        "schemaName": spec.schema_name,
        "table": spec.table,
        "control": live.control,
        "interval": spec.interval if live.monthly else None,
        "premake": live.premake,
        "retention": spec.retention if live.retention_matches else live.retention,
        "retentionKeepTable": live.retention_keep_table,
    }
    return Observed(inputs, config_status(live))


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


# --- render: registration and configuration ----------------------------------------------------------


def register_statements(conn: psycopg.Connection, schema: str, spec: PartitionSetSpec) -> list[Statement]:
    """create_parent, with our default partition set aside first and its rows put back through the parent."""
    parent = qualified(spec.schema_name, spec.table)
    ours = default_partition(conn, spec.schema_name, spec.table)
    statements: list[Statement] = []
    holding = holding_name(spec)
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
        ]  # the emptied table is dropped after the commit: drop_holding
    return statements


def holding_name(spec: PartitionSetSpec) -> str:
    """Where our default partition waits, detached, while create_parent runs."""
    return f"{spec.table}_default_moving"[:63]


def registration_locks(conn: psycopg.Connection, spec: PartitionSetSpec) -> list[TableLock]:
    """The table, and the tables its foreign keys point at: ATTACH and DETACH PARTITION clone its keys
    onto the partition (SHARE ROW EXCLUSIVE there), which the application writes meanwhile."""
    table = TableLock(spec.schema_name, spec.table, Lock.ACCESS_EXCLUSIVE)
    return [table, *referenced_tables(conn, table, Lock.SHARE_ROW_EXCLUSIVE)]


#: The months create_parent makes (premake before and after this one) that hold rows in our default.
STRAY_MONTHS = """
SELECT DISTINCT date_trunc('month', {column})::timestamptz AS m FROM ONLY {default}
WHERE {column} >= date_trunc('month', now()) - {premake} * interval '1 month'
  AND {column} < date_trunc('month', now()) + ({premake} + 1) * interval '1 month' ORDER BY 1
"""


def month_moves(conn: psycopg.Connection, spec: PartitionSetSpec) -> list[list[Operation]]:
    """For each month create_parent will make that holds rows in our default partition: a transaction that
    makes the month's partition beside the table (pg_partman's name: create_parent then skips it), moves the
    month's rows into it and attaches it. Older rows stay in the default partition, as pg_partman leaves
    them (a partition made for them would fall to retention)."""
    ours = default_partition(conn, spec.schema_name, spec.table)
    if ours is None:
        return []
    parent, default = qualified(spec.schema_name, spec.table), qualified(spec.schema_name, ours)
    column = sql.Identifier(spec.control)
    months = conn.execute(
        sql.SQL(STRAY_MONTHS).format(column=column, default=default, premake=sql.Literal(spec.premake))
    ).fetchall()
    owner = sql.Identifier(str(scalar(conn, "SELECT relowner::regrole::text FROM pg_class WHERE oid = %s::regclass",
                                      (parent.as_string(conn),))).strip('"'))  # fmt: skip
    # ATTACH needs only SHARE UPDATE EXCLUSIVE on the table, but a query planned before the commit would then
    # read the default partition without the month's rows and not the new partition: ACCESS EXCLUSIVE keeps
    # every row visible to every reader (held for one month's rows, and bounded by statement_timeout)
    locks = (*registration_locks(conn, spec), TableLock(spec.schema_name, ours, Lock.ACCESS_EXCLUSIVE))
    moves: list[list[Operation]] = []
    for (start,) in months:
        name = partition_name(spec.table, start.strftime("%Y_%m"))
        part = qualified(spec.schema_name, name)
        bound = sql.Identifier(f"{name}_bound"[:63])
        in_month = sql.SQL("{c} >= {s} AND {c} < {s}::timestamptz + interval '1 month'").format(
            c=column, s=sql.Literal(start)
        )
        statements: list[Statement] = [
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(part, parent),
            sql.SQL(
                "WITH moved AS (DELETE FROM ONLY {} WHERE {} RETURNING *) INSERT INTO {} SELECT * FROM moved"
            ).format(default, in_month, part),
            # the bound lets the attach skip scanning the new partition (the default partition it scans)
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(part, bound, in_month),
            sql.SQL(
                "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({}::timestamptz + interval '1 month')"
            ).format(parent, part, sql.Literal(start), sql.Literal(start)),
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(part, bound),
            partition_security(part, owner),
        ]
        works = [Work.CATALOG, Work.MOVE, *[Work.CATALOG] * (len(statements) - 2)]
        moves.append(
            [Operation(statement, locks=locks, work=work) for statement, work in zip(statements, works, strict=True)]
        )
    return moves


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


def forget_operations(conn: psycopg.Connection, schema: str, spec: PartitionSetSpec) -> list[Operation]:
    """The set's part_config row, and pg_partman's own template table when it holds no row."""
    config = qualified(schema, "part_config")
    template = scalar(
        conn, sql.SQL("SELECT template_table FROM {} WHERE parent_table = %s").format(config), (parent_name(spec),)
    )
    statements: list[Statement] = [
        sql.SQL("DELETE FROM {} WHERE parent_table = {}").format(config, sql.Literal(parent_name(spec)))
    ]
    template_schema, _, template_table = str(template or "").partition(".")
    if template_schema == schema and template_table:  # partman's own empty template: no data in it
        template_relation = qualified(template_schema, template_table)
        if not scalar(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(template_relation)):
            statements.append(sql.SQL("DROP TABLE IF EXISTS {}").format(template_relation))
    return shared(statements)


class PartitionSetKind(DatabaseKind[PartitionSetSpec, PartitionSetStatus]):
    token = TOKEN
    spec_type = PartitionSetSpec
    status_type = PartitionSetStatus

    def observe(
        self, resource_id: str, spec: PartitionSetSpec, recorded: PartitionSetStatus | None = None
    ) -> Observed[PartitionSetStatus] | None:
        with connect(self.target) as conn:
            live = read_config(conn, partman_schema(conn), spec)
        return None if live is None else observed_config(live, spec)

    def preview_status(self, spec: PartitionSetSpec) -> PartitionSetStatus:
        return PartitionSetStatus(infinite_time_partitions=True, ignore_default_data=True)

    def create(self, spec: PartitionSetSpec) -> tuple[str, PartitionSetStatus]:
        return parent_name(spec), self.converge(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: PartitionSetSpec) -> PartitionSetStatus:
        return self.converge(spec)

    def converge(self, spec: PartitionSetSpec) -> PartitionSetStatus:
        what = f"partition set {parent_name(spec)}"
        with connect(self.target) as conn:
            schema = partman_schema(conn)
            ensure_range_partitioned(conn, spec)
            check_retention(conn, spec)
            registered = read_config(conn, schema, spec) is not None
            if not registered:
                for month in month_moves(conn, spec):
                    self.apply(conn, month, what=f"{what}: rows of the default partition")
            statements = [] if registered else register_statements(conn, schema, spec)
            locks = registration_locks(conn, spec) if statements else []
            self.apply(conn, shared([*statements, config_statement(schema, spec)], *locks), what=what)
            self.drop_holding(conn, spec, what)
            # the partitions create_parent made (and its new default): forced RLS, the owner, no privileges
            self.apply(conn, shared([securing([parent_name(spec)], True)]), what=f"{what}: secure partitions")
            live = read_config(conn, schema, spec)
        assert live is not None
        return config_status(live)

    def drop_holding(self, conn: psycopg.Connection, spec: PartitionSetSpec, what: str) -> None:
        """The default partition our registration emptied (left by an interrupted run too), its keys first."""
        holding = TableLock(spec.schema_name, holding_name(spec), Lock.ACCESS_EXCLUSIVE)
        if not scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (holding.relation.as_string(conn),)):
            return
        if scalar(conn, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(holding.relation)):
            raise ProviderError(f"{what}: {holding.name} still holds rows; move them into {spec.table} first")
        drop_foreign_keys_first(conn, holding, [], self.target.timeouts, f"{what}: drop {holding.name}")

    def delete(self, resource_id: str, spec: PartitionSetSpec, recorded: PartitionSetStatus | None = None) -> None:
        """Forget the set in pg_partman; every partition and row stays (and the Table still owns them)."""
        with connect(self.target) as conn:
            operations = forget_operations(conn, partman_schema(conn), spec)
            self.apply(conn, operations, what=f"forget partition set {parent_name(spec)}")
