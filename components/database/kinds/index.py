"""thorbisdb:db:Index — an index, built without blocking writers.

On a table that holds rows the index is built CONCURRENTLY (outside a transaction); on a partitioned
table it is made ON ONLY the parent, built concurrently on each partition and attached. A build that
failed leaves an INVALID index behind: it is found (`valid: false` is drift) and rebuilt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import psycopg
import pulumi
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, qualified
from components.database.session import Statement, connect, run_ddl, scalar
from components.kind import ProviderError, Spec
from components.resource import declared_outputs, provider_inputs

TOKEN = "thorbisdb:db:Index"
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class IndexSpec(Spec):
    schema_name: str
    table: str
    name: str = Field(max_length=63)
    keys: list[str] = Field(min_length=1, description="Column names, or expressions/opclasses as SQL text.")
    method: Literal["btree", "gin", "gist", "hash", "brin"] = "btree"
    unique: bool = False
    include: list[str] = Field(default_factory=list)
    where: str | None = Field(default=None, description="Partial-index predicate: IMMUTABLE functions only.")


def key_sql(key: str) -> sql.Composable:
    return sql.Identifier(key) if _PLAIN_NAME.match(key) else sql.SQL(key)


def create_statement(
    spec: IndexSpec, table: sql.Composable, name: sql.Identifier, *, concurrently: bool, only: bool = False
) -> Statement:
    statement = sql.SQL("CREATE {unique}INDEX {concurrently}{name} ON {only}{table} USING {method} ({keys})").format(
        unique=sql.SQL("UNIQUE " if spec.unique else ""),
        concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=name,
        only=sql.SQL("ONLY " if only else ""),
        table=table,
        method=sql.SQL(spec.method),
        keys=sql.SQL(", ").join(key_sql(key) for key in spec.keys),
    )
    if spec.include:
        statement += sql.SQL(" INCLUDE ({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in spec.include))
    if spec.where:
        statement += sql.SQL(" WHERE {}").format(sql.SQL(spec.where))
    return statement


def definition_tail(definition: str) -> str:
    """`UNIQUE? ... USING btree (a, b) WHERE ...`, without the index's and table's names."""
    unique = definition.startswith("CREATE UNIQUE")
    return ("UNIQUE " if unique else "") + definition[definition.index(" USING ") + 1 :]


def live_index(conn: psycopg.Connection, spec: IndexSpec) -> tuple[str, bool] | None:
    row = conn.execute(
        "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (spec.schema_name, spec.name),
    ).fetchone()
    return None if row is None else (definition_tail(row[0]), bool(row[1]))


def canonical(conn: psycopg.Connection, spec: IndexSpec) -> str:
    """The server's rendering of the declared index, built on a temporary copy of the table."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                sql.SQL("CREATE TEMPORARY TABLE thorbis_index_shadow (LIKE {})").format(
                    qualified(spec.schema_name, spec.table)
                )
            )
            shadow = sql.Identifier("pg_temp", "thorbis_index_shadow")
            conn.execute(create_statement(spec, shadow, sql.Identifier("thorbis_index_shadow_idx"), concurrently=False))
            definition = scalar(conn, "SELECT pg_get_indexdef('pg_temp.thorbis_index_shadow_idx'::regclass)")
            return definition_tail(str(definition))
    except psycopg.Error as error:
        raise ProviderError(f"index {spec.name}: the declared index is not valid: {str(error).strip()}") from error


def partitions(conn: psycopg.Connection, spec: IndexSpec) -> list[str]:
    relation = sql.Identifier(spec.schema_name, spec.table).as_string(conn)
    return [
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s) ORDER BY 1",
            (relation,),
        )
    ]


def is_partitioned(conn: psycopg.Connection, spec: IndexSpec) -> bool:
    relation = sql.Identifier(spec.schema_name, spec.table).as_string(conn)
    return bool(scalar(conn, "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)", (relation,)))


def has_rows(conn: psycopg.Connection, spec: IndexSpec) -> bool:
    table = qualified(spec.schema_name, spec.table)
    return bool(scalar(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)))


