"""A live table's way to its new spec, online: every change a pull request makes to a table's columns and
keys, as typed operations that never hold a lock blocking writers for longer than a catalog change.

Each change kind has its path (README "Changing a live table" says which locks each takes):

- a column added: nullable, or with a default PostgreSQL stores once (no rewrite: proved on a temporary
  copy of the table), in one ALTER; a volatile default is set for new rows and written into the existing
  ones by a batched backfill; NOT NULL comes last, through a CHECK added NOT VALID, validated, then
  SET NOT NULL (which the valid CHECK lets skip its scan). Rows a NOT NULL column without a default
  would leave empty are filled from the column's `backfill` expression, or named before anything changes.
- a column renamed (`renamed_from`): RENAME COLUMN, nothing copied.
- a column retyped: in place when PostgreSQL rewrites neither the table nor an index for it (proved on the
  copy); otherwise a new column of the new type kept equal by a trigger, backfilled in batches, its
  indexes built CONCURRENTLY, verified against the old one (count and checksum in one snapshot), then
  swapped for it in one short transaction.
- a unique key or the primary key added or changed: its index built CONCURRENTLY, then the constraint
  made USING INDEX; on a partitioned table, each partition's index and constraint first, then the
  parent's constraint, which only attaches them.
- a foreign key of a partitioned table: PostgreSQL 15 cannot add one NOT VALID to a partitioned table,
  so it is added NOT VALID and validated on each partition (writers are never blocked by the scans),
  then on the parent, which attaches those without a scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import psycopg
from psycopg import sql

from components.database.base import bounded, qualified
from components.database.ddl import BATCH_PAGES, Batches, Operation, Transaction, Work, batched
from components.database.locks import Lock, TableLock
from components.database.session import Statement, scalar
from components.database.table_shape import (
    CheckSpec,
    ColumnSpec,
    ForeignKeySpec,
    LiveTable,
    TableSpec,
    check_clause,
    column_definition,
    columns_list,
    foreign_key_clause,
)
from components.kind import ProviderError


class Phase(IntEnum):
    """When a step runs, relative to the others of the same plan."""

    BUILD = 0  # indexes of new keys on existing columns, CONCURRENTLY
    CHANGE = 1  # the brief changes, in one transaction
    BACKFILL = 2  # rows of new or copied columns, in batches
    BUILD_NEW = 3  # indexes on the columns CHANGE made (a retyped column's copy), CONCURRENTLY
    GUARD = 4  # NOT NULL guards added NOT VALID
    VALIDATE = 6  # each validation in a transaction of its own
    SWAP = 7  # brief transactions that use what was validated: SET NOT NULL, keys, retyped columns
    RELAX = 8  # NOT NULL dropped from columns the old primary key held
    REVALIDATE = 9  # checks made again on a swapped column


@dataclass
class Plan:
    """What it takes to go from the live table to the spec, step by step; and what of it would lose data."""

    steps: list[tuple[Phase, Operation]] = field(default_factory=list)
    data_loss: list[str] = field(default_factory=list)
    remade_checks: set[str] = field(default_factory=set)  # by a retyped column's swap

    def add(self, phase: Phase, *operations: Operation) -> None:
        self.steps += [(phase, operation) for operation in operations]

    @property
    def operations(self) -> list[Operation]:
        return [operation for _, operation in sorted(self.steps, key=lambda step: step[0])]


# --- the pieces every path uses -------------------------------------------------------------------------


def on(spec: TableSpec, lock: Lock, table: str | None = None) -> TableLock:
    return TableLock(spec.schema_name, table or spec.name, lock)


def alter(spec: TableSpec, table: str | None = None) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ").format(qualified(spec.schema_name, table or spec.name))


def brief(spec: TableSpec, statement: Statement, *locks: TableLock) -> Operation:
    """A catalog change under ACCESS EXCLUSIVE on the table (and any other locks named)."""
    return Operation(statement, locks=(on(spec, Lock.ACCESS_EXCLUSIVE), *locks))


def column(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def add_column_statement(spec: TableSpec, definition: ColumnSpec, if_not_exists: bool = False) -> Statement:
    guard = sql.SQL("IF NOT EXISTS ") if if_not_exists else sql.SQL("")
    return alter(spec) + sql.SQL("ADD COLUMN {}{}").format(guard, column_definition(definition))


def validate(spec: TableSpec, name: str, *locks: TableLock, table: str | None = None) -> Operation:
    """VALIDATE CONSTRAINT in a transaction of its own: its scan holds SHARE UPDATE EXCLUSIVE (writers go on)."""
    statement = alter(spec, table) + sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(name))
    return Operation(
        statement, Transaction.OWN, locks=(on(spec, Lock.SHARE_UPDATE_EXCLUSIVE, table), *locks), work=Work.SCAN
    )


def partitions(conn: psycopg.Connection, spec: TableSpec) -> list[str]:
    """The leaf partitions of a partitioned table, by name."""
    return [
        str(name)
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_partition_tree(to_regclass(%s)) t JOIN pg_class c ON c.oid = t.relid "
            "WHERE t.isleaf ORDER BY 1",
            (qualified(spec.schema_name, spec.name).as_string(conn),),
        )
    ]


def refuse_if_any(conn: psycopg.Connection, spec: TableSpec, query: str, params: tuple[str, ...], problem: str) -> None:
    """Refuse, before anything changes, naming what the catalog query found (its first column) in `problem`."""
    found = [str(row[0]) for row in conn.execute(query, params)]
    if found:
        raise ProviderError(
            f"table {spec.schema_name}.{spec.name}: {problem.format(', '.join(found))} (nothing was changed)"
        )


# --- proving on a temporary copy whether PostgreSQL rewrites ---------------------------------------------

PROBE = "thorbis_probe"
FILENODES = (
    "SELECT c.relname, pg_relation_filenode(c.oid) FROM pg_class c WHERE c.oid = 'pg_temp.thorbis_probe'::regclass "
    "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'pg_temp.thorbis_probe'::regclass)"
)


def rewrites(
    conn: psycopg.Connection, spec: TableSpec, change: sql.Composable, renames: Sequence[sql.Composable]
) -> bool:
    """Whether ALTER TABLE ... `change` rewrites the table or rebuilds one of its indexes: run on an empty
    copy of the live table (its columns, defaults and indexes) in a rolled-back transaction, where a rewrite
    shows as new files. `renames` are the RENAME COLUMN clauses the plan runs before it."""
    probe = sql.Identifier("pg_temp", PROBE)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING INDEXES)").format(
                    sql.Identifier(PROBE), qualified(spec.schema_name, spec.name)
                )
            )
            for rename in renames:
                conn.execute(sql.SQL("ALTER TABLE {} ").format(probe) + rename)
            before: dict[str, int] = dict(conn.execute(FILENODES).fetchall())
            conn.execute(sql.SQL("ALTER TABLE {} ").format(probe) + change)
            after: dict[str, int] = dict(conn.execute(FILENODES).fetchall())
    except psycopg.Error as error:
        raise ProviderError(
            f"table {spec.schema_name}.{spec.name}: the change cannot be made ({str(error).strip()})"
        ) from error
    return any(after.get(name) != node for name, node in before.items())


# --- columns ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnChange:
    """A declared column against the live one (under its old name when it is renamed)."""

    declared: ColumnSpec
    wanted: ColumnSpec  # as the server writes the declared column
    live: ColumnSpec | None
    renamed: bool


def column_changes(spec: TableSpec, live: LiveTable, wanted_columns: dict[str, ColumnSpec]) -> list[ColumnChange]:
    changes = []
    for declared in spec.columns:
        current = live.columns.get(declared.name)
        renamed = current is None and declared.renamed_from is not None and declared.renamed_from in live.columns
        if renamed:
            assert declared.renamed_from is not None
            current = live.columns[declared.renamed_from]
        changes.append(ColumnChange(declared, wanted_columns[declared.name], current, renamed))
    return changes


def plan_columns(
    conn: psycopg.Connection, plan: Plan, spec: TableSpec, live: LiveTable, wanted_columns: dict[str, ColumnSpec]
) -> None:
    changes = column_changes(spec, live, wanted_columns)
    renames = [
        sql.SQL("RENAME COLUMN {} TO {}").format(column(change.live.name), column(change.declared.name))
        for change in changes
        if change.renamed and change.live is not None
    ]
    plan.add(Phase.CHANGE, *(brief(spec, alter(spec) + rename) for rename in renames))
    for change in changes:
        if change.live is None:
            plan_added_column(conn, plan, spec, change.declared, renames)
            continue
        name = change.declared.name
        if change.live.type != change.wanted.type:
            plan_retype(conn, plan, spec, live, change, renames)
            continue
        if change.live.default != change.wanted.default:
            plan.add(Phase.CHANGE, brief(spec, set_default(spec, change.declared)))
        if change.live.nullable and not change.wanted.nullable:
            plan_not_null(plan, spec, name, change.declared.backfill)
        elif not change.live.nullable and change.wanted.nullable:
            phase = Phase.RELAX if change.live.name in live.primary_key else Phase.CHANGE
            plan.add(phase, brief(spec, alter(spec) + sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(column(name))))


def set_default(spec: TableSpec, declared: ColumnSpec) -> Statement:
    if declared.default is None:
        return alter(spec) + sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(column(declared.name))
    return alter(spec) + sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(
        column(declared.name), sql.SQL(declared.default)
    )


def plan_added_column(
    conn: psycopg.Connection, plan: Plan, spec: TableSpec, declared: ColumnSpec, renames: Sequence[sql.Composable]
) -> None:
    """One ALTER where PostgreSQL stores the default once; otherwise nullable first, a volatile default set
    for new rows and backfilled into the others, and NOT NULL through a validated CHECK."""
    if declared.default is not None:
        whole = sql.SQL("ADD COLUMN {}").format(column_definition(declared))
        if not rewrites(conn, spec, whole, renames):
            plan.add(Phase.CHANGE, brief(spec, add_column_statement(spec, declared)))
            return
    nullable = declared.model_copy(update={"nullable": True, "default": None})
    plan.add(Phase.CHANGE, brief(spec, add_column_statement(spec, nullable)))
    if declared.default is not None:  # volatile: new rows get it from now on, the others in batches
        plan.add(Phase.CHANGE, brief(spec, set_default(spec, declared)))
        plan.add(Phase.BACKFILL, backfill(spec, declared.name, sql.SQL(declared.default)))
    if not declared.nullable:
        plan_not_null(plan, spec, declared.name, None if declared.default else declared.backfill)


def backfill(spec: TableSpec, name: str, value: sql.Composable) -> Operation:
    """UPDATE the rows of a page range whose column is still empty (rows written meanwhile are the default's)."""
    table = qualified(spec.schema_name, spec.name)

    def statement(first: sql.Composable, end: sql.Composable) -> Statement:
        return sql.SQL("UPDATE {} SET {} = {} WHERE ctid >= {}::tid AND ctid < {}::tid AND {} IS NULL").format(
            table, column(name), value, first, end, column(name)
        )

    return batched(Batches(on(spec, Lock.ROW_EXCLUSIVE), statement, BATCH_PAGES), Work.BACKFILL)


def guard_name(spec: TableSpec, name: str) -> str:
    return bounded(f"{spec.name}_{name}_not_null_guard")


def row_trigger(spec: TableSpec, name: str, body: str) -> list[Operation]:
    """A BEFORE INSERT OR UPDATE trigger of our own on the table, made (again) from a plpgsql body."""
    function = qualified(spec.schema_name, name)
    return [
        Operation(
            sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                function, sql.Literal(body)
            )
        ),
        brief(spec, sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), table_of(spec))),
        Operation(
            sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
                sql.Identifier(name), table_of(spec), function
            ),
            locks=(on(spec, Lock.SHARE_ROW_EXCLUSIVE),),
        ),
    ]


