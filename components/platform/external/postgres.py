"""thorbisdb:external:Postgres — an existing PostgreSQL (Supabase, RDS, ...): checked, never started or changed."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from components.kind import Expect, Kind, Observed, ProviderError, Secret, Spec, Status

TOKEN = "thorbisdb:external:Postgres"
MINIMUM_VERSION_NUM = 150000


class ExternalPostgresSpec(Spec):
    dsn: Secret[str] = Field(description="postgresql:// URL of the server (secret).")
    required_extensions: list[str] = Field(description="Extensions the server must offer.")
    minimum_version_num: int = Field(default=MINIMUM_VERSION_NUM, description="server_version_num at least.")


class ExternalPostgresStatus(Status):
    server_version: str | None = Field(default=None, description="SHOW server_version.")
    server_version_num: int | None = Field(default=None, description="SHOW server_version_num.")
    reachable: Annotated[bool | None, Expect(True)] = Field(default=None, description="The server answers the DSN.")


#: What the role of the DSN lacks of the least `up` needs there (Supabase's postgres has all of it):
#: BYPASSRLS, or the stack's own reads of the tables (rows that break a new rule, an online conversion's copy
#: and checksums) would see no row; CREATEROLE for the roles it creates; CREATE on the database for schemas.
LACKING_QUERY = """
SELECT array_remove(ARRAY[
  CASE WHEN NOT (r.rolsuper OR r.rolbypassrls) THEN 'BYPASSRLS' END,
  CASE WHEN NOT (r.rolsuper OR r.rolcreaterole) THEN 'CREATEROLE' END,
  CASE WHEN NOT has_database_privilege(current_database(), 'CREATE') THEN 'CREATE on the database' END
], NULL) FROM pg_roles r WHERE r.rolname = current_user
"""


def inspect(spec: ExternalPostgresSpec) -> ExternalPostgresStatus:
    """Check the server is reachable, recent enough, offers every extension we need, and that the DSN's role
    has the least privilege `up` needs (no superuser)."""
    try:
        with psycopg.connect(spec.dsn, connect_timeout=10) as conn:
            version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            available = {row[0] for row in conn.execute("SELECT name FROM pg_available_extensions")}
            lacking: list[str] = conn.execute(LACKING_QUERY).fetchone()[0]  # type: ignore[index]
    except psycopg.Error as error:
        host = conninfo_to_dict(spec.dsn).get("host", "?")
        raise ProviderError(f"cannot reach the external PostgreSQL at {host}: {str(error).strip()}") from error
    if version_num < spec.minimum_version_num:
        raise ProviderError(
            f"the external PostgreSQL is {version}; thorbis-db needs {spec.minimum_version_num // 10000} or newer"
        )
    if lacking:
        user = conninfo_to_dict(spec.dsn).get("user", "?")
        raise ProviderError(
            f"the role {user} of thorbis:externalDsn lacks {', '.join(lacking)}, which `up` needs (no superuser: "
            "on Supabase the postgres role has them): grant them, or use a role that has them"
        )
    missing = [name for name in spec.required_extensions if name not in available]
    if missing:
        raise ProviderError(
            f"the external PostgreSQL lacks the extension(s) {', '.join(missing)}: install them on the server "
            "(on Supabase: Database > Extensions) and run `pulumi up` again"
        )
    return ExternalPostgresStatus(server_version=version, server_version_num=version_num, reachable=True)


class ExternalPostgresKind(Kind[ExternalPostgresSpec, ExternalPostgresStatus]):
    """An existing server: checked, never created, changed or deleted."""

    token = TOKEN
    spec_type = ExternalPostgresSpec
    status_type = ExternalPostgresStatus

    def create(self, spec: ExternalPostgresSpec) -> tuple[str, ExternalPostgresStatus]:
        params = conninfo_to_dict(spec.dsn)
        return f"{params.get('host')}:{params.get('port', 5432)}/{params.get('dbname')}", inspect(spec)

    def observe(
        self, resource_id: str, spec: ExternalPostgresSpec, recorded: ExternalPostgresStatus | None = None
    ) -> Observed[ExternalPostgresStatus] | None:
        try:
            return Observed({}, inspect(spec))
        except ProviderError:
            return Observed({}, ExternalPostgresStatus(reachable=False))

    def update(self, resource_id: str, old: dict[str, Any], spec: ExternalPostgresSpec) -> ExternalPostgresStatus:
        return inspect(spec)

    def delete(
        self, resource_id: str, spec: ExternalPostgresSpec, recorded: ExternalPostgresStatus | None = None
    ) -> None:
        """The server is not ours: forgetting it is all that delete does."""
