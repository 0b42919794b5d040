"""thorbisdb:db:Index — an index, built without blocking writers.

The index is built CONCURRENTLY (outside a transaction; on an empty table it costs nothing more); on a
partitioned table it is made ON ONLY the parent, built concurrently on each partition and attached. A build that
failed leaves an INVALID index behind: it is found (`valid: false` is drift) and rebuilt.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, qualified
from components.database.ddl import Operation, Transaction, Work
from components.database.locks import Lock, TableLock
from components.database.session import Statement, connect, scalar
from components.kind import Expect, Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:Index"
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class IndexSpec(Spec):
    schema_name: Replace[str]
    table: Replace[str]
    name: Replace[str] = Field(max_length=63)
    keys: list[str] = Field(min_length=1, description="Column names, or expressions/opclasses as SQL text.")
    method: Literal["btree", "gin", "gist", "hash", "brin"] = "btree"
    unique: bool = False
    include: list[str] = Field(default_factory=list)
    where: str | None = Field(default=None, description="Partial-index predicate: IMMUTABLE functions only.")


class IndexStatus(Status):
    valid: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="False: a build failed and left the index INVALID; `up` rebuilds it."
    )
    as_declared: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="False: an index of another definition has the declared name; `up` rebuilds it."
    )
    definition: str | None = Field(default=None, description="The live index, as pg_get_indexdef writes it.")


def key_sql(key: str) -> sql.Composable:
    return sql.Identifier(key) if _PLAIN_NAME.match(key) else sql.SQL(key)


def create_statement(
    spec: IndexSpec, table: sql.Composable, name: sql.Identifier, *, concurrently: bool, only: bool = False
) -> Statement:
    # CONCURRENTLY outside a transaction, IF NOT EXISTS so that a step run again is no error (a leftover of
    # an interrupted build is dropped first: before the retry, and by `build` when it finds it INVALID)
    statement = sql.SQL("CREATE {unique}INDEX {concurrently}{name} ON {only}{table} USING {method} ({keys})").format(
        unique=sql.SQL("UNIQUE " if spec.unique else ""),
        concurrently=sql.SQL("CONCURRENTLY IF NOT EXISTS " if concurrently else ""),
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


def on_table(spec: IndexSpec, lock: Lock, only: bool = False) -> tuple[TableLock, ...]:
    return (TableLock(spec.schema_name, spec.table, lock, only),)


def create_operation(spec: IndexSpec, *, concurrently: bool, only: bool = False) -> Operation:
    """CREATE INDEX on the spec's table: CONCURRENTLY outside a transaction (a failed attempt's INVALID index
    dropped before a retry; builds on one table take turns), or plainly inside one (an empty table, or ON
    ONLY a partitioned table's parent, which reads no row)."""
    table = qualified(spec.schema_name, spec.table)
    statement = create_statement(spec, table, sql.Identifier(spec.name), concurrently=concurrently, only=only)
    if not concurrently:  # ON ONLY locks the parent alone: its partitions' own builds go on meanwhile
        return Operation(statement, locks=on_table(spec, Lock.SHARE, only=only))
    cleanup = drop_statement(qualified(spec.schema_name, spec.name), concurrently=True)
    locks = on_table(spec, Lock.SHARE_UPDATE_EXCLUSIVE)
    return Operation(statement, Transaction.NONE, cleanup=cleanup, locks=locks, work=Work.SCAN)


def drop_statement(index: sql.Identifier, *, concurrently: bool) -> Statement:
    return sql.SQL("DROP INDEX {}IF EXISTS {}").format(sql.SQL("CONCURRENTLY " if concurrently else ""), index)


def drop_operation(spec: IndexSpec, *, concurrently: bool) -> Operation:
    """DROP INDEX: CONCURRENTLY outside a transaction; an index of a partitioned table inside one, because
    PostgreSQL 15 drops a partitioned index only whole (no CONCURRENTLY, and an attached partition's index
    cannot be dropped alone): ACCESS EXCLUSIVE on the table and its partitions, taken up front and held for
    the catalog change only (no row is read)."""
    statement = drop_statement(qualified(spec.schema_name, spec.name), concurrently=concurrently)
    if concurrently:
        return Operation(statement, Transaction.NONE, locks=on_table(spec, Lock.SHARE_UPDATE_EXCLUSIVE))
    return Operation(statement, locks=on_table(spec, Lock.ACCESS_EXCLUSIVE))


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


class IndexKind(DatabaseKind[IndexSpec, IndexStatus]):
    token = TOKEN
    spec_type = IndexSpec
    status_type = IndexStatus

    def observe(
        self, resource_id: str, spec: IndexSpec, recorded: IndexStatus | None = None
    ) -> Observed[IndexStatus] | None:
        with connect(self.target) as conn:
            live = live_index(conn, spec)
            if live is None:
                return None
            definition, valid = live
            status = IndexStatus(valid=valid, as_declared=definition == canonical(conn, spec), definition=definition)
            return Observed({}, status)

    def planned_create(self, spec: IndexSpec) -> list[Operation] | None:
        """As on a table that holds rows (an empty one gets a plain CREATE INDEX; a partitioned one ON ONLY
        the parent, then each partition's, attached)."""
        return [create_operation(spec, concurrently=True)]

    def planned_delete(self, spec: IndexSpec) -> list[Operation] | None:
        return [drop_operation(spec, concurrently=True)]

    def create(self, spec: IndexSpec) -> tuple[str, IndexStatus]:
        return f"{spec.schema_name}.{spec.name}", self.update("", {}, spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: IndexSpec) -> IndexStatus:
        with connect(self.target) as conn:
            self.build(conn, spec)
            live = live_index(conn, spec)
        assert live is not None
        return IndexStatus(valid=True, as_declared=True, definition=live[0])

    def build(self, conn: psycopg.Connection, spec: IndexSpec) -> None:
        """Create the index, or rebuild it when it is INVALID or differs from the spec."""
        live = live_index(conn, spec)
        if live is not None and live[1] and live[0] == canonical(conn, spec):
            return
        what = f"index {spec.name}"
        partitioned = is_partitioned(conn, spec)
        if live is not None:  # dropped first: on a partitioned table, with the partitions' indexes
            self.apply(conn, [drop_operation(spec, concurrently=not partitioned)], what=f"drop index {spec.name}")
        if partitioned:
            self.apply(conn, self.partitioned_operations(conn, spec), what=what)
            return
        self.apply(conn, [create_operation(spec, concurrently=True)], what=what)
        if live_index(conn, spec) == (canonical(conn, spec), False):
            raise ProviderError(f"index {spec.name} was built INVALID (a duplicate row?); it is rebuilt on the next up")

    def partitioned_operations(self, conn: psycopg.Connection, spec: IndexSpec) -> list[Operation]:
        """ON ONLY the parent; then each partition's index, built CONCURRENTLY unless it exists, attached."""
        parent_index = qualified(spec.schema_name, spec.name)
        operations = [create_operation(spec, concurrently=False, only=True)]
        for partition in partitions(conn, spec):
            part_name = f"{partition}_{spec.name}"[:63]
            part_spec = spec.model_copy(update={"table": partition, "name": part_name})
            if live_index(conn, part_spec) is None:
                operations.append(create_operation(part_spec, concurrently=True))
            attach = sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                parent_index, qualified(spec.schema_name, part_name)
            )
            operations.append(Operation(attach, Transaction.OWN))
        return operations

    def delete(self, resource_id: str, spec: IndexSpec, recorded: IndexStatus | None = None) -> None:
        with connect(self.target) as conn:
            operation = drop_operation(spec, concurrently=not is_partitioned(conn, spec))
            self.apply(conn, [operation], what=f"drop index {spec.name}")
