"""The stack's outputs: where to connect, with passwords only as secrets.

Applications take `writeDsn` and `readDsn` (through PgBouncer as `authenticator`: the write pool and the
read pool), `redisUrl` and `cachePolicy`; thorbis_client reads exactly these (`ClientConfig.from_outputs`).
"""

from __future__ import annotations

from urllib.parse import quote

import pulumi

from components.connection import ConnectionSpec, Endpoint
from components.platform.secrets import secret_of
from config import StackSettings

APPLICATION_USER = "authenticator"


def dsn(spec: ConnectionSpec, port: int, user: str, password: str) -> str:
    return postgres_url(Endpoint(spec.primary.host, port), user, password, spec.database)


def postgres_url(endpoint: Endpoint, user: str, password: str, database: str, sslmode: str = "prefer") -> str:
    query = "" if sslmode == "prefer" else f"?sslmode={sslmode}"
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql://{credentials}@{endpoint.host}:{endpoint.port}/{quote(database, safe='')}{query}"


def application_dsns(spec: ConnectionSpec, password: str) -> tuple[str, str]:
    """The write and read DSNs an application uses: the pooler's two pools, or the server itself when
    the platform has no pooler (external); reads share the write DSN where there is no read pool."""
    endpoint = spec.pooler or spec.primary
    write = postgres_url(endpoint, APPLICATION_USER, password, spec.database, spec.sslmode)
    read_database = spec.read_database if spec.pooler else None
    read = postgres_url(endpoint, APPLICATION_USER, password, read_database, spec.sslmode) if read_database else write
    return write, read


def redis_url(spec: ConnectionSpec) -> str | None:
    if spec.redis is None:
        return None
    credentials = f":{quote(spec.redis_password, safe='')}@" if spec.redis_password else ""
    return f"redis://{credentials}{spec.redis.host}:{spec.redis.port}/0"


def export_application_outputs(settings: StackSettings, connection: pulumi.Output[ConnectionSpec]) -> None:
    """writeDsn, readDsn and redisUrl (secrets) and the cache policy of `thorbis:cache` (plain)."""
    dsns = pulumi.Output.all(connection, secret_of(settings, "authenticator_password")).apply(
        lambda values: application_dsns(values[0], values[1])
    )
    pulumi.export("writeDsn", pulumi.Output.secret(dsns.apply(lambda pair: pair[0])))
    pulumi.export("readDsn", pulumi.Output.secret(dsns.apply(lambda pair: pair[1])))
    pulumi.export("redisUrl", pulumi.Output.secret(connection.apply(redis_url)))
    pulumi.export("cachePolicy", settings.cache.policy())


def export_outputs(settings: StackSettings, connection: pulumi.Output[ConnectionSpec]) -> None:
    pulumi.export("platform", settings.platform)
    pulumi.export("host", pulumi.Output.unsecret(connection.apply(lambda c: c.primary.host)))
    pulumi.export("port", pulumi.Output.unsecret(connection.apply(lambda c: c.primary.port)))
    pulumi.export("database", pulumi.Output.unsecret(connection.apply(lambda c: c.database)))
    pulumi.export("adminUser", pulumi.Output.unsecret(connection.apply(lambda c: c.admin_user)))
    pulumi.export("poolerPort", pulumi.Output.unsecret(connection.apply(lambda c: c.pooler.port if c.pooler else None)))
    pulumi.export("replicaPorts", pulumi.Output.unsecret(connection.apply(lambda c: [r.port for r in c.replicas])))
    pulumi.export("redisPort", pulumi.Output.unsecret(connection.apply(lambda c: c.redis.port if c.redis else None)))
    pulumi.export("adminPassword", pulumi.Output.secret(connection.apply(lambda c: c.admin_password)))
    pulumi.export("redisPassword", pulumi.Output.secret(connection.apply(lambda c: c.redis_password)))
    pulumi.export(
        "adminDsn",
        pulumi.Output.secret(connection.apply(lambda c: dsn(c, c.primary.port, c.admin_user, c.admin_password))),
    )
    export_application_outputs(settings, connection)
