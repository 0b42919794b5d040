"""thorbisdb:db:Table — a table: columns, keys, checks, foreign keys, row level security (enabled and forced).

Read the catalog into the spec's shape, compare, and close the gap with the smallest safe DDL:
an existing table is adopted, never recreated; missing columns are added; constraints are added
NOT VALID and then validated (no long lock for a full scan); NOT NULL goes through a validated CHECK.
Dropping a column or a table, or changing a column's type, loses data: refused unless allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
import pulumi
from psycopg import sql
from pydantic import Field

from components import engine_log
from components.database.base import DatabaseKind, qualified
from components.database.session import Statement, connect, run_ddl, scalar
from components.kind import ProviderError, Spec
from components.resource import declared_outputs, provider_inputs

TOKEN = "thorbisdb:db:Table"
OnDelete = Literal["cascade", "restrict", "set null", "no action"]
_DELETE_RULES = {"c": "cascade", "r": "restrict", "n": "set null", "a": "no action", "d": "set default"}


class ColumnSpec(Spec):
    name: str
    type: str
    nullable: bool = True
    default: str | None = None


class UniqueSpec(Spec):
    name: str
    columns: list[str]


class CheckSpec(Spec):
    name: str
    expression: str


class ForeignKeySpec(Spec):
    name: str
    columns: list[str]
    ref_schema: str
    ref_table: str
    ref_columns: list[str]
    on_delete: OnDelete = "no action"
    set_null: list[str] = Field(
        default_factory=list, description="With on_delete `set null`: the columns it nulls (default: all)."
    )


class PartitionSpec(Spec):
    column: str
    interval: str = "month"


class TableSpec(Spec):
    schema_name: str = Field(description="Schema of the table.")
    name: str = Field(description="Table name.")
    owner: str | None = Field(default=None, description="Owning role (NOLOGIN owner of all objects).")
    columns: list[ColumnSpec]
    primary_key: list[str]
    uniques: list[UniqueSpec] = Field(default_factory=list)
    checks: list[CheckSpec] = Field(default_factory=list)
    foreign_keys: list[ForeignKeySpec] = Field(default_factory=list)
    partition: PartitionSpec | None = None
    comment: str | None = None


# --- read: the live table, in the spec's shape -------------------------------------------------------

COLUMNS_QUERY = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
CONSTRAINTS_QUERY = """
SELECT c.conname, c.contype, c.convalidated, pg_get_constraintdef(c.oid),
       ARRAY(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.n ORDER BY k.i),
       fn.nspname, ft.relname,
       ARRAY(SELECT attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute ON attrelid = c.confrelid AND attnum = k.n ORDER BY k.i),
       c.confdeltype,
       ARRAY(SELECT attname FROM unnest(c.confdelsetcols) WITH ORDINALITY k(n, i)
             JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.n ORDER BY k.i)
