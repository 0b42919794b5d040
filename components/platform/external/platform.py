"""The `external` platform: an existing PostgreSQL (Supabase, RDS, ...) reached by a DSN; nothing is started."""

from __future__ import annotations

import pulumi
from psycopg.conninfo import conninfo_to_dict

from components.connection import ConnectionSpec, Endpoint
from components.database.declared.access import load_access
from components.platform.build import Platform
from components.platform.external.postgres import ExternalPostgresKind
from components.platform.secrets import secret_of
from components.resource import declare
from config import StackSettings


def required_extensions() -> list[str]:
    """The extensions the database layer installs (sql/access.yaml): the server must offer each one."""
    return [extension.name for extension in load_access().extensions]


def connection_from_dsn(dsn: str) -> ConnectionSpec:
    params = conninfo_to_dict(dsn)
    return ConnectionSpec(
        platform="external",
        primary=Endpoint(host=str(params.get("host", "localhost")), port=int(str(params.get("port") or 5432))),
        database=str(params.get("dbname", "postgres")),
        admin_user=str(params.get("user", "postgres")),
        admin_password=str(params.get("password", "")),
        sslmode=str(params.get("sslmode", "prefer")),
    )


class ExternalPlatform(Platform):
    """Only the database layer is applied to an external server; nothing is started or stopped."""

    connection: pulumi.Output[ConnectionSpec]
    database_connection: pulumi.Output[ConnectionSpec]

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("thorbis:platform:External", name, None, opts)
        dsn = secret_of(settings, "external_dsn")
        server = declare(
            ExternalPostgresKind,
            f"{name}-postgres",
            {"dsn": dsn, "required_extensions": required_extensions()},
            pulumi.ResourceOptions(parent=self),
        )
        self.connection = pulumi.Output.all(dsn, server.id).apply(lambda values: connection_from_dsn(values[0]))
        self.database_connection = self.connection.apply(ConnectionSpec.for_database)
        self.register_outputs({})