def drop_row_trigger(spec: TableSpec, name: str) -> list[Operation]:
    return [
        brief(spec, sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), table_of(spec))),
        Operation(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(qualified(spec.schema_name, name))),
    ]


def table_of(spec: TableSpec) -> sql.Identifier:
    return qualified(spec.schema_name, spec.name)


def plan_not_null(plan: Plan, spec: TableSpec, name: str, fill: str | None) -> None:
    """SET NOT NULL without a scan under ACCESS EXCLUSIVE: a CHECK (NOT VALID: new rows only), validated
    (writers go on), then SET NOT NULL, which the valid CHECK lets skip its scan. With `fill` (the column's
    backfill), the empty rows are filled in batches first, and rows written meanwhile by a trigger that
    lives until SET NOT NULL: from then on writers give the column its value."""
    guard = guard_name(spec, name)
    filler = bounded(f"{spec.name}_{name}_fill")
    if fill is not None:
        body = sql.SQL("BEGIN IF NEW.{c} IS NULL THEN NEW.{c} := (SELECT {e} FROM (SELECT NEW.*) AS t); END IF; "
                       "RETURN NEW; END").format(c=column(name), e=sql.SQL(fill))  # fmt: skip
        plan.add(Phase.CHANGE, *row_trigger(spec, filler, body.as_string(None)))
        plan.add(Phase.BACKFILL, backfill(spec, name, sql.SQL(fill)))
    plan.add(
        Phase.GUARD,
        brief(
            spec,
            alter(spec)
            + sql.SQL("ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(sql.Identifier(guard), column(name)),
        ),
    )
    plan.add(Phase.VALIDATE, validate(spec, guard))
    plan.add(
        Phase.SWAP, *set_not_null(spec, name, guard), *(drop_row_trigger(spec, filler) if fill is not None else [])
    )


def set_not_null(spec: TableSpec, name: str, guard: str) -> list[Operation]:
    """SET NOT NULL on the validated guard, then the guard dropped. The transaction says first that the guard
    is valid (VALIDATE of a validated constraint does nothing): what makes SET NOT NULL skip its scan is
    then in the same transaction, where a reader of it, or a linter, sees it."""
    return [
        brief(spec, alter(spec) + sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(guard))),
        brief(spec, alter(spec) + sql.SQL("ALTER COLUMN {} SET NOT NULL").format(column(name))),
        brief(spec, alter(spec) + sql.SQL("DROP CONSTRAINT {}").format(sql.Identifier(guard))),
    ]