FROM pg_constraint c
LEFT JOIN pg_class ft ON ft.oid = c.confrelid LEFT JOIN pg_namespace fn ON fn.oid = ft.relnamespace
WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u', 'c', 'f') ORDER BY c.conname
"""


@dataclass
class LiveTable:
    columns: dict[str, ColumnSpec]
    primary_key: list[str]
    uniques: dict[str, UniqueSpec]
    checks: dict[str, str]  # name -> pg_get_constraintdef
    foreign_keys: dict[str, ForeignKeySpec]
    not_validated: list[str]
    rls_enabled: bool
    rls_forced: bool
    owner: str
    partitioned: bool


def read_table(conn: psycopg.Connection, schema: str, name: str) -> LiveTable | None:
    relation = sql.Identifier(schema, name).as_string(conn)
    row = conn.execute(
        "SELECT c.relrowsecurity, c.relforcerowsecurity, c.relowner::regrole::text, c.relkind = 'p' "
        "FROM pg_class c WHERE c.oid = to_regclass(%s)",
        (relation,),
    ).fetchone()
    if row is None:
        return None
    columns = {
        col: ColumnSpec(name=col, type=typ, nullable=nullable, default=default)
        for col, typ, nullable, default in conn.execute(COLUMNS_QUERY, (relation,))
    }
    table = LiveTable(columns, [], {}, {}, {}, [], row[0], row[1], row[2].strip('"'), row[3])
    for conname, contype, validated, definition, keys, fschema, ftable, fkeys, deltype, set_null in conn.execute(
        CONSTRAINTS_QUERY, (relation,)
    ):
        if not validated:
            table.not_validated.append(conname)
        if contype == "p":
            table.primary_key = list(keys)
        elif contype == "u":
            table.uniques[conname] = UniqueSpec(name=conname, columns=list(keys))
        elif contype == "c":
            table.checks[conname] = definition
        else:
            table.foreign_keys[conname] = ForeignKeySpec(
                name=conname,
                columns=list(keys),
                ref_schema=fschema,
                ref_table=ftable,
                ref_columns=list(fkeys),
                on_delete=_DELETE_RULES[deltype],  # type: ignore[arg-type]
                set_null=list(set_null),
            )
    return table


def canonical(conn: psycopg.Connection, spec: TableSpec) -> tuple[dict[str, ColumnSpec], dict[str, str]]:
    """How the server itself writes the spec's column types, defaults and checks: built on a temporary
    table in a rolled-back transaction, so `timestamptz` and `timestamp with time zone` compare equal."""
    shadow_name = f"shadow_{spec.name}"[:63]
    shadow = sql.Identifier("pg_temp", shadow_name)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(create_statement(spec, shadow, with_foreign_keys=False, temporary=True))
            live = read_table(conn, "pg_temp", shadow_name)
            assert live is not None
            return live.columns, live.checks
    except psycopg.Error as error:
        raise ProviderError(f"table {spec.schema_name}.{spec.name}: the spec is not valid SQL: {error}") from error


def observed(conn: psycopg.Connection, spec: TableSpec) -> dict[str, Any] | None:
    """The live table as a spec: where it matches the declared spec (as the server writes both), the
    declared text is reported, so only real differences show as drift."""
    live = read_table(conn, spec.schema_name, spec.name)
    if live is None:
        return None
    wanted_columns, wanted_checks = canonical(conn, spec)
    columns = [
        column.model_dump(by_alias=True)
        if live.columns.get(column.name) == wanted_columns[column.name]
        else (live.columns[column.name].model_dump(by_alias=True) if column.name in live.columns else None)
        for column in spec.columns
    ]
    checks = [
        check.model_dump(by_alias=True)
        if live.checks.get(check.name) == wanted_checks.get(check.name) and check.name not in live.not_validated
        else {"name": check.name, "expression": live.checks.get(check.name, "<missing or not validated>")}
        for check in spec.checks
    ]
    return {
        "columns": [column for column in columns if column is not None],
        "primaryKey": live.primary_key,
        "uniques": [u.model_dump(by_alias=True) for u in spec.uniques if live.uniques.get(u.name) == u]
        + [{"name": u.name, "columns": ["<missing>"]} for u in spec.uniques if live.uniques.get(u.name) != u],
        "checks": checks,
        "foreignKeys": [
            fk.model_dump(by_alias=True)
            if live.foreign_keys.get(fk.name) == fk and fk.name not in live.not_validated
            else {**fk.model_dump(by_alias=True), "columns": ["<missing or not validated>"]}
            for fk in spec.foreign_keys
        ],
        "owner": live.owner if spec.owner is not None else None,
        "rowLevelSecurity": live.rls_enabled and live.rls_forced,
        # a plain table adopted under a partitioned spec shows as drift: `up` converts it online
        "partition": spec.partition.model_dump(by_alias=True) if spec.partition and live.partitioned else None,
    }


# --- render: the DDL ---------------------------------------------------------------------------------


def column_definition(column: ColumnSpec) -> sql.Composable:
    parts: list[sql.Composable] = [sql.Identifier(column.name), sql.SQL(column.type)]
    if column.default is not None:
        parts += [sql.SQL("DEFAULT"), sql.SQL(column.default)]
    if not column.nullable:
        parts.append(sql.SQL("NOT NULL"))
    return sql.SQL(" ").join(parts)


def columns_list(names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def foreign_key_clause(fk: ForeignKeySpec) -> sql.Composable:
    nulled = sql.SQL(" ({})").format(columns_list(fk.set_null)) if fk.set_null else sql.SQL("")
    return sql.SQL("CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {}{}").format(
        sql.Identifier(fk.name),
        columns_list(fk.columns),
        qualified(fk.ref_schema, fk.ref_table),
        columns_list(fk.ref_columns),
        sql.SQL(fk.on_delete.upper()),
        nulled,
    )


def check_clause(check: CheckSpec) -> sql.Composable:
    return sql.SQL("CONSTRAINT {} CHECK ({})").format(sql.Identifier(check.name), sql.SQL(check.expression))


def unique_clause(unique: UniqueSpec) -> sql.Composable:
    return sql.SQL("CONSTRAINT {} UNIQUE ({})").format(sql.Identifier(unique.name), columns_list(unique.columns))


def create_statement(
    spec: TableSpec, relation: sql.Identifier, *, with_foreign_keys: bool = True, temporary: bool = False
) -> Statement:
    elements = [column_definition(column) for column in spec.columns]
    elements.append(sql.SQL("PRIMARY KEY ({})").format(columns_list(spec.primary_key)))
    elements += [unique_clause(unique) for unique in spec.uniques]
    elements += [check_clause(check) for check in spec.checks]
    if with_foreign_keys:
        elements += [foreign_key_clause(fk) for fk in spec.foreign_keys]
    partition = (
        sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(spec.partition.column))
        if spec.partition and not temporary
        else sql.SQL("")
    )
    return sql.SQL("CREATE {}TABLE {} ({}){}").format(
        sql.SQL("TEMPORARY " if temporary else ""), relation, sql.SQL(", ").join(elements), partition
    )


def rls_statements(relation: sql.Identifier) -> list[Statement]:
    return [
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(relation),
        sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(relation),
    ]


# --- compare: what it takes to go from the live table to the spec ------------------------------------


@dataclass
class Plan:
    """DDL in the order it must run; `validate` runs each in a transaction of its own, after the rest."""

    statements: list[Statement] = field(default_factory=list)
    validate: list[Statement] = field(default_factory=list)
    concurrent_indexes: list[UniqueSpec] = field(default_factory=list)  # built first, outside a transaction
    data_loss: list[str] = field(default_factory=list)


def plan_changes(conn: psycopg.Connection, spec: TableSpec, live: LiveTable, dropped: list[str]) -> Plan:
    relation = qualified(spec.schema_name, spec.name)
    wanted_columns, wanted_checks = canonical(conn, spec)
    plan = Plan()
    alter = sql.SQL("ALTER TABLE {} ").format(relation)
    for column in spec.columns:
        current, wanted = live.columns.get(column.name), wanted_columns[column.name]
        if current is None:
            plan.statements.append(alter + sql.SQL("ADD COLUMN {}").format(column_definition(column)))
            continue
        if current.type != wanted.type:
            plan.data_loss.append(f"column {column.name} changes type from {current.type} to {wanted.type}")
        if current.default != wanted.default:
            change = (
                sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(sql.Identifier(column.name), sql.SQL(column.default))
                if column.default is not None
                else sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(sql.Identifier(column.name))
            )
            plan.statements.append(alter + change)
        if current.nullable and not wanted.nullable:
            plan_set_not_null(plan, alter, spec.name, column.name)
        elif not current.nullable and wanted.nullable:
            plan.statements.append(alter + sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(column.name)))
    plan.data_loss += [f"column {name} would be dropped" for name in dropped if name in live.columns]
    for name in dropped:
        if name in live.columns:
            plan.statements.append(alter + sql.SQL("DROP COLUMN {}").format(sql.Identifier(name)))
    plan_constraints(plan, alter, spec, live, wanted_checks)
    if not (live.rls_enabled and live.rls_forced):
        plan.statements += rls_statements(relation)
    if spec.owner is not None and live.owner != spec.owner:
        plan.statements.append(alter + sql.SQL("OWNER TO {}").format(sql.Identifier(spec.owner)))
    return plan


def plan_set_not_null(plan: Plan, alter: sql.Composed, table: str, column: str) -> None:
    """SET NOT NULL without a long exclusive scan: a validated CHECK lets PostgreSQL skip it."""
    guard = sql.Identifier(f"{table}_{column}_not_null_guard"[:63])
    plan.statements.append(
        alter + sql.SQL("ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(guard, sql.Identifier(column))
    )
    plan.validate += [
        alter + sql.SQL("VALIDATE CONSTRAINT {}").format(guard),
        alter + sql.SQL("ALTER COLUMN {} SET NOT NULL").format(sql.Identifier(column)),
        alter + sql.SQL("DROP CONSTRAINT {}").format(guard),
    ]


def plan_constraints(
    plan: Plan, alter: sql.Composed, spec: TableSpec, live: LiveTable, wanted_checks: dict[str, str]
) -> None:
    def replace(name: str, clause: sql.Composable, exists: bool, validate: bool) -> None:
        if exists:
            plan.statements.append(alter + sql.SQL("DROP CONSTRAINT {}").format(sql.Identifier(name)))
        plan.statements.append(alter + sql.SQL("ADD ") + clause + (sql.SQL(" NOT VALID") if validate else sql.SQL("")))
        if validate:
            plan.validate.append(alter + sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(name)))

    if live.primary_key != spec.primary_key:
        plan.data_loss.append(f"primary key changes from {live.primary_key} to {spec.primary_key}")
    for unique in spec.uniques:
        if unique.name not in live.uniques and not live.partitioned:
            # its index is built CONCURRENTLY first (Plan.concurrent_indexes), so writers are never blocked
            plan.concurrent_indexes.append(unique)
            plan.statements.append(
                alter
                + sql.SQL("ADD CONSTRAINT {} UNIQUE USING INDEX {}").format(
                    sql.Identifier(unique.name), sql.Identifier(unique.name)
                )
            )
        elif live.uniques.get(unique.name) != unique:
            replace(unique.name, unique_clause(unique), unique.name in live.uniques, validate=False)
    for check in spec.checks:
        if live.checks.get(check.name) != wanted_checks.get(check.name):
            replace(check.name, check_clause(check), check.name in live.checks, validate=True)
        elif check.name in live.not_validated:
            plan.validate.append(alter + sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(check.name)))
    for fk in spec.foreign_keys:
        if live.foreign_keys.get(fk.name) != fk:
            # PostgreSQL 15 cannot add a foreign key NOT VALID to a partitioned table: it is checked at once
            replace(fk.name, foreign_key_clause(fk), fk.name in live.foreign_keys, validate=not live.partitioned)
        elif fk.name in live.not_validated:
            plan.validate.append(alter + sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(fk.name)))


def violations(conn: psycopg.Connection, spec: TableSpec, check: CheckSpec) -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE NOT ({})").format(
        qualified(spec.schema_name, spec.name), sql.SQL(check.expression)
    )
    return int(scalar(conn, query) or 0)


def relation_exists(conn: psycopg.Connection, relation: sql.Identifier) -> bool:
    return bool(scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (relation.as_string(conn),)))


def orphans(conn: psycopg.Connection, spec: TableSpec, fk: ForeignKeySpec) -> int:
    """Rows whose key (all of its columns set) has no row to point at: a foreign key would refuse them."""
    pairs = list(zip(fk.columns, fk.ref_columns, strict=True))
    query = sql.SQL("SELECT count(*) FROM {} t WHERE {} AND NOT EXISTS (SELECT FROM {} r WHERE {})").format(
        qualified(spec.schema_name, spec.name),
        sql.SQL(" AND ").join(sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(c)) for c in fk.columns),
        qualified(fk.ref_schema, fk.ref_table),
        sql.SQL(" AND ").join(
            sql.SQL("r.{} = t.{}").format(sql.Identifier(ref), sql.Identifier(column)) for column, ref in pairs
        ),
    )
    return int(scalar(conn, query) or 0)


def column_losses(table: str, old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Columns (name -> type) that going from `old` to `new` would drop or retype."""
    losses = [f"column {table}.{name} would be dropped" for name in old if name not in new]
    losses += [
        f"column {table}.{name} would change type from {old[name]} to {type_}"
        for name, type_ in new.items()
        if name in old and " ".join(old[name].lower().split()) != " ".join(type_.lower().split())
    ]
    return losses


