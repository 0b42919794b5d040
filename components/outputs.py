"""The stack's outputs: its ConnectionSpec (`connection`), and what an application connects with.

Tools that reach a stack from outside (ops/, recovery/, bench/, connect-info) read `connection` back with
`connection_of`. Applications take `writeDsn` and `readDsn` (PgBouncer's write and read pools as
`authenticator`), `redisUrl` (all secrets) and `cachePolicy` (plain): each derived here from the
ConnectionSpec and the settings, nothing restated; thorbis_client reads exactly these
(`ClientConfig.from_outputs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

import pulumi

from components.connection import ConnectionSpec
from components.platform.secrets import secret_of
from config import StackSettings

if TYPE_CHECKING:
    from pulumi.automation import OutputValue

CONNECTION = "connection"
"""The name of the output."""

APPLICATION_USER = "authenticator"
"""The login applications connect as (sql/access.yaml); it switches to a request's role per transaction."""


def export_outputs(settings: StackSettings, connection: pulumi.Output[ConnectionSpec]) -> None:
    pulumi.export(CONNECTION, pulumi.Output.secret(connection.apply(lambda spec: spec.model_dump(mode="json"))))
    export_application_outputs(settings, connection)


def export_application_outputs(settings: StackSettings, connection: pulumi.Output[ConnectionSpec]) -> None:
    """writeDsn, readDsn and redisUrl (secrets) and the cache policy of `thorbis:cache` (plain). Without
    thorbis:authenticatorPassword (optional on `external`, where an existing authenticator keeps its own),
    the DSNs carry no password: the application adds the one it has."""
    password = (
        secret_of(settings, "authenticator_password")
        if settings.authenticator_password is not None
        else pulumi.Output.from_input(None)
    )
    dsns = pulumi.Output.all(connection, password).apply(lambda values: application_dsns(values[0], values[1]))
    pulumi.export("writeDsn", pulumi.Output.secret(dsns.apply(lambda pair: pair[0])))
    pulumi.export("readDsn", pulumi.Output.secret(dsns.apply(lambda pair: pair[1])))
    pulumi.export("redisUrl", pulumi.Output.secret(connection.apply(redis_url)))
    pulumi.export("cachePolicy", settings.cache.policy())


def application_dsns(spec: ConnectionSpec, password: str | None) -> tuple[str, str]:
    """The write and read DSNs an application uses: the pooler's two pools, or the server itself when
    the platform has no pooler (external); reads share the write DSN where there is no read pool."""
    endpoint = spec.pooler or spec.primary
    read_database = spec.read_database if spec.pooler else None
    return (
        spec.dsn(endpoint, user=APPLICATION_USER, password=password),
        spec.dsn(endpoint, user=APPLICATION_USER, password=password, database=read_database),
    )


def redis_url(spec: ConnectionSpec) -> str | None:
    if spec.redis is None:
        return None
    credentials = f":{quote(spec.redis_password, safe='')}@" if spec.redis_password else ""
    return f"redis://{credentials}{spec.redis.host}:{spec.redis.port}/0"


def connection_of(outputs: Mapping[str, OutputValue]) -> ConnectionSpec | None:
    """The ConnectionSpec among a stack's outputs as the Automation API returns them (secrets in clear), or
    None when the stack has not exported one (never brought up)."""
    exported = outputs.get(CONNECTION)
    return None if exported is None else ConnectionSpec.model_validate(exported.value)