# --- a column's type ---------------------------------------------------------------------------------------


def retype_clause(name: str, type_: str) -> sql.Composable:
    return sql.SQL("ALTER COLUMN {} TYPE {} USING {}::{}").format(
        column(name), sql.SQL(type_), column(name), sql.SQL(type_)
    )


def plan_retype(
    conn: psycopg.Connection,
    plan: Plan,
    spec: TableSpec,
    live: LiveTable,
    change: ColumnChange,
    renames: Sequence[sql.Composable],
) -> None:
    name, wanted = change.declared.name, change.wanted
    assert change.live is not None
    refuse_dependents(conn, spec, change.live.name, name)
    clause = retype_clause(name, wanted.type)
    if not rewrites(conn, spec, clause, renames):
        plan.add(Phase.CHANGE, brief(spec, alter(spec) + clause))
        after = change.live.model_copy(update={"name": name, "type": wanted.type})
        if after.default != wanted.default:
            plan.add(Phase.CHANGE, brief(spec, set_default(spec, change.declared)))
        if after.nullable and not wanted.nullable:
            plan_not_null(plan, spec, name, change.declared.backfill)
        return
    Retype(spec, change.declared, change.live.name).plan(conn, plan, live)


def refuse_dependents(conn: psycopg.Connection, spec: TableSpec, live_name: str, name: str) -> None:
    """Views, policies, foreign keys and the primary key on the column: a new type would break them, and
    PostgreSQL refuses to retype a column they use. Named before anything changes."""
    refuse_if_any(
        conn,
        spec,
        "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
        "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "LEFT JOIN pg_constraint k ON d.classid = 'pg_constraint'::regclass AND k.oid = d.objid "
        "WHERE d.refobjid = to_regclass(%s) AND a.attname = %s AND d.deptype = 'n' "
        "AND d.classid <> 'pg_class'::regclass AND coalesce(k.contype, 'x') NOT IN ('c', 'u') "
        "AND NOT (d.classid = 'pg_attrdef'::regclass) ORDER BY 1",
        (qualified(spec.schema_name, spec.name).as_string(conn), live_name),
        f"column {name} cannot change type while {{}} use(s) it; change or drop those first",
    )


