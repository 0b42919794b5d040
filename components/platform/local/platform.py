"""The `local` platform: real PostgreSQL, replicas, PgBouncer and Redis processes on this host."""

from __future__ import annotations

import re
from pathlib import Path

import pulumi

from components.connection import LOOPBACK, ConnectionSpec, Endpoint, HaEndpoints
from components.platform.build import Platform
from components.platform.local.backup import BackupRepositoryKind
from components.platform.local.ha.declare import declare_ha_cluster
from components.platform.local.pgbackrest import Repository, archive_command, directory_problem
from components.platform.local.pgbouncer import PgBouncerKind
from components.platform.local.postgres import PostgresServerKind
from components.platform.local.postgres_files import SUPERUSER, ServerDir
from components.platform.local.process import read_pid
from components.platform.local.redis import RedisKind
from components.platform.local.replica import PostgresReplicaKind
from components.platform.local.router import ReadRouterKind
from components.platform.routing import read_database
from components.platform.secrets import secret_of
from components.resource import declare
from config import ConfigError, Problem, StackSettings, check_host_ports


def server_dir(state_dir: Path, replica: int | None = None) -> Path:
    """The directory of the primary (replica None) or of replica `replica` under the stack's state directory."""
    return state_dir / ("postgres-primary" if replica is None else f"postgres-replica-{replica}")


def read_slot_count(settings: StackSettings) -> int:
    """Slots of PgBouncer's read pool: one per replica (the primary's when there is none)."""
    return max(1, settings.replicas.count)


def router_dir(state_dir: Path) -> Path:
    """The read router's directory (its routes.json says where the pools go now)."""
    return state_dir / "router"


def replication_slot(index: int) -> str:
    """The physical replication slot of replica `index` (also its application_name)."""
    return f"replica_{index}"


def loopback_connection(
    settings: StackSettings, platform: str, admin_password: str, redis_password: str
) -> ConnectionSpec:
    """The ConnectionSpec of a platform whose servers listen (or are published) on loopback at the stack's
    ports, the superuser its admin."""
    return ConnectionSpec(
        platform=platform,
        primary=Endpoint.loopback(settings.postgres.port),
        database=settings.postgres.database,
        admin_user=SUPERUSER,
        admin_password=admin_password,
        pooler=Endpoint.loopback(settings.pgbouncer.port),
        replicas=tuple(Endpoint.loopback(port) for port in read_ports(settings)),
        redis=Endpoint.loopback(settings.redis.port),
        redis_password=redis_password,
        ha=ha_endpoints(settings),
        read_database=read_database(settings.postgres.database),
    )


def read_ports(settings: StackSettings) -> list[int]:
    """Where reads go: each replica; with ha, the router's read endpoint (whichever nodes replicate)."""
    return [settings.ha_read_port] if settings.ha.enabled else settings.replica_ports


def ha_endpoints(settings: StackSettings) -> HaEndpoints | None:
    if not settings.ha.enabled:
        return None
    return HaEndpoints(
        patroni=tuple(Endpoint.loopback(node.rest_port) for node in settings.ha_nodes),
        etcd=tuple(Endpoint.loopback(peer.client_port) for peer in settings.etcd_peers),
    )


def postgres_settings(settings: StackSettings) -> dict[str, str]:
    """postgresql.conf of every server of the stack (replicas need the primary's limits or more)."""
    postgres = settings.postgres
    wal_senders = str(max(10, settings.replicas.count + 5))
    return {
        "shared_preload_libraries": "pg_cron,pg_stat_statements",
        "cron.database_name": postgres.database,
        # jobs run in background workers: pg_cron's default, a libpq connection to localhost, has no
        # password to give our scram-only pg_hba.conf; workers for jobs come out of max_worker_processes
        "cron.use_background_workers": "on",
        "max_worker_processes": "16",
        "wal_level": "replica",
        "max_wal_senders": wal_senders,
        "max_replication_slots": wal_senders,
        "hot_standby": "on",
        "password_encryption": "scram-sha-256",
        "max_connections": str(postgres.max_connections),
        "shared_buffers": postgres.shared_buffers,
        "work_mem": postgres.work_mem,
        "maintenance_work_mem": postgres.maintenance_work_mem,
        "effective_cache_size": postgres.effective_cache_size,
        **postgres.settings,
        **archive_settings(settings),
    }


