"""A table's shape, as one place for the Table kind (kinds/table.py) and its online conversion
(conversion.py): the spec of a table, how the catalog shows a live one, and the DDL that makes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import qualified
from components.database.session import Statement
from components.kind import ProviderError, Replace, Spec

OnDelete = Literal["cascade", "restrict", "set null", "no action"]
DELETE_RULES = {"c": "cascade", "r": "restrict", "n": "set null", "a": "no action", "d": "set default"}


class ColumnSpec(Spec):
    name: str
    type: str
    nullable: bool = True
    default: str | None = None
    renamed_from: str | None = Field(default=None, description="The column's name before: `up` renames it.")
    backfill: str | None = Field(
        default=None, description="SQL expression that fills the existing rows when the column becomes NOT NULL."
    )


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
    schema_name: Replace[str] = Field(description="Schema of the table.")
    name: Replace[str] = Field(description="Table name.")
    owner: str | None = Field(default=None, description="Owning role (NOLOGIN owner of all objects).")
    columns: list[ColumnSpec]
    primary_key: list[str]
    uniques: list[UniqueSpec] = Field(default_factory=list)
    checks: list[CheckSpec] = Field(default_factory=list)
    foreign_keys: list[ForeignKeySpec] = Field(default_factory=list)
    partition: PartitionSpec | None = None
    comment: str | None = None


# --- read: the live table -------------------------------------------------------

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


def holds_rows(conn: psycopg.Connection, schema: str, name: str) -> bool:
    """Whether the table holds a row, read with row_security off: where row level security would hide rows
    from the admin (a role without BYPASSRLS), the read fails instead of finding the table empty."""
    with conn.transaction():
        conn.execute("SET LOCAL row_security = off")
        row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(qualified(schema, name))).fetchone()
    return bool(row and row[0])


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
                on_delete=DELETE_RULES[deltype],  # type: ignore[arg-type]
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


def column_losses(table: str, old: list[str], new: list[str], renamed: dict[str, str]) -> list[str]:
    """Columns that going from `old` to `new` would drop: gone, and not renamed (new name -> old name) either.
    A column that changes type keeps its data (components/database/evolution.py)."""
    kept = set(new) | set(renamed.values())
    return [f"column {table}.{name} would be dropped" for name in old if name not in kept]
