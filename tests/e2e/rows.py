"""Valid rows for every table, synthesized from the schema data (sql/schema), one company at a time.

A NOT NULL column without a default gets the value in `row_overrides.yaml` if there is one, else the
first value of a simple `col IN (...)` CHECK, else a value by its type. Foreign keys point at the same
company's rows; nullable ones stay NULL. No table is special-cased here: the few CHECKs no generic rule
satisfies are data, in row_overrides.yaml.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.types.json import Jsonb

from components.database.declared.model import TABLE_SCHEMA, TENANT_COLUMN, ColumnData, SchemaModel, TableData
from components.database.table_shape import ForeignKeySpec

OVERRIDES = Path(__file__).with_name("row_overrides.yaml")
IN_LIST = re.compile(r"^\s*(\w+)\s+IN\s*\(([^()]*)\)\s*$", re.IGNORECASE)
PARENT = "{parent}"  # an override value: fill this nullable foreign key with the company's parent row
COMPANY = "{company}"  # in an override value: the id of the world's company
QUOTED = re.compile(r"'((?:[^']|'')*)'")
# In the future, so that `expires_at > created_at` (created_at defaults to now()) holds.
EPOCH = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)

Row = dict[str, Any]  # a row as to_jsonb() returns it: column -> JSON value
World = dict[str, Row]  # table -> one company's row in it


def typed_value(type_name: str, column: str, tag: str, position: int) -> str:
    """A value of a PostgreSQL type as text (the server casts it). Time columns later in a table get
    later values, so `ends_at > starts_at` holds when a table declares start before end."""
    base = type_name.split("(")[0].strip().lower()
    if base.endswith("[]"):
        return "{" + typed_value(base[:-2], column, tag, position) + "}"
    by_type: dict[str, Callable[[], str]] = {
        "uuid": lambda: str(uuid.uuid4()),
        "text": lambda: f"{column}_{tag}",
        "numeric": lambda: "1",
        "integer": lambda: "1",
        "smallint": lambda: "1",
        "bigint": lambda: "1",
        "boolean": lambda: "false",
        "timestamptz": lambda: (EPOCH + timedelta(minutes=position)).isoformat(),
        "date": lambda: (EPOCH.date() + timedelta(days=position)).isoformat(),
        "time": lambda: "08:00",
        "jsonb": lambda: "{}",
        "inet": lambda: "192.0.2.1",
        "extensions.ltree": lambda: f"n_{tag}",
    }
    if base not in by_type:
        raise LookupError(f"no generic value for type {type_name} (column {column}): add one to {OVERRIDES.name}")
    return by_type[base]()


def check_choices(table: TableData) -> dict[str, str]:
    """The first allowed value of every column constrained by a simple `col IN ('a', 'b')` CHECK."""
    choices: dict[str, str] = {}
    for check in table.checks:
        match = IN_LIST.match(" ".join(check.expression.split()))
        if match:
            choices[match.group(1)] = QUOTED.findall(match.group(2))[0].replace("''", "'")
    return choices


def pointing(fk: ForeignKeySpec, parent: Row) -> dict[str, Any]:
    return {column: parent[ref] for column, ref in zip(fk.columns, fk.ref_columns, strict=True)}


def merge(table: TableData, values: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Add foreign-key values; two keys that share a column must agree on it (composite FKs)."""
    for column, value in more.items():
        if column in values and str(values[column]) != str(value):
            raise ValueError(f"{table.name}.{column}: its foreign keys disagree ({values[column]} vs {value})")
        values[column] = value


def relation(table: str) -> sql.Composable:
    return sql.Identifier(TABLE_SCHEMA, table)


def insert_statement(table: str, columns: Iterable[str]) -> sql.Composed:
    names = list(columns)
    return sql.SQL("INSERT INTO {} AS r ({}) VALUES ({})").format(
        relation(table),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )


def insert(conn: psycopg.Connection[Any], table: str, values: Mapping[str, Any]) -> Row:
    """INSERT one row and return it as JSON (to_jsonb), whoever `conn` is connected or SET ROLE as."""
    statement = insert_statement(table, values) + sql.SQL(" RETURNING to_jsonb(r.*)")
    row = conn.execute(statement, [str(value) for value in values.values()]).fetchone()
    assert row is not None
    return dict(row[0])


def insert_only(conn: psycopg.Connection[Any], table: str, values: Mapping[str, Any]) -> None:
    """INSERT without RETURNING, so that only the INSERT policy is asked (RETURNING asks SELECT's too)."""
    conn.execute(insert_statement(table, values), [str(value) for value in values.values()])


def reinsert(conn: psycopg.Connection[Any], table: str, row: Row) -> None:
    """INSERT a row back exactly as to_jsonb() returned it."""
    conn.execute(
        sql.SQL("INSERT INTO {0} SELECT * FROM jsonb_populate_record(NULL::{0}, %s)").format(relation(table)),
        (Jsonb(row),),
    )


def where_key(table: TableData, row: Row) -> tuple[sql.Composable, list[str]]:
    condition = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.primary_key)
    return condition, [str(row[c]) for c in table.primary_key]


def key_of(table: TableData, row: Row) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in table.primary_key)