class TableKind(DatabaseKind[TableSpec]):
    token = TOKEN
    spec_type = TableSpec
    replace_on = frozenset({"schemaName", "name"})
    delete_before_replace = True

    def observe(self, resource_id: str, spec: TableSpec) -> dict[str, Any] | None:
        with connect(self.target) as conn:
            return observed(conn, spec)

    def drifted(self, old_state: dict[str, Any], spec: TableSpec) -> list[str]:
        return [] if old_state.get("rowLevelSecurity", True) else ["rowLevelSecurity"]

    def data_loss(self, old_inputs: dict[str, Any], spec: TableSpec) -> list[str]:
        losses = column_losses(
            spec.name,
            {column["name"]: str(column["type"]) for column in old_inputs.get("columns", [])},
            {column.name: column.type for column in spec.columns},
        )
        if old_inputs.get("primaryKey", spec.primary_key) != spec.primary_key:
            losses.append(f"the primary key of {spec.name} would change")
        return losses

    def create(self, spec: TableSpec) -> tuple[str, dict[str, Any]]:
        relation = qualified(spec.schema_name, spec.name)
        with connect(self.target) as conn:
            existed = read_table(conn, spec.schema_name, spec.name) is not None
            if existed:  # the live database already has it: adopt, never recreate
                self.converge(conn, spec, dropped=[])
            else:
                statements = [create_statement(spec, relation), *rls_statements(relation)]
                if spec.partition:  # rows outside every partition land here until maintenance makes theirs
                    default_partition = qualified(spec.schema_name, f"{spec.name}_default")
                    statements.append(
                        sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(default_partition, relation)
                    )
                    # a partition read directly would skip the parent's policies: it gets RLS and no policy
                    statements += rls_statements(default_partition)
                    if spec.owner:
                        statements.append(
                            sql.SQL("ALTER TABLE {} OWNER TO {}").format(default_partition, sql.Identifier(spec.owner))
                        )
                if spec.owner:
                    statements.append(
                        sql.SQL("ALTER TABLE {} OWNER TO {}").format(relation, sql.Identifier(spec.owner))
                    )
                if spec.comment:
                    statements.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(relation, sql.Literal(spec.comment)))
                run_ddl(conn, statements, self.target.lock_timeout, what=f"create table {spec.schema_name}.{spec.name}")
            return f"{spec.schema_name}.{spec.name}", {"adopted": existed}

    def update(self, resource_id: str, old: dict[str, Any], spec: TableSpec) -> dict[str, Any]:
        declared_before = {column["name"] for column in old.get("columns", [])}
        dropped = sorted(declared_before - {column.name for column in spec.columns})
        with connect(self.target) as conn:
            self.converge(conn, spec, dropped)
            return observed(conn, spec) or {}  # what is there now, so drift recorded by a refresh is cleared

    def converge(self, conn: psycopg.Connection, spec: TableSpec, dropped: list[str]) -> None:
        live = read_table(conn, spec.schema_name, spec.name)
        assert live is not None
        if live.partitioned != (spec.partition is not None):
            self.repartition(conn, spec, live)
            live = read_table(conn, spec.schema_name, spec.name)
            assert live is not None
        plan = plan_changes(conn, spec, live, dropped)
        if plan.data_loss and not self.target.allow_data_loss:
            raise ProviderError(
                f"table {spec.schema_name}.{spec.name}: refusing changes that lose data: {'; '.join(plan.data_loss)}. "
                "Set thorbis:allowDataLoss true to allow them"
            )
        self.report_violations(conn, spec, live)
        name = f"table {spec.schema_name}.{spec.name}"
        for unique in plan.concurrent_indexes:
            self.build_unique_index(conn, spec, unique)
        run_ddl(conn, plan.statements, self.target.lock_timeout, what=name)
        for statement in plan.validate:
            run_ddl(conn, [statement], self.target.lock_timeout, what=f"{name} (validation)")

    def build_unique_index(self, conn: psycopg.Connection, spec: TableSpec, unique: UniqueSpec) -> None:
        """The index a new unique constraint of a live table will use, built without blocking writes.
        One of the same name without its constraint is what an interrupted build left: made again."""
        index = qualified(spec.schema_name, unique.name)
        drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index)
        build = sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({})").format(
            sql.Identifier(unique.name), qualified(spec.schema_name, spec.name), columns_list(unique.columns)
        )
        run_ddl(
            conn,
            [drop, build],
            self.target.lock_timeout,
            transactional=False,
            what=f"unique index {spec.schema_name}.{unique.name}",
            before_retry=lambda: run_ddl(conn, [drop], self.target.lock_timeout, transactional=False),
        )

    def repartition(self, conn: psycopg.Connection, spec: TableSpec, live: LiveTable) -> None:
        """A plain table whose spec is partitioned is converted online (components/database/conversion.py);
        the old copy is dropped once the conversion's verification (counts and checksums) has passed."""
        from components.database.conversion import convert_to_partitioned, drop_unpartitioned  # imports this module

        if live.partitioned:
            raise ProviderError(
                f"table {spec.schema_name}.{spec.name} is partitioned and its spec is not: turning a partitioned "
                "table back into a plain one is not supported; declare its `partition` again"
            )
        result = convert_to_partitioned(conn, spec, self.target.lock_timeout)
        if result is not None:
            engine_log.info(
                f"{spec.schema_name}.{spec.name} converted online to monthly partitions: {result.rows} "
                f"rows verified (md5 {result.checksum}) in {len(result.partitions)} partitions"
            )
        drop_unpartitioned(conn, spec, self.target.lock_timeout)

    def report_violations(self, conn: psycopg.Connection, spec: TableSpec, live: LiveTable) -> None:
        """Rows that break a new rule are named and counted before anything changes."""
        broken = {
            check.name: count
            for check in spec.checks
            if (check.name not in live.checks or check.name in live.not_validated)
            and (count := violations(conn, spec, check))
        }
        broken |= {  # as between companies: a row of one company that points at another company's row
            fk.name: count
            for fk in spec.foreign_keys
            if (live.foreign_keys.get(fk.name) != fk or fk.name in live.not_validated)
            and all(column in live.columns for column in fk.columns)  # a column added now holds no value yet
            and relation_exists(conn, qualified(fk.ref_schema, fk.ref_table))
            and (count := orphans(conn, spec, fk))
        }
        if broken:
            listing = ", ".join(f"{name}: {count} row(s)" for name, count in broken.items())
            raise ProviderError(
                f"table {spec.schema_name}.{spec.name}: existing rows break the rule(s) {listing}; "
                "fix those rows, then run `pulumi up` again (nothing was changed)"
            )

    def delete(self, resource_id: str, spec: TableSpec) -> None:
        relation = qualified(spec.schema_name, spec.name)
        with connect(self.target) as conn:
            if read_table(conn, spec.schema_name, spec.name) is None:
                return
            rows = scalar(conn, sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) t").format(relation))
            if rows and not self.target.allow_data_loss:
                raise ProviderError(
                    f"refusing to drop table {spec.schema_name}.{spec.name}: it holds data. "
                    "Set thorbis:allowDataLoss true (and `pulumi up`) to allow it"
                )
            run_ddl(
                conn,
                [sql.SQL("DROP TABLE {} CASCADE").format(relation)],
                self.target.lock_timeout,
                what=f"drop table {spec.schema_name}.{spec.name}",
            )


@dataclass
class TableArgs:
    schema_name: pulumi.Input[str]
    name: pulumi.Input[str]
    columns: pulumi.Input[list[dict[str, Any]]]
    primary_key: pulumi.Input[list[str]]
    uniques: pulumi.Input[list[dict[str, Any]]] = field(default_factory=list)
    checks: pulumi.Input[list[dict[str, Any]]] = field(default_factory=list)
    foreign_keys: pulumi.Input[list[dict[str, Any]]] = field(default_factory=list)
    owner: pulumi.Input[str] | None = None
    partition: pulumi.Input[dict[str, Any]] | None = None
    comment: pulumi.Input[str] | None = None


class Table(pulumi.CustomResource):
    adopted: pulumi.Output[bool]

    def __init__(self, name: str, args: TableArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, {**provider_inputs(args), **declared_outputs("adopted")}, opts)