@dataclass(frozen=True)
class Retype:
    """A column retyped by a copy: new column, trigger, backfill, indexes, verification, swap."""

    spec: TableSpec
    declared: ColumnSpec
    live_name: str  # its name before a rename in the same plan

    @property
    def copy(self) -> str:
        return bounded(f"{self.declared.name}_retyped")

    @property
    def sync(self) -> str:
        return bounded(f"{self.spec.name}_{self.declared.name}_retype_sync")

    @property
    def kept(self) -> str:
        return bounded(f"{self.declared.name}_before_retype")

    def cast(self, source: sql.Composable) -> sql.Composable:
        return sql.SQL("({})::{}").format(source, sql.SQL(self.declared.type))

    def plan(self, conn: psycopg.Connection, plan: Plan, live: LiveTable) -> None:
        spec, name = self.spec, self.declared.name
        copy = self.declared.model_copy(update={"name": self.copy, "nullable": True, "default": None})
        body = sql.SQL("BEGIN NEW.{} := {}; RETURN NEW; END").format(
            column(self.copy), self.cast(sql.SQL("NEW.{}").format(column(name)))
        )
        plan.add(
            Phase.CHANGE,
            brief(spec, add_column_statement(spec, copy, if_not_exists=True)),
            *row_trigger(spec, self.sync, body.as_string(conn)),
        )
        plan.add(Phase.BACKFILL, self.backfill())
        indexes = self.indexes(conn)
        plan.add(Phase.BUILD_NEW, *(build for _, _, build in indexes))
        if not self.declared.nullable:
            guard = guard_name(spec, self.copy)
            plan.add(
                Phase.GUARD,
                brief(
                    spec,
                    alter(spec)
                    + sql.SQL("ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
                        sql.Identifier(guard), column(self.copy)
                    ),
                ),
            )
            plan.add(Phase.VALIDATE, validate(spec, guard))
        plan.add(Phase.VALIDATE, self.verification())
        checks = self.checks_on_column(conn)
        plan.add(Phase.SWAP, *self.swap(indexes, checks))
        plan.add(Phase.REVALIDATE, *(validate(spec, check.name) for check in checks))
        plan.remade_checks |= {check.name for check in checks}

    @property
    def table(self) -> sql.Identifier:
        return qualified(self.spec.schema_name, self.spec.name)

    def backfill(self) -> Operation:
        name, copy = column(self.declared.name), column(self.copy)

        def statement(first: sql.Composable, end: sql.Composable) -> Statement:
            return sql.SQL(
                "UPDATE {t} SET {copy} = {cast} WHERE ctid >= {first}::tid AND ctid < {end}::tid "
                "AND {copy} IS DISTINCT FROM {cast}"
            ).format(t=self.table, copy=copy, cast=self.cast(name), first=first, end=end)

        return batched(Batches(on(self.spec, Lock.ROW_EXCLUSIVE), statement, BATCH_PAGES), Work.BACKFILL)

    def verification(self) -> Operation:
        """Count and checksum of the converted old column and of the copy, in one snapshot: the swap waits for
        them to agree (the trigger keeps them equal for every row written meanwhile)."""
        old_text = sql.SQL("{}::text").format(self.cast(column(self.declared.name)))
        new_text = sql.SQL("{}::text").format(column(self.copy))

        def digest(value: sql.Composable) -> sql.Composable:
            return sql.SQL(
                "coalesce(sum(('x' || substr(md5(coalesce({}, '')), 1, 16))::bit(64)::bigint::numeric), 0)"
            ).format(value)

        check = sql.SQL(
            "DO $verify$ DECLARE rows bigint; differ bigint; old numeric; new numeric; BEGIN "
            "SELECT count(*), count(*) FILTER (WHERE {copy} IS DISTINCT FROM {cast}), {old}, {new} "
            "INTO rows, differ, old, new FROM {t}; "
            "IF differ > 0 OR old <> new THEN RAISE EXCEPTION 'the retyped copy of % differs in % of % rows "
            "(checksums % and %)', {label}, differ, rows, old, new; END IF; END $verify$"
        ).format(
            copy=column(self.copy),
            cast=self.cast(column(self.declared.name)),
            old=digest(old_text),
            new=digest(new_text),
            t=self.table,
            label=sql.Literal(f"{self.spec.name}.{self.declared.name}"),
        )
        return Operation(check, Transaction.OWN, locks=(on(self.spec, Lock.ACCESS_SHARE),), work=Work.SCAN)

    def indexes(self, conn: psycopg.Connection) -> list[tuple[str, str, Operation]]:
        """(index, its copy's name, the copy's CONCURRENTLY build) for each index on the old column whose keys
        are plain columns; an index with the column in an expression or predicate is refused."""
        rows = conn.execute(
            "SELECT c.relname, i.indisunique, i.indisprimary, am.amname, "
            "ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o) "
            "      LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o), "
            "i.indexprs IS NOT NULL, pg_get_expr(i.indpred, i.indrelid) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
            "WHERE i.indrelid = to_regclass(%s) AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = "
            "i.indrelid AND a.attname = %s AND (a.attnum = ANY(i.indkey) OR pg_get_expr(i.indpred, i.indrelid) "
            "LIKE '%%' || a.attname || '%%'))",
            (self.table.as_string(conn), self.live_name),
        ).fetchall()
        planned = []
        for index, unique, _, method, keys, expressions, predicate in rows:
            if expressions or (predicate and self.live_name in predicate):
                raise ProviderError(
                    f"table {self.spec.schema_name}.{self.spec.name}: index {index} uses column {self.declared.name} "
                    "in an expression or predicate; drop it before the type change and declare it again after"
                )
            copy_name = bounded(f"{index}_retyped")
            copied = [self.copy if key in (self.live_name, self.declared.name) else key for key in keys]
            build = sql.SQL("CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING {} ({}){}").format(
                sql.SQL("UNIQUE " if unique else ""),
                sql.Identifier(copy_name),
                self.table,
                sql.SQL(method),
                columns_list(copied),
                sql.SQL(" WHERE {}").format(sql.SQL(predicate)) if predicate else sql.SQL(""),
            )
            cleanup = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                qualified(self.spec.schema_name, copy_name)
            )
            operation = Operation(
                build,
                Transaction.NONE,
                cleanup=cleanup,
                locks=(on(self.spec, Lock.SHARE_UPDATE_EXCLUSIVE),),
                work=Work.SCAN,
            )
            planned.append((str(index), copy_name, operation))
        return planned

    def checks_on_column(self, conn: psycopg.Connection) -> list[CheckSpec]:
        """The declared checks that use the column: dropped with the old one, made again on the new one."""
        names = {
            str(name)
            for (name,) in conn.execute(
                "SELECT k.conname FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid "
                "AND a.attnum = ANY(k.conkey) WHERE k.conrelid = to_regclass(%s) AND k.contype = 'c' "
                "AND a.attname = %s",
                (self.table.as_string(conn), self.live_name),
            )
        }
        return [check for check in self.spec.checks if check.name in names]

    def swap(self, indexes: list[tuple[str, str, Operation]], checks: list[CheckSpec]) -> list[Operation]:
        """One short transaction: the copy takes the column's name, default and NOT NULL; the old column goes
        with its indexes and checks; the copies of the indexes take their names; the checks come back."""
        spec, name = self.spec, self.declared.name
        statements: list[Statement] = [*(operation.statement for operation in drop_row_trigger(spec, self.sync))]
        if not self.declared.nullable:
            statements += [op.statement for op in set_not_null(spec, self.copy, guard_name(spec, self.copy))]
        statements += [
            alter(spec) + sql.SQL("RENAME COLUMN {} TO {}").format(column(name), column(self.kept)),
            alter(spec) + sql.SQL("RENAME COLUMN {} TO {}").format(column(self.copy), column(name)),
        ]
        if self.declared.default is not None:
            statements.append(set_default(spec, self.declared))
        statements.append(alter(spec) + sql.SQL("DROP COLUMN {}").format(column(self.kept)))
        for index, copy_name, _ in indexes:
            statements.append(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    qualified(spec.schema_name, copy_name), sql.Identifier(index)
                )
            )
        uniques = {unique.name for unique in spec.uniques}
        statements += [
            alter(spec)
            + sql.SQL("ADD CONSTRAINT {} UNIQUE USING INDEX {}").format(sql.Identifier(index), sql.Identifier(index))
            for index, _, _ in indexes
            if index in uniques
        ]
        statements += [alter(spec) + sql.SQL("ADD ") + check_clause(check) + sql.SQL(" NOT VALID") for check in checks]
        return [brief(spec, statement) for statement in statements]


