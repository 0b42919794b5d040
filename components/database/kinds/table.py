"""thorbisdb:db:Table — a table: columns, keys, checks, foreign keys, owner.

Read the catalog into the spec's shape, compare, and close the gap online (components/database/evolution.py):
an existing table is adopted, never recreated; columns are added, renamed and retyped, keys changed,
constraints added NOT VALID and then validated, without holding a lock that blocks writers for longer than
a catalog change. Dropping a column or a table loses data: refused unless allowed. An adopted table keeps its
owner and is never dropped (an empty one of the declared owner, which a killed `up` leaves, is not adopted).
A new table is created with row level security enabled and forced in its CREATE transaction; an adopted one
gets it from its RowSecurity (kinds/row_security.py), once its policies exist, so the application using it
is never refused in between.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components import engine_log
from components.database.base import DatabaseKind, default_partition_name, qualified
from components.database.conversion import convert_to_partitioned, drop_unpartitioned
from components.database.ddl import Operation, shared
from components.database.evolution import Plan, plan_changes
from components.database.locks import Lock, TableLock
from components.database.session import connect, scalar
from components.database.table_shape import (
    CheckSpec,
    ColumnSpec,
    ForeignKeySpec,
    LiveTable,
    TableSpec,
    UniqueSpec,
    canonical,
    column_definition,
    column_losses,
    columns_list,
    create_statement,
    holds_rows,
    read_table,
    rls_statements,
)
from components.kind import Expect, Observed, ProviderError, Spec, Status

TOKEN = "thorbisdb:db:Table"


class TableStatus(Status):
    adopted: bool | None = Field(default=None, description="The table existed before the stack declared it.")
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


def observed(conn: psycopg.Connection, spec: TableSpec, adopted: bool = False) -> Observed[TableStatus] | None:
    """The live table as a spec: where it matches the declared spec (as the server writes both), the
    declared text is reported, so only real differences show as drift. An adopted table's owner is its own."""
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
        "owner": spec.owner if adopted or spec.owner is None else live.owner,
        # a plain table adopted under a partitioned spec shows as drift: `up` converts it online
        "partition": spec.partition.model_dump(by_alias=True) if spec.partition and live.partitioned else None,
    }
    status = TableStatus(not_validated=[name for name in live.not_validated if name in declared_constraints])
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
    # its foreign keys lock the tables they point at: up front, before a snapshot a CONCURRENTLY build waits for
    referenced = {(fk.ref_schema, fk.ref_table) for fk in spec.foreign_keys} - {(spec.schema_name, spec.name)}
    return shared(statements, *(TableLock(schema, table, Lock.SHARE_ROW_EXCLUSIVE) for schema, table in referenced))


def drop_operations(spec: TableSpec) -> list[Operation]:
    return shared([sql.SQL("DROP TABLE {} CASCADE").format(qualified(spec.schema_name, spec.name))])


def add_column(spec: TableSpec, column: ColumnSpec) -> Operation:
    statement = sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(
        qualified(spec.schema_name, spec.name), column_definition(column)
    )
    return Operation(statement, locks=(TableLock(spec.schema_name, spec.name, Lock.ACCESS_EXCLUSIVE),))


def column_operations(old: TableSpec, new: TableSpec) -> list[Operation] | None:
    """Nullable columns without a default added, columns dropped, and nothing else changed: what the apply
    runs too (one brief ALTER each). None otherwise: every other change is planned against the live table
    (components/database/evolution.py), where the PR preview can reach it."""
    before = {column.name for column in old.columns}
    added = [column for column in new.columns if column.name not in before]
    dropped = dropped_columns(old, new)
    unchanged = [column for column in old.columns if column.name not in dropped]
    if new.model_copy(update={"columns": [c for c in new.columns if c.name in before]}) != old.model_copy(
        update={"columns": unchanged}
    ):
        return None
    if any(not column.nullable or column.default is not None or column.renamed_from for column in added):
        return None
    drops = [
        Operation(
            sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(qualified(new.schema_name, new.name), sql.Identifier(name)),
            locks=(TableLock(new.schema_name, new.name, Lock.ACCESS_EXCLUSIVE),),
        )
        for name in dropped
    ]
    return [*(add_column(new, column) for column in added), *drops]


def as_declared(spec: TableSpec, live: LiveTable) -> sql.Composable:
    """The live rows as the spec will see them: renamed columns under their new names, added ones with their
    default (or backfill) or empty; what the checks of the spec are counted against."""
    extra: list[sql.Composable] = []
    for column in spec.columns:
        if column.name in live.columns:
            continue
        if column.renamed_from in live.columns:
            value: sql.Composable = sql.SQL("t.{}").format(sql.Identifier(column.renamed_from or ""))
        else:
            value = sql.SQL("({})::{}").format(
                sql.SQL(column.default or column.backfill or "NULL"), sql.SQL(column.type)
            )
        extra.append(sql.SQL("{} AS {}").format(value, sql.Identifier(column.name)))
    columns = sql.SQL(", ").join([sql.SQL("t.*"), *extra])
    return sql.SQL("(SELECT {} FROM {} t) t").format(columns, qualified(spec.schema_name, spec.name))


