"""The HA cluster of a local stack as resources: etcd members, Patroni's shared configuration, the nodes,
and the router whose write endpoint (thorbis:postgres.port) everything else connects through."""

from __future__ import annotations

import re
from pathlib import Path

import pulumi

from components.platform.local.backup import BackupRepositoryKind
from components.platform.local.ha.cluster import PatroniClusterKind
from components.platform.local.ha.etcd import EtcdMemberKind
from components.platform.local.ha.haproxy import HaRouterKind
from components.platform.local.ha.node import PatroniNodeKind
from components.platform.local.pgbackrest import Repository
from components.resource import KindResource, declare
from config import StackSettings


def scope_of(settings: StackSettings) -> str:
    """The cluster's name in etcd (and the etcd cluster's token): the stack's name, made safe."""
    return ("thorbis-" + re.sub(r"[^a-z0-9-]", "-", settings.stack.lower()))[:63]


def node_dir(state_dir: Path, node: str) -> Path:
    """A Patroni node's directory under the stack's state directory."""
    return state_dir / f"ha-{node}"


def declare_ha_cluster(
    name: str,
    settings: StackSettings,
    parent: pulumi.Resource,
    superuser: pulumi.Output[str],
    replication: pulumi.Output[str],
    gucs: dict[str, str],
    repository: Repository | None,
) -> KindResource:
    """Declare the cluster (archiving to `repository` from whichever node leads, when given); return the
    router, ready once the write endpoint reaches a leader."""
    base, scope, ha = settings.state_dir, scope_of(settings), settings.ha
    peers = [{"name": p.name, "client_port": p.client_port, "peer_port": p.peer_port} for p in settings.etcd_peers]
    etcd_ports = [p.client_port for p in settings.etcd_peers]
    members = [{"name": n.name, "port": n.port, "rest_port": n.rest_port} for n in settings.ha_nodes]
    etcd = [
        declare(
            EtcdMemberKind,
            f"{name}-{peer.name}",
            {
                "state_dir": str(base / peer.name),
                "name": peer.name,
                "client_port": peer.client_port,
                "peer_port": peer.peer_port,
                "cluster_token": scope,
                "peers": peers,
                "allow_data_loss": settings.allow_data_loss,
            },
            pulumi.ResourceOptions(parent=parent),
        )
        for peer in settings.etcd_peers
    ]
    cluster = declare(
        PatroniClusterKind,
        f"{name}-patroni",
        {
            "scope": scope,
            "etcd_ports": etcd_ports,
            "members": members,
            "superuser_password": superuser,
            "synchronous": ha.synchronous,
            "ttl": ha.ttl,
            "loop_wait": ha.loop_wait,
            "retry_timeout": ha.retry_timeout,
            "settings": gucs,
        },
        pulumi.ResourceOptions(parent=parent, depends_on=etcd),
    )
    nodes = [
        declare(
            PatroniNodeKind,
            f"{name}-{node.name}",
            {
                "state_dir": str(node_dir(base, node.name)),
                "scope": scope,
                "name": node.name,
                "port": node.port,
                "rest_port": node.rest_port,
                "etcd_ports": etcd_ports,
                "database": settings.postgres.database,
                "superuser_password": superuser,
                "replication_password": replication,
                "allow_data_loss": settings.allow_data_loss,
                "backup": repository,
            },
            pulumi.ResourceOptions(parent=parent, depends_on=[cluster]),
        )
        for node in settings.ha_nodes
    ]
    router = {
        "state_dir": str(base / "haproxy"),
        "write_port": settings.postgres.port,
        "read_port": settings.ha_read_port,
        "members": members,
        "max_lag_bytes": settings.pgbouncer.read_max_lag_bytes,
        "check_ms": settings.pgbouncer.route_check_ms,
    }
    routed = declare(HaRouterKind, f"{name}-haproxy", router, pulumi.ResourceOptions(parent=parent, depends_on=nodes))
    if repository is not None:  # the stanza lists every node; backups are taken by scripts/backup
        backups = {
            "repository": repository,
            "primary_state_dir": str(node_dir(base, settings.ha_nodes[0].name)),
            "port": settings.postgres.port,
            "nodes": [{"state_dir": str(node_dir(base, n.name)), "port": n.port} for n in settings.ha_nodes],
            "superuser_password": superuser,
            "allow_data_loss": settings.allow_data_loss,
        }
        declare(
            BackupRepositoryKind, f"{name}-backups", backups, pulumi.ResourceOptions(parent=parent, depends_on=[routed])
        )
    return routed