# --- keys -------------------------------------------------------------------------------------------------


def index_build(spec: TableSpec, index: str, columns: list[str], table: str | None = None) -> list[Operation]:
    """A unique index built CONCURRENTLY (one of the same name left by an interrupted build is made again)."""
    drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(qualified(spec.schema_name, index))
    build = sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(index), qualified(spec.schema_name, table or spec.name), columns_list(columns)
    )
    lock = (on(spec, Lock.SHARE_UPDATE_EXCLUSIVE, table),)
    return [
        Operation(drop, Transaction.NONE, locks=lock),
        Operation(build, Transaction.NONE, cleanup=drop, locks=lock, work=Work.SCAN),
    ]


def constraint_exists(conn: psycopg.Connection, schema: str, table: str, name: str) -> bool:
    return bool(
        scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s)",
            (qualified(schema, table).as_string(conn), name),
        )
    )


def plan_key(
    conn: psycopg.Connection,
    plan: Plan,
    spec: TableSpec,
    live: LiveTable,
    name: str,
    columns: list[str],
    kind: sql.SQL,
    replaces: str | None,
) -> None:
    """A UNIQUE or PRIMARY KEY constraint `name` on `columns`, replacing the constraint `replaces` (or none):
    indexes built CONCURRENTLY first; then, briefly, the old constraint dropped and the new one made USING
    its index (on a partitioned table: on each partition, then on the parent, which attaches them)."""
    drop = [alter(spec) + sql.SQL("DROP CONSTRAINT {}").format(sql.Identifier(replaces))] if replaces else []
    if replaces:
        refuse_referenced(conn, spec, replaces)
    if not live.partitioned:
        building = bounded(f"{name}_building")
        plan.add(Phase.BUILD, *index_build(spec, building, columns))
        make = alter(spec) + sql.SQL("ADD CONSTRAINT {} {} USING INDEX {}").format(
            sql.Identifier(name), kind, sql.Identifier(building)
        )
        plan.add(Phase.SWAP, *(brief(spec, statement) for statement in [*drop, make]))
        return
    leaves = partitions(conn, spec)
    statements: list[Statement] = list(drop)
    for leaf in leaves:
        index = bounded(f"{leaf}_{name}")
        plan.add(Phase.BUILD, *index_build(spec, index, columns, table=leaf))
        statements.append(
            alter(spec, leaf)
            + sql.SQL("ADD CONSTRAINT {} {} USING INDEX {}").format(sql.Identifier(index), kind, sql.Identifier(index))
        )
    statements.append(
        alter(spec) + sql.SQL("ADD CONSTRAINT {} {} ({})").format(sql.Identifier(name), kind, columns_list(columns))
    )
    locks = tuple(on(spec, Lock.ACCESS_EXCLUSIVE, leaf) for leaf in leaves)
    plan.add(Phase.SWAP, *(brief(spec, statement, *locks) for statement in statements))


