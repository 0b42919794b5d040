"""The stack's outputs: where to connect, with passwords only as secrets."""

from __future__ import annotations

import pulumi

from components.connection import ConnectionSpec
from config import StackSettings


def dsn(spec: ConnectionSpec, port: int, user: str, password: str) -> str:
    return f"postgresql://{user}:{password}@{spec.primary.host}:{port}/{spec.database}"


def export_outputs(settings: StackSettings, connection: pulumi.Output[ConnectionSpec]) -> None:
    pulumi.export("platform", settings.platform)
    pulumi.export("host", pulumi.Output.unsecret(connection.apply(lambda c: c.primary.host)))
    pulumi.export("port", pulumi.Output.unsecret(connection.apply(lambda c: c.primary.port)))
    pulumi.export("database", pulumi.Output.unsecret(connection.apply(lambda c: c.database)))
    pulumi.export("adminUser", pulumi.Output.unsecret(connection.apply(lambda c: c.admin_user)))
    pulumi.export("poolerPort", pulumi.Output.unsecret(connection.apply(lambda c: c.pooler.port if c.pooler else None)))
    pulumi.export("replicaPorts", pulumi.Output.unsecret(connection.apply(lambda c: [r.port for r in c.replicas])))
    pulumi.export("redisPort", pulumi.Output.unsecret(connection.apply(lambda c: c.redis.port if c.redis else None)))
    pulumi.export("haRestPorts", [node.rest_port for node in settings.ha_nodes])
    pulumi.export("etcdPorts", [peer.client_port for peer in settings.etcd_peers])
    pulumi.export("adminPassword", pulumi.Output.secret(connection.apply(lambda c: c.admin_password)))
    pulumi.export("redisPassword", pulumi.Output.secret(connection.apply(lambda c: c.redis_password)))
    pulumi.export(
        "adminDsn",
        pulumi.Output.secret(connection.apply(lambda c: dsn(c, c.primary.port, c.admin_user, c.admin_password))),
    )