def backup_repository(settings: StackSettings) -> Repository | None:
    """The stack's pgBackRest repository (stanza: the stack's name), or None when backups are off."""
    backup = settings.backup
    if settings.platform != "local" or not backup.enabled:
        return None
    return Repository(
        path=str(backup.repository(settings.state_dir)),
        stanza=settings.stack,
        config_dir=str(settings.state_dir / "pgbackrest"),
        retention_full=backup.retention,
        create_path=backup.directory is None,
        restore_on_provision=backup.restore_on_provision,
    )


def archive_settings(settings: StackSettings) -> dict[str, str]:
    """Continuous WAL archiving into the stack's repository (archive_mode takes a restart: the
    PostgresServer kind restarts when a setting is pending_restart)."""
    repo = backup_repository(settings)
    if repo is None:
        return {}
    shared = {"archive_mode": "on", "archive_timeout": settings.backup.archive_timeout}
    if settings.ha.enabled:  # each Patroni node pushes through a pgBackRest config of its own (ha/node.py)
        return shared
    return {**shared, "archive_command": archive_command(repo)}


def check_backup_directory(settings: StackSettings) -> None:
    """Before any resource exists: a configured backup directory that is missing or not writable stops
    preview and up with an error naming thorbis:backup.directory (nothing is changed)."""
    repo = backup_repository(settings)
    problem = directory_problem(repo) if repo is not None else None
    if repo is not None and problem is not None:
        raise ConfigError(settings.stack, [Problem("thorbis:backup.directory", f'"{repo.path}"', problem)])


def data_of_the_other_mode(settings: StackSettings) -> list[Path]:
    """Data directories the stack's servers of the other value of thorbis:ha.mode hold under its state
    directory: with ha, the primary's and replicas' (no Patroni); without, the Patroni nodes'."""
    pattern = "postgres-*" if settings.ha.enabled else "ha-node-*"
    return sorted(base / "data" for base in settings.state_dir.glob(pattern) if ServerDir(base).initialised())


def check_mode_switch(settings: StackSettings) -> None:
    """Before any resource exists: turning ha on or off for a stack whose servers hold data would declare a
    new, empty cluster beside that data (and fail halfway, on the write port the old servers hold), so it
    stops preview and up with an error naming thorbis:ha.mode (nothing is changed)."""
    found = data_of_the_other_mode(settings)
    if not found:
        return
    held = "a primary and replicas without Patroni" if settings.ha.enabled else "Patroni nodes"
    reason = (
        f"this stack's data is held by {held} ({', '.join(map(str, found))}): switching would start a new, "
        "empty cluster beside it. Moving the data across is not built: keep the mode; or take a backup "
        "(scripts/backup), destroy the stack, switch and restore it by hand (recovery/README.md); or move "
        "those directories aside to start empty on purpose"
    )
    raise ConfigError(settings.stack, [Problem("thorbis:ha.mode", f'"{settings.ha.mode}"', reason)])


def ha_port_files(state_dir: Path) -> list[tuple[Path, Path, str]]:
    """Pidfile, the file that names its ports, and their pattern, of each HA process of a stack."""
    listen = r"127\.0\.0\.1:(\d+)"
    return [
        (state_dir / "haproxy" / "haproxy.pid", state_dir / "haproxy" / "haproxy.cfg", listen),
        *((node / "patroni.pid", node / "patroni.yml", listen) for node in state_dir.glob("ha-node-*")),
        *((member / "etcd.pid", member / "etcd.args", listen) for member in state_dir.glob("etcd-*")),
    ]


