"""Every kind the `thorbisdb` provider serves, listed once.

The plugin imports these modules and nothing else of the project: no program (components/database/
layer.py, the platforms' components), no config, no pulumi_docker. A new kind is added to this list.
"""

from __future__ import annotations

from typing import Any

from components.database.kinds.cron_job import CronJobKind
from components.database.kinds.default_privileges import DefaultPrivilegesKind
from components.database.kinds.destroy_guard import DestroyGuardKind
from components.database.kinds.exact_privileges import ExactPrivilegesKind
from components.database.kinds.extension import ExtensionKind
from components.database.kinds.function import FunctionKind
from components.database.kinds.grant import GrantKind
from components.database.kinds.index import IndexKind
from components.database.kinds.manifest import ManifestKind
from components.database.kinds.materialized_view import MaterializedViewKind
from components.database.kinds.partition_guard import PartitionGuardKind
from components.database.kinds.partition_set import PartitionSetKind
from components.database.kinds.policy import PolicyKind
from components.database.kinds.role import RoleKind
from components.database.kinds.row_security import RowSecurityKind
from components.database.kinds.schema import SchemaKind
from components.database.kinds.statistics_access import StatisticsAccessKind
from components.database.kinds.table import TableKind
from components.database.kinds.trigger import TriggerKind
from components.database.kinds.view import ViewKind
from components.kind import Kind
from components.platform.external.postgres import ExternalPostgresKind
from components.platform.local.backup import BackupRepositoryKind
from components.platform.local.ha.cluster import PatroniClusterKind
from components.platform.local.ha.etcd import EtcdMemberKind
from components.platform.local.ha.haproxy import HaRouterKind
from components.platform.local.ha.node import PatroniNodeKind
from components.platform.local.pgbouncer import PgBouncerKind
from components.platform.local.postgres import PostgresServerKind
from components.platform.local.redis import RedisKind
from components.platform.local.replica import PostgresReplicaKind
from components.platform.local.router import ReadRouterKind

KINDS: tuple[type[Kind[Any, Any]], ...] = (
    # the platforms' servers
    PostgresServerKind,
    PostgresReplicaKind,
    PgBouncerKind,
    ReadRouterKind,
    RedisKind,
    BackupRepositoryKind,
    ExternalPostgresKind,
    # high availability (thorbis:ha)
    EtcdMemberKind,
    PatroniClusterKind,
    PatroniNodeKind,
    HaRouterKind,
    # inside the database
    ManifestKind,
    DestroyGuardKind,
    RoleKind,
    SchemaKind,
    ExtensionKind,
    FunctionKind,
    TableKind,
    PolicyKind,
    RowSecurityKind,
    IndexKind,
    TriggerKind,
    ViewKind,
    MaterializedViewKind,
    PartitionSetKind,
    PartitionGuardKind,
    GrantKind,
    DefaultPrivilegesKind,
    ExactPrivilegesKind,
    StatisticsAccessKind,
    CronJobKind,
)


def served_kinds() -> dict[str, Kind[Any, Any]]:
    """One instance of every kind, by its type token."""
    served = {kind.token: kind() for kind in KINDS}
    if len(served) != len(KINDS):
        raise ValueError("two kinds of the registry share a type token")
    return served


def kind_of(token: str) -> type[Kind[Any, Any]] | None:
    """The kind of a type token (for tools that read a stack's state, such as the PR preview)."""
    return next((kind for kind in KINDS if kind.token == token), None)