def update_row(conn: psycopg.Connection[Any], table: TableData, row: Row) -> int:
    """UPDATE the row (its first non-key column set to itself); the number of rows it touched."""
    column = sql.Identifier(next(c.name for c in table.columns if c.name not in table.primary_key))
    condition, params = where_key(table, row)
    statement = sql.SQL("UPDATE {} SET {} = {} WHERE {}").format(relation(table.name), column, column, condition)
    return conn.execute(statement, params).rowcount


def delete_row(conn: psycopg.Connection[Any], table: TableData, row: Row) -> int:
    condition, params = where_key(table, row)
    return conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(relation(table.name), condition), params).rowcount


def visible_keys(conn: psycopg.Connection[Any], table: TableData) -> set[tuple[str, ...]]:
    statement = sql.SQL("SELECT {} FROM {}").format(
        # to_jsonb, so keys compare equal to those of rows returned as JSON (timestamps in ISO form)
        sql.SQL(", ").join(sql.SQL("to_jsonb({}) #>> '{{}}'").format(sql.Identifier(c)) for c in table.primary_key),
        relation(table.name),
    )
    return {tuple(row) for row in conn.execute(statement)}


def load_overrides(path: Path = OVERRIDES) -> dict[str, dict[str, str]]:
    content = yaml.safe_load(path.read_text()) or {}
    return {table: {column: str(value) for column, value in columns.items()} for table, columns in content.items()}


@dataclass
class Synthesizer:
    """Builds rows of any table of `schema` for the company whose rows a World holds."""

    schema: SchemaModel
    overrides: dict[str, dict[str, str]] = field(default_factory=load_overrides)

    def __post_init__(self) -> None:
        unknown = {t for t in self.overrides if t not in {table.name for table in self.schema.tables}}
        assert not unknown, f"{OVERRIDES.name} names tables the schema does not have: {sorted(unknown)}"

    @property
    def tenant_table(self) -> TableData:
        return next(table for table in self.schema.tables if table.tenancy == "self")

    def values(self, table: TableData, world: World) -> dict[str, Any]:
        """Explicit column values of a new row of `table` that belongs to the world's company."""
        tag = secrets.token_hex(4)
        overrides = self.overrides.get(table.name, {})
        choices = check_choices(table)
        fk_columns = {column for fk in table.foreign_key_constraints for column in fk.columns}
        values: dict[str, Any] = {}
        for position, column in enumerate(table.columns):
            if column.name in overrides and overrides[column.name] != PARENT:
                company = str(world[self.tenant_table.name]["id"]) if COMPANY in overrides[column.name] else ""
                values[column.name] = overrides[column.name].replace("{tag}", tag).replace(COMPANY, company)
            elif not (column.name in fk_columns or column.nullable or column.default is not None):
                values[column.name] = choices.get(column.name) or typed_value(column.type, column.name, tag, position)
        for fk in table.foreign_key_constraints:
            wanted = any(overrides.get(c) == PARENT or not table.column(c).nullable for c in fk.columns)
            if wanted and fk.ref_table != table.name:
                merge(table, values, pointing(fk, world[fk.ref_table]))
        if table.tenancy == "self" and table.name in world:  # the tenant row itself carries the company
            values["id"] = world[table.name]["id"]
        return values

    def world(self, conn: psycopg.Connection[Any]) -> World:
        """One row per table for a new company, inserted in foreign-key order."""
        world: World = {}
        for table in self.schema.in_dependency_order():
            try:
                world[table.name] = insert(conn, table.name, self.values(table, world))
            except psycopg.Error as error:
                raise AssertionError(f"{table.name}: no valid row ({error}); see {OVERRIDES.name}") from error
        return world

    def fresh(self, conn: psycopg.Connection[Any], table: TableData, world: World) -> Row | None:
        """INSERT a second row of `table` for the world's company, with new parent rows where a unique key
        would otherwise repeat the world's row; None when that key is the company alone (one row each)."""
        values = self.values(table, world)
        for key in [table.primary_key, *(unique.columns for unique in table.unique)]:
            # a new parent changes the key only through the FK's own column, never the company
            candidates = [fk for fk in table.foreign_key_constraints if set(fk.columns) & (set(key) - {TENANT_COLUMN})]
            for fk in sorted(candidates, key=lambda fk: -len(fk.columns)):
                if not self.repeats(table, key, values, world[table.name]):
                    break
                if fk.ref_table in (self.tenant_table.name, table.name):
                    continue
                parent = self.fresh(conn, self.schema.table(fk.ref_table), world)
                if parent is None:
                    return None
                values.update(pointing(fk, parent))
            if self.repeats(table, key, values, world[table.name]):
                return None
        return insert(conn, table.name, values)

    def repeats(self, table: TableData, key: list[str], values: Mapping[str, Any], row: Row) -> bool:
        """Whether a new row with `values` would have the same `key` as `row` (a unique violation)."""
        return all(
            str(values[column]) == str(row[column])
            if column in values
            else not self.fresh_default(table.column(column))
            for column in key
        )

    @staticmethod
    def fresh_default(column: ColumnData) -> bool:
        """A column left out gets a value no other row has: NULL (never equal) or a random default."""
        return column.nullable or "random" in (column.default or "")