def ports_held(state_dir: Path) -> set[int]:
    """Ports that this stack's own running servers listen on (so they do not count as taken)."""
    held: set[int] = set()
    for pidfile in state_dir.glob("*/data/postmaster.pid"):
        lines = pidfile.read_text().splitlines()
        if read_pid(pidfile) is not None and len(lines) > 3:
            held.add(int(lines[3]))
    for pidfile, conf, pattern in (
        (
            state_dir / "pgbouncer" / "pgbouncer.pid",
            state_dir / "pgbouncer" / "pgbouncer.ini",
            r"listen_port = (\d+)",
        ),
        (state_dir / "redis" / "redis.pid", state_dir / "redis" / "redis.conf", r"^port (\d+)"),
        *ha_port_files(state_dir),
    ):
        if read_pid(pidfile) is not None and conf.exists():
            held.update(int(port) for port in re.findall(pattern, conf.read_text(), re.MULTILINE))
    return held


def router_servers(settings: StackSettings) -> list[dict[str, object]]:
    """The servers the read router watches, named as in its routes: primary, replica-0, replica-1, ..."""
    named: list[tuple[str, int, int | None]] = [("primary", settings.postgres.port, None)]
    named += [(f"replica-{index}", port, index) for index, port in enumerate(settings.replica_ports)]
    return [
        {
            "name": name,
            "port": port,
            "socketDir": str(ServerDir(server_dir(settings.state_dir, replica)).socket_dir),
            "primary": replica is None,
        }
        for name, port, replica in named
    ]


