"""What `make up` prints: where a stack's platform listens, from its ConnectionSpec (no password shown)."""

from __future__ import annotations

from components.connection import ConnectionSpec, Endpoint


def at(endpoint: Endpoint | None) -> str:
    return "none" if endpoint is None else f"{endpoint.host}:{endpoint.port}"


def render(stack: str, connection: ConnectionSpec) -> str:
    replicas = ", ".join(at(replica) for replica in connection.replicas) or "none"
    lines = [
        "",
        f"thorbis-db stack '{stack}' is up ({connection.platform} platform).",
        f"  PostgreSQL primary : {at(connection.primary)}  database {connection.database}, "
        f"user {connection.admin_user}",
        f"  PgBouncer          : {at(connection.pooler)}"
        + ("  (transaction pooling: applications connect here)" if connection.pooler else ""),
        *pools(connection),
        f"  Read replicas      : {replicas}",
        f"  Redis              : {at(connection.redis)}",
        "",
        f"  Applications: pulumi stack output --json --show-secrets --stack {stack}  (writeDsn, readDsn, redisUrl,",
        f'                cachePolicy; thorbis_client.ClientConfig.from_stack("{stack}") reads them)',
        f'  psql "$(scripts/connect-info {stack} --admin-dsn)"',
    ]
    if connection.redis is not None:
        lines.append(
            f'  REDISCLI_AUTH="$(scripts/connect-info {stack} --redis-password)" '
            f"redis-cli -h {connection.redis.host} -p {connection.redis.port}"
        )
    return "\n".join(lines) + "\n"


def pools(connection: ConnectionSpec) -> list[str]:
    if connection.pooler is None or connection.read_database is None:
        return []
    return [
        f"                       database {connection.database} writes to the primary, "
        f"{connection.read_database} reads from the replicas"
    ]


def admin_dsn(connection: ConnectionSpec) -> str:
    """The admin connection as a libpq connection string (psql takes it as its dbname); a secret."""
    return connection.dsn()