def refuse_referenced(conn: psycopg.Connection, spec: TableSpec, key: str) -> None:
    """Foreign keys that point at a key about to be replaced would have to go with it: named, nothing changed."""
    refuse_if_any(
        conn,
        spec,
        "SELECT f.conname || ' on ' || f.conrelid::regclass::text FROM pg_constraint k "
        "JOIN pg_constraint f ON f.contype = 'f' AND f.conindid = k.conindid "
        "WHERE k.conrelid = to_regclass(%s) AND k.conname = %s ORDER BY 1",
        (qualified(spec.schema_name, spec.name).as_string(conn), key),
        f"key {key} changes, but foreign key(s) {{}} point at it; change them to the new key first",
    )


def plan_keys(conn: psycopg.Connection, plan: Plan, spec: TableSpec, live: LiveTable) -> None:
    if live.primary_key != spec.primary_key:
        pkey = bounded(f"{spec.name}_pkey")
        current = primary_key_name(conn, spec)
        plan_key(conn, plan, spec, live, pkey, spec.primary_key, sql.SQL("PRIMARY KEY"), current)
    for unique in spec.uniques:
        existing = live.uniques.get(unique.name)
        if existing != unique:
            replaces = unique.name if existing is not None else None
            plan_key(conn, plan, spec, live, unique.name, unique.columns, sql.SQL("UNIQUE"), replaces)