class IndexKind(DatabaseKind[IndexSpec]):
    token = TOKEN
    spec_type = IndexSpec
    replace_on = frozenset({"schemaName", "table", "name"})

    def observe(self, resource_id: str, spec: IndexSpec) -> dict[str, Any] | None:
        with connect(self.target) as conn:
            live = live_index(conn, spec)
            if live is None:
                return None
            definition, valid = live
            if definition == canonical(conn, spec):
                return {"valid": valid}
            return {"keys": [definition], "valid": valid}  # a different index under our name: drift

    def drifted(self, old_state: dict[str, Any], spec: IndexSpec) -> list[str]:
        return [] if old_state.get("valid", True) else ["valid"]

    def create(self, spec: IndexSpec) -> tuple[str, dict[str, Any]]:
        with connect(self.target) as conn:
            self.build(conn, spec)
        return f"{spec.schema_name}.{spec.name}", {"valid": True}

    def update(self, resource_id: str, old: dict[str, Any], spec: IndexSpec) -> dict[str, Any]:
        with connect(self.target) as conn:
            self.build(conn, spec)
        return {"valid": True}

    def build(self, conn: psycopg.Connection, spec: IndexSpec) -> None:
        """Create the index, or rebuild it when it is INVALID or differs from the spec."""
        live = live_index(conn, spec)
        if live is not None and live[1] and live[0] == canonical(conn, spec):
            return
        if live is not None:
            self.drop(conn, spec)
        if is_partitioned(conn, spec):
            self.build_partitioned(conn, spec)
            return
        name, table = sql.Identifier(spec.name), qualified(spec.schema_name, spec.table)
        concurrently = has_rows(conn, spec)
        run_ddl(
            conn,
            [create_statement(spec, table, name, concurrently=concurrently)],
            self.target.lock_timeout,
            transactional=not concurrently,
            what=f"index {spec.name}",
            before_retry=partial(self.drop, conn, spec),  # a failed CONCURRENTLY build leaves an INVALID index
        )
        if live_index(conn, spec) == (canonical(conn, spec), False):
            raise ProviderError(f"index {spec.name} was built INVALID (a duplicate row?); it is rebuilt on the next up")

    def build_partitioned(self, conn: psycopg.Connection, spec: IndexSpec) -> None:
        parent_index = qualified(spec.schema_name, spec.name)
        parent = qualified(spec.schema_name, spec.table)
        run_ddl(
            conn,
            [create_statement(spec, parent, sql.Identifier(spec.name), concurrently=False, only=True)],
            self.target.lock_timeout,
            what=f"index {spec.name}",
        )
        for partition in partitions(conn, spec):
            part_name = f"{partition}_{spec.name}"[:63]
            part_spec = spec.model_copy(update={"table": partition, "name": part_name})
            if live_index(conn, part_spec) is None:
                run_ddl(
                    conn,
                    [
                        create_statement(
                            part_spec,
                            qualified(spec.schema_name, partition),
                            sql.Identifier(part_name),
                            concurrently=True,
                        )
                    ],
                    self.target.lock_timeout,
                    transactional=False,
                    what=f"index {part_name}",
                    before_retry=partial(self.drop, conn, part_spec),
                )
            run_ddl(
                conn,
                [
                    sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                        parent_index, qualified(spec.schema_name, part_name)
                    )
                ],
                self.target.lock_timeout,
                what=f"attach index {part_name}",
            )

    def drop(self, conn: psycopg.Connection, spec: IndexSpec) -> None:
        concurrently = not is_partitioned(conn, spec)
        run_ddl(
            conn,
            [
                sql.SQL("DROP INDEX {}IF EXISTS {}").format(
                    sql.SQL("CONCURRENTLY " if concurrently else ""), qualified(spec.schema_name, spec.name)
                )
            ],
            self.target.lock_timeout,
            transactional=not concurrently,
            what=f"drop index {spec.name}",
        )

    def delete(self, resource_id: str, spec: IndexSpec) -> None:
        with connect(self.target) as conn:
            self.drop(conn, spec)


@dataclass
class IndexArgs:
    schema_name: pulumi.Input[str]
    table: pulumi.Input[str]
    name: pulumi.Input[str]
    keys: pulumi.Input[list[str]]
    method: pulumi.Input[str] = "btree"
    unique: pulumi.Input[bool] = False
    include: pulumi.Input[list[str]] = field(default_factory=list)
    where: pulumi.Input[str] | None = None


class Index(pulumi.CustomResource):
    valid: pulumi.Output[bool]

    def __init__(self, name: str, args: IndexArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, {**provider_inputs(args), **declared_outputs("valid")}, opts)
