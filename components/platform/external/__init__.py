"""The `external` platform: an existing PostgreSQL (Supabase, RDS, ...) reached by a DSN; nothing is started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pulumi
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from components.connection import ConnectionSpec, Endpoint
from components.database.access import load_access
from components.kind import Kind, ProviderError, Spec
from components.platform.secrets import secret_of
from components.resource import declared_outputs, provider_inputs
from config import StackSettings

TOKEN = "thorbisdb:external:Postgres"
SECRETS = frozenset({"dsn"})
MINIMUM_VERSION_NUM = 150000


def required_extensions() -> list[str]:
    """The extensions the database layer installs (sql/access.yaml): the server must offer each one."""
    return [extension.name for extension in load_access().extensions]


class ExternalPostgresSpec(Spec):
    dsn: str = Field(description="postgresql:// URL of the server (secret).")
    required_extensions: list[str] = Field(description="Extensions the server must offer.")
    minimum_version_num: int = Field(default=MINIMUM_VERSION_NUM, description="server_version_num at least.")


def inspect(spec: ExternalPostgresSpec) -> dict[str, Any]:
    """Check the server is reachable, recent enough and offers every extension we need."""
    try:
        with psycopg.connect(spec.dsn, connect_timeout=10) as conn:
            version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            available = {row[0] for row in conn.execute("SELECT name FROM pg_available_extensions")}
    except psycopg.Error as error:
        host = conninfo_to_dict(spec.dsn).get("host", "?")
        raise ProviderError(f"cannot reach the external PostgreSQL at {host}: {str(error).strip()}") from error
    if version_num < spec.minimum_version_num:
        raise ProviderError(
            f"the external PostgreSQL is {version}; thorbis-db needs {spec.minimum_version_num // 10000} or newer"
        )
    missing = [name for name in spec.required_extensions if name not in available]
    if missing:
        raise ProviderError(
            f"the external PostgreSQL lacks the extension(s) {', '.join(missing)}: install them on the server "
            "(on Supabase: Database > Extensions) and run `pulumi up` again"
        )
    return {"serverVersion": version, "serverVersionNum": version_num, "reachable": True}


class ExternalPostgresKind(Kind[ExternalPostgresSpec]):
    """An existing server: checked, never created, changed or deleted."""

    token = TOKEN
    spec_type = ExternalPostgresSpec
    secret_properties = SECRETS

    def create(self, spec: ExternalPostgresSpec) -> tuple[str, dict[str, Any]]:
        params = conninfo_to_dict(spec.dsn)
        return f"{params.get('host')}:{params.get('port', 5432)}/{params.get('dbname')}", inspect(spec)

    def observe(self, resource_id: str, spec: ExternalPostgresSpec) -> dict[str, Any] | None:
        try:
            return inspect(spec)
        except ProviderError:
            return {"reachable": False}

    def drifted(self, old_state: dict[str, Any], spec: ExternalPostgresSpec) -> list[str]:
        return [] if old_state.get("reachable", True) else ["reachable"]

    def update(self, resource_id: str, old: dict[str, Any], spec: ExternalPostgresSpec) -> dict[str, Any]:
        return inspect(spec)

    def delete(self, resource_id: str, spec: ExternalPostgresSpec) -> None:
        """The server is not ours: forgetting it is all that delete does."""


@dataclass
class ExternalPostgresArgs:
    dsn: pulumi.Input[str]
    required_extensions: pulumi.Input[list[str]]


class ExternalPostgres(pulumi.CustomResource):
    server_version: pulumi.Output[str]

    def __init__(self, name: str, args: ExternalPostgresArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            TOKEN,
            name,
            {
                **provider_inputs(args, SECRETS),
                **declared_outputs("serverVersion", "serverVersionNum", "reachable"),
            },
            opts,
        )


def connection_from_dsn(dsn: str) -> ConnectionSpec:
    params = conninfo_to_dict(dsn)
    return ConnectionSpec(
        platform="external",
        primary=Endpoint(host=str(params.get("host", "localhost")), port=int(str(params.get("port") or 5432))),
        database=str(params.get("dbname", "postgres")),
        admin_user=str(params.get("user", "postgres")),
        admin_password=str(params.get("password", "")),
        sslmode=str(params.get("sslmode", "prefer")),
        platform_owns_roles=True,  # Supabase's anon, authenticated, ... exist already: adopt, never drop
    )


class ExternalPlatform(pulumi.ComponentResource):
    """Only the database layer is applied to an external server; nothing is started or stopped."""

    connection: pulumi.Output[ConnectionSpec]

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("thorbis:platform:External", name, None, opts)
        dsn = secret_of(settings, "external_dsn")
        server = ExternalPostgres(
            f"{name}-postgres",
            ExternalPostgresArgs(dsn=dsn, required_extensions=required_extensions()),
            pulumi.ResourceOptions(parent=self),
        )
        self.connection = pulumi.Output.all(dsn, server.id).apply(lambda values: connection_from_dsn(values[0]))
        self.register_outputs({})