def primary_key_name(conn: psycopg.Connection, spec: TableSpec) -> str | None:
    found = scalar(
        conn,
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'",
        (qualified(spec.schema_name, spec.name).as_string(conn),),
    )
    return None if found is None else str(found)


def plan_checks(plan: Plan, spec: TableSpec, live: LiveTable, wanted_checks: dict[str, str], skip: set[str]) -> None:
    for check in spec.checks:
        if check.name in skip:
            continue
        if live.checks.get(check.name) != wanted_checks.get(check.name):
            drop = [alter(spec) + sql.SQL("DROP CONSTRAINT {}").format(sql.Identifier(check.name))]
            add = alter(spec) + sql.SQL("ADD ") + check_clause(check) + sql.SQL(" NOT VALID")
            statements = [*(drop if check.name in live.checks else []), add]
            plan.add(Phase.CHANGE, *(brief(spec, statement) for statement in statements))
            plan.add(Phase.VALIDATE, validate(spec, check.name))
        elif check.name in live.not_validated:
            plan.add(Phase.VALIDATE, validate(spec, check.name))


def plan_foreign_keys(conn: psycopg.Connection, plan: Plan, spec: TableSpec, live: LiveTable) -> None:
    for fk in spec.foreign_keys:
        current = live.foreign_keys.get(fk.name)
        if current == fk:
            if fk.name in live.not_validated:
                plan.add(Phase.VALIDATE, validate(spec, fk.name, on_referenced(fk, Lock.ROW_SHARE)))
            continue
        if current is not None:
            drop = alter(spec) + sql.SQL("DROP CONSTRAINT {}").format(sql.Identifier(fk.name))
            plan.add(Phase.CHANGE, brief(spec, drop, on_referenced(current, Lock.ACCESS_EXCLUSIVE)))
        if live.partitioned:
            plan_partitioned_foreign_key(conn, plan, spec, fk)
            continue
        add = alter(spec) + sql.SQL("ADD ") + foreign_key_clause(fk) + sql.SQL(" NOT VALID")
        plan.add(Phase.CHANGE, Operation(add, locks=share_row_exclusive(spec, fk)))
        plan.add(Phase.VALIDATE, validate(spec, fk.name, on_referenced(fk, Lock.ROW_SHARE)))