class LocalPlatform(Platform):
    """Primary, N streaming replicas, PgBouncer and Redis of one stack, under its state directory."""

    connection: pulumi.Output[ConnectionSpec]
    database_connection: pulumi.Output[ConnectionSpec]

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        check_host_ports(settings, LOOPBACK, owned_ports=ports_held(settings.state_dir))  # before any resource exists
        check_backup_directory(settings)
        check_mode_switch(settings)
        super().__init__("thorbis:platform:Local", name, None, opts)
        base = settings.state_dir
        superuser = secret_of(settings, "postgres_password")
        replication = secret_of(settings, "replication_password")
        gucs = postgres_settings(settings)
        child = pulumi.ResourceOptions(parent=self)

        if settings.ha.enabled:
            write_endpoint: pulumi.CustomResource = declare_ha_cluster(
                name, settings, self, superuser, replication, gucs, backup_repository(settings)
            )
            replicas: list[pulumi.CustomResource] = []
        else:
            write_endpoint, replicas = self.primary_and_replicas(name, settings, superuser, replication, gucs)
        after_primary = pulumi.ResourceOptions(parent=self, depends_on=[write_endpoint])
        pgbouncer = settings.pgbouncer
        auth = secret_of(settings, "pgbouncer_auth_password")
        pooler = declare(
            PgBouncerKind,
            f"{name}-pgbouncer",
            {
                "state_dir": str(base / "pgbouncer"),
                "port": pgbouncer.port,
                "primary_port": settings.postgres.port,
                "primary_socket_dir": str(ServerDir(server_dir(base)).socket_dir),
                "read_slots": read_slot_count(settings),
                "read_port": settings.ha_read_port if settings.ha.enabled else None,
                "database": settings.postgres.database,
                "superuser_password": superuser,
                "auth_password": auth,
                "max_client_conn": pgbouncer.max_client_conn,
                "default_pool_size": pgbouncer.default_pool_size,
                "reserve_pool_size": pgbouncer.reserve_pool_size,
                "reserve_pool_timeout": pgbouncer.reserve_pool_timeout,
                "max_db_connections": pgbouncer.max_db_connections,
                "min_pool_size": pgbouncer.min_pool_size,
                "server_login_retry": pgbouncer.server_login_retry,
                "pool_mode": pgbouncer.pool_mode,
            },
            after_primary,
        )
        # with ha, HAProxy routes the pools by what Patroni says (one source of truth about roles): no router
        routed = [] if settings.ha.enabled else [self.read_router(name, settings, auth, [pooler, *replicas])]
        redis_password = secret_of(settings, "redis_password")
        cache = declare(
            RedisKind,
            f"{name}-redis",
            {
                "state_dir": str(base / "redis"),
                "port": settings.redis.port,
                "password": redis_password,
                "maxmemory": settings.redis.maxmemory,
                "maxmemory_policy": settings.redis.maxmemory_policy,
                "persistence": settings.redis.persistence,
                "allow_data_loss": settings.allow_data_loss,
            },
            child,
        )
        ready = [write_endpoint.id, pooler.id, cache.id, *(r.id for r in [*replicas, *routed])]
        self.connection = pulumi.Output.all(superuser, redis_password, *ready).apply(
            lambda values: loopback_connection(settings, "local", values[0], values[1])
        )
        # the database layer waits for the write endpoint alone (the primary, or HAProxy in front of the leader)
        self.database_connection = pulumi.Output.all(superuser, write_endpoint.id).apply(
            lambda values: loopback_connection(settings, "local", values[0], "").for_database()
        )
        self.register_outputs({})

    def read_router(
        self, name: str, settings: StackSettings, auth: pulumi.Output[str], after: list[pulumi.CustomResource]
    ) -> pulumi.CustomResource:
        """Without ha: the router that keeps PgBouncer's slots on the primary and the healthy replicas."""
        pgbouncer = settings.pgbouncer
        return declare(
            ReadRouterKind,
            f"{name}-router",
            {
                "state_dir": str(router_dir(settings.state_dir)),
                "pgbouncer_dir": str(settings.state_dir / "pgbouncer"),
                "pgbouncer_port": pgbouncer.port,
                "database": settings.postgres.database,
                "auth_password": auth,
                "servers": router_servers(settings),
                "read_slots": read_slot_count(settings),
                "max_lag_bytes": pgbouncer.read_max_lag_bytes,
                "interval_ms": pgbouncer.route_check_ms,
            },
            pulumi.ResourceOptions(parent=self, depends_on=after),
        )

    def primary_and_replicas(
        self,
        name: str,
        settings: StackSettings,
        superuser: pulumi.Output[str],
        replication: pulumi.Output[str],
        gucs: dict[str, str],
    ) -> tuple[pulumi.CustomResource, list[pulumi.CustomResource]]:
        """Without ha: the primary (archiving to the backup repository) and its streaming replicas."""
        base = settings.state_dir
        repository = backup_repository(settings)
        child = pulumi.ResourceOptions(parent=self)
        primary = declare(
            PostgresServerKind,
            f"{name}-primary",
            {
                "state_dir": str(server_dir(base)),
                "port": settings.postgres.port,
                "database": settings.postgres.database,
                "superuser_password": superuser,
                "replication_password": replication,
                "settings": gucs,
                "allow_data_loss": settings.allow_data_loss,
                "backup": repository,
            },
            child,
        )
        after_primary = pulumi.ResourceOptions(parent=self, depends_on=[primary])
        if repository is not None:  # archiving of the primary; backups are taken by scripts/backup
            backups = {
                "repository": repository,
                "primary_state_dir": str(server_dir(base)),
                "port": settings.postgres.port,
                "superuser_password": superuser,
                "allow_data_loss": settings.allow_data_loss,
            }
            declare(BackupRepositoryKind, f"{name}-backups", backups, after_primary)
        replicas = [
            declare(
                PostgresReplicaKind,
                f"{name}-replica-{index}",
                {
                    "state_dir": str(server_dir(base, index)),
                    "port": port,
                    "primary_port": settings.postgres.port,
                    "slot_name": replication_slot(index),
                    "superuser_password": superuser,
                    "replication_password": replication,
                    "settings": gucs,
                },
                after_primary,
            )
            for index, port in enumerate(settings.replica_ports)
        ]
        return primary, list(replicas)
