"""thorbisdb:external:Postgres — an existing PostgreSQL (Supabase, RDS, ...): checked, never started or changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
import pulumi
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from components.kind import Kind, ProviderError, Spec
from components.resource import declared_outputs, provider_inputs

TOKEN = "thorbisdb:external:Postgres"
SECRETS = frozenset({"dsn"})
#: Extensions the database layer installs; the server must offer each one.
REQUIRED_EXTENSIONS = ("pg_trgm", "ltree", "hypopg", "pg_cron", "pg_stat_statements", "pgcrypto", "uuid-ossp")
MINIMUM_VERSION_NUM = 150000


class ExternalPostgresSpec(Spec):
    dsn: str = Field(description="postgresql:// URL of the server (secret).")
    required_extensions: list[str] = Field(default_factory=lambda: list(REQUIRED_EXTENSIONS))
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
    required_extensions: pulumi.Input[list[str]] = field(default_factory=lambda: list(REQUIRED_EXTENSIONS))


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