def on_referenced(fk: ForeignKeySpec, lock: Lock) -> TableLock:
    return TableLock(fk.ref_schema, fk.ref_table, lock)


def share_row_exclusive(spec: TableSpec, fk: ForeignKeySpec, table: str | None = None) -> tuple[TableLock, ...]:
    return (on(spec, Lock.SHARE_ROW_EXCLUSIVE, table), on_referenced(fk, Lock.SHARE_ROW_EXCLUSIVE))


def plan_partitioned_foreign_key(conn: psycopg.Connection, plan: Plan, spec: TableSpec, fk: ForeignKeySpec) -> None:
    """Each partition's key NOT VALID, validated (SHARE UPDATE EXCLUSIVE: writers go on), renamed into place;
    then the parent's, which attaches them without a scan (ACCESS EXCLUSIVE on the referenced table for
    the catalog change, SHARE ROW EXCLUSIVE on the partitions)."""
    leaves = partitions(conn, spec)
    for leaf in leaves:
        part_key = fk.model_copy(update={"name": bounded(f"{leaf}_{fk.name}")})
        if not constraint_exists(conn, spec.schema_name, leaf, part_key.name):
            add = alter(spec, leaf) + sql.SQL("ADD ") + foreign_key_clause(part_key) + sql.SQL(" NOT VALID")
            plan.add(Phase.CHANGE, Operation(add, locks=share_row_exclusive(spec, fk, leaf)))
        plan.add(Phase.VALIDATE, validate(spec, part_key.name, on_referenced(fk, Lock.ROW_SHARE), table=leaf))
    attach = alter(spec) + sql.SQL("ADD ") + foreign_key_clause(fk)
    locks = (
        on(spec, Lock.SHARE_ROW_EXCLUSIVE),
        *(on(spec, Lock.SHARE_ROW_EXCLUSIVE, leaf) for leaf in leaves),
        on_referenced(fk, Lock.ACCESS_EXCLUSIVE),
    )
    plan.add(Phase.SWAP, Operation(attach, locks=locks))


# --- the whole table ----------------------------------------------------------------------------------


def plan_changes(
    conn: psycopg.Connection,
    spec: TableSpec,
    live: LiveTable,
    wanted: tuple[dict[str, ColumnSpec], dict[str, str]],
    dropped: list[str],
    adopted: bool = False,
) -> Plan:
    """What it takes to go from the live table to the spec. Row level security is the table's RowSecurity's
    (kinds/row_security.py); an adopted table keeps its owner."""
    wanted_columns, wanted_checks = wanted
    plan = Plan()
    plan_columns(conn, plan, spec, live, wanted_columns)
    gone = [name for name in dropped if name in live.columns]
    plan.data_loss += [f"column {name} would be dropped" for name in gone]
    plan.add(
        Phase.CHANGE, *(brief(spec, alter(spec) + sql.SQL("DROP COLUMN {}").format(column(name))) for name in gone)
    )
    plan_keys(conn, plan, spec, live)
    plan_checks(plan, spec, live, wanted_checks, plan.remade_checks)
    plan_foreign_keys(conn, plan, spec, live)
    if spec.owner is not None and live.owner != spec.owner and not adopted:
        plan.add(Phase.CHANGE, brief(spec, alter(spec) + sql.SQL("OWNER TO {}").format(sql.Identifier(spec.owner))))
    return plan
