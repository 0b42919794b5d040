"""What every kind of database object shares: the target database from the provider's config, and the
explicit provider instance through which the program declares them."""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
import pulumi
from psycopg import sql

from components.connection import ConnectionSpec
from components.database.session import DatabaseTarget, Statement
from components.kind import Kind, Spec

SpecT = TypeVar("SpecT", bound=Spec)


class DatabaseKind(Kind[SpecT]):
    """A kind whose objects live inside the database the explicit provider's `connection` names."""

    @property
    def target(self) -> DatabaseTarget:
        return DatabaseTarget.from_config(self.provider_config)


def qualified(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def default_partition_name(table: str) -> str:
    """pg_partman's name for the default partition (check_name_length(table, '_default')): the Table kind
    makes it under this name, so that pg_partman finds it and a conversion swaps it."""
    return f"{table[: 63 - len('_default')]}_default"


def partition_name(table: str, suffix: str) -> str:
    """pg_partman's name for a child (check_name_length(table, suffix, true)): `<table>_p<YYYY_MM>`."""
    if len(table) + len(suffix) >= 61:
        return f"{table[: 61 - len(suffix)]}_p{suffix}"
    return f"{table}_p{suffix}"


def database_provider(
    name: str,
    connection: pulumi.Output[ConnectionSpec],
    lock_timeout: str,
    allow_data_loss: bool,
    opts: pulumi.ResourceOptions | None = None,
) -> pulumi.ProviderResource:
    """The thorbisdb provider instance that database objects are created through (connection is secret)."""
    inputs: dict[str, Any] = {
        "connection": pulumi.Output.secret(connection.apply(lambda spec: spec.model_dump(mode="json"))),
        "lockTimeout": lock_timeout,
        "allowDataLoss": allow_data_loss,
    }
    return pulumi.ProviderResource("thorbisdb", name, inputs, opts)


def copied_grants(
    conn: psycopg.Connection, source: sql.Identifier, target: sql.Identifier | None = None
) -> list[Statement]:
    """The grants on `source` (but its owner's), as statements that give them on `target`: a relation
    that replaces it, or `source` itself once dropped and made again."""
    rows = conn.execute(
        "SELECT a.privilege_type, CASE a.grantee WHEN 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END "
        "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner",
        (source.as_string(conn),),
    ).fetchall()
    return [
        sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privilege), target or source, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC")
        )
        for privilege, grantee in rows
    ]
