"""thorbisdb:db:Table — a table: columns, keys, checks, foreign keys, row level security (enabled and forced).

Read the catalog into the spec's shape, compare, and close the gap with the smallest safe DDL:
an existing table is adopted, never recreated; missing columns are added; constraints are added
NOT VALID and then validated (no long lock for a full scan); NOT NULL goes through a validated CHECK.
Dropping a column or a table, or changing a column's type, loses data: refused unless allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components import engine_log
from components.database.base import DatabaseKind, default_partition_name, qualified
from components.database.conversion import convert_to_partitioned, drop_unpartitioned
from components.database.ddl import Operation, Transaction, shared
from components.database.session import Statement, connect, scalar
from components.database.table_shape import (
    CheckSpec,
    ColumnSpec,
    ForeignKeySpec,
    LiveTable,
    TableSpec,
    UniqueSpec,
    canonical,
    check_clause,
    column_definition,
    column_losses,
    columns_list,
    create_statement,
    foreign_key_clause,
    read_table,
    rls_statements,
    unique_clause,
)
from components.kind import Expect, Observed, ProviderError, Spec, Status

TOKEN = "thorbisdb:db:Table"


class TableStatus(Status):
    adopted: bool | None = Field(default=None, description="The table existed before the stack declared it.")
    row_level_security: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="Row level security is enabled and forced."
    )
    not_validated: Annotated[list[str] | None, Expect([])] = Field(
        default=None,
        description="Declared checks and foreign keys that exist NOT VALID (rows may break them): `up` validates.",
    )


# --- read: the live table, in the spec's shape -------------------------------------------------------


def as_observed(declared: Spec, live: Spec | None, same: bool, validated: bool) -> dict[str, Any] | None:
    """A declared constraint as observed: the declared one where the live one is the same and validated, the
    live one where it differs, none where it is missing or NOT VALID (the status says which)."""
    if live is None or (same and not validated):
        return None
    return (declared if same else live).model_dump(by_alias=True)


def observed(conn: psycopg.Connection, spec: TableSpec) -> Observed[TableStatus] | None:
    """The live table as a spec: where it matches the declared spec (as the server writes both), the
    declared text is reported, so only real differences show as drift."""
    live = read_table(conn, spec.schema_name, spec.name)
    if live is None:
        return None
    wanted_columns, wanted_checks = canonical(conn, spec)
    columns = [
        column.model_dump(by_alias=True)
        if live.columns.get(column.name) == wanted_columns[column.name]
        else live.columns[column.name].model_dump(by_alias=True)
        for column in spec.columns
        if column.name in live.columns
    ]
    checks = [
        as_observed(
            check,
            CheckSpec(name=check.name, expression=live.checks[check.name]) if check.name in live.checks else None,
            live.checks.get(check.name) == wanted_checks.get(check.name),
            check.name not in live.not_validated,
        )
        for check in spec.checks
    ]
    foreign_keys = [
        as_observed(
            fk, live.foreign_keys.get(fk.name), live.foreign_keys.get(fk.name) == fk, fk.name not in live.not_validated
        )
        for fk in spec.foreign_keys
    ]
    uniques = [as_observed(u, live.uniques.get(u.name), live.uniques.get(u.name) == u, True) for u in spec.uniques]
    declared_constraints = {check.name for check in spec.checks} | {fk.name for fk in spec.foreign_keys}
    inputs = {
        "columns": columns,
        "primaryKey": live.primary_key,
        "uniques": [unique for unique in uniques if unique is not None],
        "checks": [check for check in checks if check is not None],
        "foreignKeys": [fk for fk in foreign_keys if fk is not None],
        "owner": live.owner if spec.owner is not None else None,
        # a plain table adopted under a partitioned spec shows as drift: `up` converts it online
        "partition": spec.partition.model_dump(by_alias=True) if spec.partition and live.partitioned else None,
    }
    status = TableStatus(
        row_level_security=live.rls_enabled and live.rls_forced,
        not_validated=[name for name in live.not_validated if name in declared_constraints],
    )
    return Observed(inputs, status)


# --- render: the DDL of a new table, of a dropped one, of columns added and dropped -------------------


def create_operations(spec: TableSpec) -> list[Operation]:
    """A new table (nothing of its name exists): created with RLS enabled and forced, its default partition
    when it is partitioned, its owner and comment, in one transaction."""
    relation = qualified(spec.schema_name, spec.name)
    statements = [create_statement(spec, relation), *rls_statements(relation)]
    if spec.partition:  # rows outside every partition land here until maintenance makes theirs
        default_partition = qualified(spec.schema_name, default_partition_name(spec.name))
        statements.append(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(default_partition, relation))
        # a partition read directly would skip the parent's policies: it gets RLS and no policy
        statements += rls_statements(default_partition)
        if spec.owner:
            statements.append(
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(default_partition, sql.Identifier(spec.owner))
            )
    if spec.owner:
        statements.append(sql.SQL("ALTER TABLE {} OWNER TO {}").format(relation, sql.Identifier(spec.owner)))
    if spec.comment:
        statements.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(relation, sql.Literal(spec.comment)))
    return shared(statements)


def drop_operations(spec: TableSpec) -> list[Operation]:
    return shared([sql.SQL("DROP TABLE {} CASCADE").format(qualified(spec.schema_name, spec.name))])


def alter(spec: TableSpec) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ").format(qualified(spec.schema_name, spec.name))


def add_column(spec: TableSpec, column: ColumnSpec) -> Statement:
    return alter(spec) + sql.SQL("ADD COLUMN {}").format(column_definition(column))


def drop_column(spec: TableSpec, name: str) -> Statement:
    return alter(spec) + sql.SQL("DROP COLUMN {}").format(sql.Identifier(name))


def column_operations(old: TableSpec, new: TableSpec) -> list[Operation] | None:
    """Columns added or dropped between two specs that differ in nothing else; None otherwise (any other
    change is planned against the live table)."""
    before = {column.name: column for column in old.columns}
    after = {column.name: column for column in new.columns}
    if old.model_copy(update={"columns": new.columns}) != new:
        return None
    if any(before[name] != column for name, column in after.items() if name in before):
        return None
    statements = [add_column(new, column) for name, column in after.items() if name not in before]
    return shared([*statements, *(drop_column(new, name) for name in before if name not in after)])


# --- compare: what it takes to go from the live table to the spec ------------------------------------


@dataclass
class Plan:
    """What it takes: unique indexes built CONCURRENTLY first, then the statements in one transaction, then
    each validation in a transaction of its own; and what of it would lose data."""

    statements: list[Statement] = field(default_factory=list)
    validate: list[Statement] = field(default_factory=list)
    concurrent_indexes: list[Operation] = field(default_factory=list)
    data_loss: list[str] = field(default_factory=list)

    @property
    def operations(self) -> list[Operation]:
        validations = [Operation(statement, Transaction.OWN) for statement in self.validate]
        return [*self.concurrent_indexes, *shared(self.statements), *validations]


def unique_index_operations(spec: TableSpec, unique: UniqueSpec) -> list[Operation]:
    """The index a new unique constraint of a live table will use, built without blocking writes. One of
    the same name without its constraint is what an interrupted build left: made again."""
    drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(qualified(spec.schema_name, unique.name))
    build = sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({})").format(
        sql.Identifier(unique.name), qualified(spec.schema_name, spec.name), columns_list(unique.columns)
    )
    return [Operation(drop, Transaction.NONE), Operation(build, Transaction.NONE, cleanup=drop)]


def plan_changes(conn: psycopg.Connection, spec: TableSpec, live: LiveTable, dropped: list[str]) -> Plan:
    relation = qualified(spec.schema_name, spec.name)
    wanted_columns, wanted_checks = canonical(conn, spec)
    plan = Plan()
    alter = sql.SQL("ALTER TABLE {} ").format(relation)
    for column in spec.columns:
        current, wanted = live.columns.get(column.name), wanted_columns[column.name]
        if current is None:
            plan.statements.append(add_column(spec, column))
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
    plan.statements += [drop_column(spec, name) for name in dropped if name in live.columns]
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
            plan.concurrent_indexes += unique_index_operations(spec, unique)
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


class TableKind(DatabaseKind[TableSpec, TableStatus]):
    token = TOKEN
    spec_type = TableSpec
    status_type = TableStatus
    deleting_loses = "table {name} would be dropped with its rows"

    def observe(self, resource_id: str, spec: TableSpec) -> Observed[TableStatus] | None:
        with connect(self.target) as conn:
            return observed(conn, spec)

    def data_loss(self, old_inputs: dict[str, Any], spec: TableSpec) -> list[str]:
        losses = column_losses(
            spec.name,
            {column["name"]: str(column["type"]) for column in old_inputs.get("columns", [])},
            {column.name: column.type for column in spec.columns},
        )
        if old_inputs.get("primaryKey", spec.primary_key) != spec.primary_key:
            losses.append(f"the primary key of {spec.name} would change")
        return losses

    def planned_create(self, spec: TableSpec) -> list[Operation] | None:
        return create_operations(spec)  # as when nothing of its name exists (an existing table is adopted)

    def planned_update(self, old: TableSpec, new: TableSpec) -> list[Operation] | None:
        return column_operations(old, new)

    def planned_delete(self, spec: TableSpec) -> list[Operation] | None:
        return drop_operations(spec)

    def create(self, spec: TableSpec) -> tuple[str, TableStatus]:
        with connect(self.target) as conn:
            existed = read_table(conn, spec.schema_name, spec.name) is not None
            if existed:  # the live database already has it: adopt, never recreate
                self.converge(conn, spec, dropped=[])
            else:
                self.apply(conn, create_operations(spec), what=f"create table {spec.schema_name}.{spec.name}")
            return f"{spec.schema_name}.{spec.name}", TableStatus(adopted=existed)

    def update(self, resource_id: str, old: dict[str, Any], spec: TableSpec) -> Observed[TableStatus]:
        declared_before = {column["name"] for column in old.get("columns", [])}
        dropped = sorted(declared_before - {column.name for column in spec.columns})
        with connect(self.target) as conn:
            self.converge(conn, spec, dropped)
            now = observed(conn, spec)  # what is there now, so drift recorded by a refresh is cleared
        assert now is not None
        return now

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
        self.apply(conn, plan.operations, what=f"table {spec.schema_name}.{spec.name}")

    def repartition(self, conn: psycopg.Connection, spec: TableSpec, live: LiveTable) -> None:
        """A plain table whose spec is partitioned is converted online (components/database/conversion.py);
        the old copy is dropped once the conversion's verification (counts and checksums) has passed."""
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
            self.apply(conn, drop_operations(spec), what=f"drop table {spec.schema_name}.{spec.name}")