def violations(conn: psycopg.Connection, rows: sql.Composable, check: CheckSpec) -> int:
    return int(
        scalar(conn, sql.SQL("SELECT count(*) FROM {} WHERE NOT ({})").format(rows, sql.SQL(check.expression))) or 0
    )


def empty_rows(conn: psycopg.Connection, rows: sql.Composable, column: ColumnSpec) -> int:
    """Rows a NOT NULL column would leave empty (its backfill fills the others)."""
    value = sql.SQL("coalesce({}, {})").format(sql.Identifier(column.name), sql.SQL(column.backfill or "NULL"))
    return int(scalar(conn, sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(rows, value)) or 0)


def duplicates(conn: psycopg.Connection, spec: TableSpec, unique: UniqueSpec) -> int:
    """Rows that share their key (all of its columns set) with another row: a unique key would refuse them."""
    columns = columns_list(unique.columns)
    query = sql.SQL(
        "SELECT coalesce(sum(n), 0) FROM (SELECT count(*) n FROM {} WHERE {} GROUP BY {} HAVING count(*) > 1) d"
    ).format(
        qualified(spec.schema_name, spec.name),
        sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in unique.columns),
        columns,
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


def dropped_columns(old: TableSpec, new: TableSpec) -> list[str]:
    kept = {column.name for column in new.columns} | {column.renamed_from for column in new.columns}
    return [column.name for column in old.columns if column.name not in kept]


def left_by_an_interrupted_create(conn: psycopg.Connection, spec: TableSpec, live: LiveTable) -> bool:
    """An empty table of the declared owner is what a create of the stack leaves when a kill stops the `up`
    before the engine records it (recovery's `up` then meets it). Nothing in it is anyone else's: it is the
    stack's own, which destroy drops like the tables it made, not one adopted (kept, and its owner role with it)."""
    if spec.owner is None or live.owner != spec.owner:
        return False
    try:
        return not holds_rows(conn, spec.schema_name, spec.name)
    except psycopg.errors.InsufficientPrivilege:  # rows hidden from the admin by RLS: it may hold some
        return False


