"""thorbisdb:db:Extension — an extension, its schema and version.

An extension the server does not ship is reported with what to install, before anything changes; one
only a superuser may create, when the stack's role is none, with where to enable it (Supabase's
dashboard). An extension installed before the stack is adopted where it is: never moved, updated or
dropped. Drop is RESTRICT: objects that depend on the extension, or rows in its configuration tables
(pg_cron's jobs), are named and kept rather than cascaded away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind
from components.database.ddl import Operation, shared
from components.database.session import Statement, connect, scalar
from components.kind import Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:Extension"
EXTENSION_QUERY = """
SELECT n.nspname, e.extversion, e.extrelocatable FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = %s
"""
CONFIG_TABLES_QUERY = """
SELECT n.nspname, c.relname FROM pg_extension e JOIN pg_class c ON c.oid = ANY(e.extconfig)
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE e.extname = %s AND c.relkind IN ('r', 'p') ORDER BY 1, 2
"""


class ExtensionSpec(Spec):
    name: Replace[str] = Field(description="Extension name, as in pg_available_extensions.")
    schema_name: str | None = Field(
        default=None, description="Schema of its objects; None lets the extension choose (pg_cron makes `cron`)."
    )
    version: str | None = Field(default=None, description="Version; None takes the default, and keeps it.")


class ExtensionStatus(Status):
    adopted: bool | None = Field(default=None, description="The extension was installed before the stack declared it.")
    installed_schema: str | None = Field(default=None, description="The schema its objects are in.")
    installed_version: str | None = Field(default=None, description="The version installed.")


@dataclass(frozen=True)
class LiveExtension:
    schema: str
    version: str
    relocatable: bool


def read_extension(conn: psycopg.Connection, name: str) -> LiveExtension | None:
    row = conn.execute(EXTENSION_QUERY, (name,)).fetchone()
    return None if row is None else LiveExtension(row[0], row[1], row[2])


def installed(live: LiveExtension) -> ExtensionStatus:
    return ExtensionStatus(installed_schema=live.schema, installed_version=live.version)


def ensure_available(conn: psycopg.Connection, spec: ExtensionSpec, where: str) -> None:
    """Refuse, saying what to install, an extension (or version) this server does not ship."""
    if scalar(conn, "SELECT 1 FROM pg_available_extensions WHERE name = %s", (spec.name,)) is None:
        major = scalar(conn, "SELECT current_setting('server_version_num')::int / 10000")
        raise ProviderError(
            f"extension {spec.name} is not available on {where}: install the server package that provides it "
            f"(e.g. postgresql-{major}-{spec.name}) where PostgreSQL runs, or on Supabase enable {spec.name} "
            "under Database > Extensions; then run `pulumi up` again"
        )
    if spec.version is None:
        return
    versions = [
        version
        for (version,) in conn.execute(
            "SELECT version FROM pg_available_extension_versions WHERE name = %s ORDER BY version", (spec.name,)
        )
    ]
    if spec.version not in versions:
        raise ProviderError(
            f"extension {spec.name} has no version {spec.version} on {where}; available: {', '.join(versions)}"
        )


def unmovable(spec: ExtensionSpec, live: LiveExtension) -> ProviderError:
    return ProviderError(
        f"extension {spec.name} is installed in schema {live.schema}, not {spec.schema_name}, and cannot be moved "
        f"(it is not relocatable). To move it: DROP EXTENSION {spec.name} as a superuser (what it holds goes with "
        "it; the stack makes its own objects again), then run `pulumi up`"
    )


def extension_operations(spec: ExtensionSpec, live: LiveExtension | None) -> list[Operation]:
    name = sql.Identifier(spec.name)
    if live is None:
        return shared(
            [
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {}{}{}").format(
                    name,
                    sql.SQL(" WITH SCHEMA {}").format(sql.Identifier(spec.schema_name))
                    if spec.schema_name
                    else sql.SQL(""),
                    sql.SQL(" VERSION {}").format(sql.Literal(spec.version)) if spec.version else sql.SQL(""),
                )
            ]
        )
    statements: list[Statement] = []
    if spec.schema_name is not None and live.schema != spec.schema_name:
        if not live.relocatable:
            raise unmovable(spec, live)
        statements.append(sql.SQL("ALTER EXTENSION {} SET SCHEMA {}").format(name, sql.Identifier(spec.schema_name)))
    if spec.version is not None and live.version != spec.version:
        statements.append(sql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(name, sql.Literal(spec.version)))
    return shared(statements)


def config_rows(conn: psycopg.Connection, name: str) -> list[str]:
    """The extension's configuration tables that hold rows (dropping it would drop them with it)."""
    return [
        f"{schema}.{table}"
        for schema, table in conn.execute(CONFIG_TABLES_QUERY, (name,)).fetchall()
        if scalar(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(schema, table)))
    ]


class ExtensionKind(DatabaseKind[ExtensionSpec, ExtensionStatus]):
    token = TOKEN
    spec_type = ExtensionSpec
    status_type = ExtensionStatus

    @property
    def where(self) -> str:
        spec = self.target.connection
        return f"the {spec.platform} server {spec.primary.host}:{spec.primary.port} (database {spec.database})"

    def observe(
        self, resource_id: str, spec: ExtensionSpec, recorded: ExtensionStatus | None = None
    ) -> Observed[ExtensionStatus] | None:
        with connect(self.target) as conn:
            live = read_extension(conn, spec.name)
        if live is None:
            return None
        if recorded is not None and recorded.adopted:  # where it was found is where it stays
            return Observed(spec.model_dump(by_alias=True), installed(live))
        inputs = {
            **spec.model_dump(by_alias=True),
            "schemaName": live.schema if spec.schema_name is not None else None,
            "version": live.version if spec.version is not None else None,
        }
        return Observed(inputs, installed(live))

    def create(self, spec: ExtensionSpec) -> tuple[str, ExtensionStatus]:
        with connect(self.target) as conn:
            found = read_extension(conn, spec.name)
            live = found if found is not None else self.converge(conn, spec)
        return spec.name, installed(live).model_copy(update={"adopted": found is not None})

    def update(self, resource_id: str, old: dict[str, Any], spec: ExtensionSpec) -> ExtensionStatus:
        with connect(self.target) as conn:
            live = read_extension(conn, spec.name)
            if self.status_of(old).adopted and live is not None:
                return installed(live)
            return installed(self.converge(conn, spec))

    def converge(self, conn: psycopg.Connection, spec: ExtensionSpec) -> LiveExtension:
        live = read_extension(conn, spec.name)
        if live is None or (spec.version is not None and live.version != spec.version):
            ensure_available(conn, spec, self.where)
        try:
            self.apply(conn, extension_operations(spec, live), what=f"extension {spec.name}")
        except ProviderError as error:
            if isinstance(error.__cause__, psycopg.errors.InsufficientPrivilege) and live is None:
                raise ProviderError(
                    f"extension {spec.name} can only be created by a superuser, and the role the stack connects as "
                    f"on {self.where} is none: create it as a superuser (on Supabase: Database > Extensions, "
                    f"schema {spec.schema_name or 'its own'}), then run `pulumi up` again; the stack adopts it"
                ) from error
            raise
        now = read_extension(conn, spec.name)
        assert now is not None
        return now

    def delete(self, resource_id: str, spec: ExtensionSpec, recorded: ExtensionStatus | None = None) -> None:
        if recorded is not None and recorded.adopted:  # installed before the stack: it stays
            return
        with connect(self.target) as conn:
            if read_extension(conn, spec.name) is None:
                return
            holding = config_rows(conn, spec.name)
            if holding and not self.target.allow_data_loss:
                raise ProviderError(
                    f"refusing to drop extension {spec.name}: its table(s) {', '.join(holding)} hold rows that "
                    "would be dropped with it. Remove them, or set thorbis:allowDataLoss true"
                )
            drop = sql.SQL("DROP EXTENSION IF EXISTS {} RESTRICT").format(sql.Identifier(spec.name))
            try:
                self.apply(conn, shared([drop]), what=f"drop extension {spec.name}")
            except ProviderError as error:
                cause = error.__cause__
                if not isinstance(cause, psycopg.errors.DependentObjectsStillExist):
                    raise
                detail = " ".join((cause.diag.message_detail or "").split("\n"))
                raise ProviderError(
                    f"refusing to drop extension {spec.name}: objects outside it depend on it ({detail}). "
                    "The stack never drops them with CASCADE: remove them (or the resources that declare them) "
                    "first, then run `pulumi up` again"
                ) from cause