class TableKind(DatabaseKind[TableSpec, TableStatus]):
    token = TOKEN
    spec_type = TableSpec
    status_type = TableStatus
    deleting_loses = "table {name} would be dropped with its rows"

    def observe(
        self, resource_id: str, spec: TableSpec, recorded: TableStatus | None = None
    ) -> Observed[TableStatus] | None:
        with connect(self.target) as conn:
            return observed(conn, spec, adopted=bool(recorded and recorded.adopted))

    def data_loss(self, old_inputs: dict[str, Any], spec: TableSpec) -> list[str]:
        renamed = {column.name: column.renamed_from for column in spec.columns if column.renamed_from}
        before = [str(column["name"]) for column in old_inputs.get("columns", [])]
        return column_losses(spec.name, before, [column.name for column in spec.columns], renamed)

    def planned_create(self, spec: TableSpec) -> list[Operation] | None:
        return create_operations(spec)  # as when nothing of its name exists (an existing table is adopted)

    def planned_update(self, old: TableSpec, new: TableSpec) -> list[Operation] | None:
        return column_operations(old, new)

    def planned_delete(self, spec: TableSpec) -> list[Operation] | None:
        return drop_operations(spec)

    def planned_live(
        self, conn: psycopg.Connection, old: TableSpec, new: TableSpec, recorded: TableStatus | None = None
    ) -> list[Operation] | None:
        """What `up` would run now against the live table (read-only: the comparisons run on temporary
        copies in rolled-back transactions); None when the table is not there yet or is converted."""
        live = read_table(conn, new.schema_name, new.name)
        if live is None or live.partitioned != (new.partition is not None):
            return None
        adopted = bool(recorded and recorded.adopted)
        return self.plan(conn, new, live, dropped_columns(old, new), adopted).operations

    def create(self, spec: TableSpec) -> tuple[str, TableStatus]:
        with connect(self.target) as conn:
            live = read_table(conn, spec.schema_name, spec.name)
            if live is None:
                self.apply(conn, create_operations(spec), what=f"create table {spec.schema_name}.{spec.name}")
                return f"{spec.schema_name}.{spec.name}", TableStatus(adopted=False)
            adopted = not left_by_an_interrupted_create(conn, spec, live)
            self.converge(conn, spec, dropped=[], adopted=True)  # the live database has it: never recreated
            return f"{spec.schema_name}.{spec.name}", TableStatus(adopted=adopted)

    def update(self, resource_id: str, old: dict[str, Any], spec: TableSpec) -> Observed[TableStatus]:
        declared_before = {column["name"] for column in old.get("columns", [])}
        kept = {column.name for column in spec.columns} | {column.renamed_from for column in spec.columns}
        dropped = sorted(name for name in declared_before if name not in kept)
        adopted = self.status_of(old).adopted is True
        with connect(self.target) as conn:
            self.converge(conn, spec, dropped, adopted)
            now = observed(conn, spec, adopted)  # what is there now, so drift recorded by a refresh is cleared
        assert now is not None
        return now

    def converge(self, conn: psycopg.Connection, spec: TableSpec, dropped: list[str], adopted: bool) -> None:
        live = read_table(conn, spec.schema_name, spec.name)
        assert live is not None
        if live.partitioned != (spec.partition is not None):
            # the partitioned copy of an adopted table keeps the owner the table had
            self.repartition(conn, spec.model_copy(update={"owner": live.owner}) if adopted else spec, live)
            live = read_table(conn, spec.schema_name, spec.name)
            assert live is not None
        plan = self.plan(conn, spec, live, dropped, adopted)
        if plan.data_loss and not self.target.allow_data_loss:
            raise ProviderError(
                f"table {spec.schema_name}.{spec.name}: refusing changes that lose data: {'; '.join(plan.data_loss)}. "
                "Set thorbis:allowDataLoss true to allow them"
            )
        self.report_violations(conn, spec, live)
        self.apply(conn, plan.operations, what=f"table {spec.schema_name}.{spec.name}")

    def plan(
        self, conn: psycopg.Connection, spec: TableSpec, live: LiveTable, dropped: list[str], adopted: bool = False
    ) -> Plan:
        return plan_changes(conn, spec, live, canonical(conn, spec), dropped, adopted)

    def repartition(self, conn: psycopg.Connection, spec: TableSpec, live: LiveTable) -> None:
        """A plain table whose spec is partitioned is converted online (components/database/conversion.py);
        the old copy is dropped once the conversion's verification (counts and checksums) has passed."""
        if live.partitioned:
            raise ProviderError(
                f"table {spec.schema_name}.{spec.name} is partitioned and its spec is not: turning a partitioned "
                "table back into a plain one is not supported; declare its `partition` again"
            )
        result = convert_to_partitioned(conn, spec, self.target.timeouts)
        if result is not None:
            engine_log.info(
                f"{spec.schema_name}.{spec.name} converted online to monthly partitions: {result.rows} "
                f"rows verified (md5 {result.checksum}) in {len(result.partitions)} partitions"
            )
        drop_unpartitioned(conn, spec, self.target.timeouts)

    def report_violations(self, conn: psycopg.Connection, spec: TableSpec, live: LiveTable) -> None:
        """Rows that break a new rule are named and counted before anything changes."""
        rows = as_declared(spec, live)
        broken = {
            check.name: count
            for check in spec.checks
            if (check.name not in live.checks or check.name in live.not_validated)
            and (count := violations(conn, rows, check))
        }
        wanted_columns, _ = canonical(conn, spec)
        broken |= {  # a NOT NULL column left empty: no default, no backfill
            f"{column.name} NOT NULL": count
            for column in spec.columns
            if not wanted_columns[column.name].nullable
            and (live_column := live.columns.get(column.name) or live.columns.get(column.renamed_from or ""))
            is not None
            and live_column.nullable
            and (count := empty_rows(conn, rows, column))
        }
        broken |= {
            f"{column.name} NOT NULL (no default or backfill)": count
            for column in spec.columns
            if not wanted_columns[column.name].nullable
            and column.name not in live.columns
            and column.renamed_from not in live.columns
            and column.default is None
            and (count := empty_rows(conn, rows, column))
        }
        broken |= {  # as between companies: a row of one company that points at another company's row
            fk.name: count
            for fk in spec.foreign_keys
            if (live.foreign_keys.get(fk.name) != fk or fk.name in live.not_validated)
            and all(column in live.columns for column in fk.columns)  # a column added now holds no value yet
            and relation_exists(conn, qualified(fk.ref_schema, fk.ref_table))
            and (count := orphans(conn, spec, fk))
        }
        broken |= {  # a key added or changed: rows that share a value of it
            unique.name: count
            for unique in spec.uniques
            if live.uniques.get(unique.name) != unique
            and all(column in live.columns for column in unique.columns)
            and (count := duplicates(conn, spec, unique))
        }
        if broken:
            listing = ", ".join(f"{name}: {count} row(s)" for name, count in broken.items())
            raise ProviderError(
                f"table {spec.schema_name}.{spec.name}: existing rows break the rule(s) {listing}; "
                "fix those rows, then run `pulumi up` again (nothing was changed)"
            )

    def delete(self, resource_id: str, spec: TableSpec, recorded: TableStatus | None = None) -> None:
        if recorded is not None and recorded.adopted:  # the table and its rows were there before the stack
            return
        with connect(self.target) as conn:
            if read_table(conn, spec.schema_name, spec.name) is None:
                return
            if not self.target.allow_data_loss and holds_rows(conn, spec.schema_name, spec.name):
                raise ProviderError(
                    f"refusing to drop table {spec.schema_name}.{spec.name}: it holds data. "
                    "Set thorbis:allowDataLoss true (and `pulumi up`) to allow it"
                )
            self.apply(conn, drop_operations(spec), what=f"drop table {spec.schema_name}.{spec.name}")
