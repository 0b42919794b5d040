"""thorbisdb:local:PostgresServer — the primary: initdb (checksums, SCRAM), our settings, pg_ctl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from psycopg import sql
from pydantic import Field

from components import engine_log
from components.connection import LOOPBACK
from components.kind import Expect, Kind, Observed, ProviderError, Replace, Secret, Spec
from components.platform.local import pgbackrest, process
from components.platform.local import postgres_files as pg
from components.platform.local.pgbackrest import Replayed, Repository

TOKEN = "thorbisdb:local:PostgresServer"


def replication_role_statement(verb: Literal["CREATE", "ALTER"], verifier: sql.Composable) -> sql.Composed:
    """The replication role, as the primary's bootstrap makes it here and docker's init script there (where
    the verifier is a psql variable computed in the container): its password only ever as a SCRAM verifier."""
    return sql.SQL("{} ROLE {} WITH REPLICATION LOGIN PASSWORD {}").format(
        sql.SQL(verb), sql.Identifier(pg.REPLICATION_ROLE), verifier
    )


class PostgresServerSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of this server: data/, run/ (socket) and postgres.log.")
    port: int = Field(ge=1024, le=65535, description="Port on 127.0.0.1.")
    database: Replace[str] = Field(description="The application database, created if missing.")
    superuser_password: Secret[str] = Field(min_length=1, description="Password of `postgres` (secret).")
    replication_password: Secret[str] = Field(min_length=1, description="Password of `replicator` (secret).")
    settings: dict[str, str] = Field(default_factory=dict, description="postgresql.conf settings we manage.")
    allow_data_loss: bool = Field(default=False, description="Whether delete may remove the data directory.")
    backup: Repository | None = Field(
        default=None,
        description="The pgBackRest repository the server archives WAL to (its config is written before the "
        "server starts); a missing data directory is restored from it when it holds a backup and "
        "restoreOnProvision is set. None: no archiving.",
    )


class PostgresServerStatus(pg.ServerFilesStatus):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="The postmaster runs and answers (false: stopped or killed; `up` starts it)."
    )
    server_version: str | None = Field(default=None, description="SHOW server_version.")
    data_checksums: bool | None = Field(default=None, description="The cluster was initialised with data checksums.")
    restored_to: Replayed | None = Field(
        default=None,
        description="Set when the server was restored from the backup repository: what its recovery replayed.",
    )


def server_settings(spec: PostgresServerSpec) -> dict[str, str]:
    server = pg.ServerDir(Path(spec.state_dir))
    return {
        **spec.settings,
        "listen_addresses": LOOPBACK,
        "port": str(spec.port),
        "unix_socket_directories": str(server.socket_dir),
    }


def wait_for_promotion(spec: PostgresServerSpec, timeout: float = 3600) -> None:
    """A restored server replays the archived WAL, then promotes itself: wait until it takes writes."""

    def promoted() -> bool:
        try:
            with pg.connect(spec.port, spec.superuser_password) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                return row is not None and not row[0]
        except ProviderError:
            return False

    process.wait_until(promoted, timeout, f"the restored PostgreSQL on port {spec.port} to replay its WAL")


def ensure_roles_and_database(
    port: int, current_password: str, superuser_password: str, replication_password: str, database: str
) -> None:
    """Passwords, the replication role and the application database of a primary (or a Patroni leader), made
    to match the spec."""
    with pg.connect(port, current_password) as conn:
        verifier = pg.password_verifier(conn, pg.SUPERUSER, superuser_password)
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(pg.SUPERUSER), verifier))
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (pg.REPLICATION_ROLE,)).fetchone()
        verifier = pg.password_verifier(conn, pg.REPLICATION_ROLE, replication_password)
        conn.execute(replication_role_statement("ALTER" if exists else "CREATE", verifier))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


class PostgresServerKind(Kind[PostgresServerSpec, PostgresServerStatus]):
    token = TOKEN
    spec_type = PostgresServerSpec
    status_type = PostgresServerStatus
    deleting_loses = "the primary {name} and its data directory would be deleted"

    def create(self, spec: PostgresServerSpec) -> tuple[str, Observed[PostgresServerStatus]]:
        server = pg.ServerDir(Path(spec.state_dir))
        self.write_backup_files(spec)
        pg.clear_half_made(server)
        # an existing data directory is adopted, never overwritten; a missing one is restored or initialised
        if not server.initialised() and not self.restore_if_backed_up(spec, server):
            pg.initdb(server, spec.superuser_password)
        recovering = pg.in_archive_recovery(server)  # restored now, or by a run killed while it replayed
        archive_end = pgbackrest.archive_end(spec.backup) if recovering and spec.backup else None
        pg.write_config(server, server_settings(spec))
        pg.start(server)
        restored = self.promoted(spec, server, archive_end) if recovering else None
        self.bootstrap(spec, spec.superuser_password)
        observed = self.observed(spec)
        if restored is None:
            return str(server.data), observed
        return str(server.data), Observed(observed.inputs, observed.status.model_copy(update={"restored_to": restored}))

    def promoted(self, spec: PostgresServerSpec, server: pg.ServerDir, archive_end: str | None) -> Replayed:
        """Wait for a restored server to replay the archive and promote itself; say what it restored to."""
        wait_for_promotion(spec)
        backups = pgbackrest.backups(pgbackrest.info(spec.backup)) if spec.backup else []
        with pg.connect(spec.port, spec.superuser_password) as conn:
            outcome = pgbackrest.replayed(conn, backups[-1]["label"] if backups else "?", archive_end)
        engine_log.warn(outcome.describe(server.data, spec.settings.get("archive_timeout")))
        return outcome

    def write_backup_files(self, spec: PostgresServerSpec) -> None:
        """pgBackRest's config, before the server starts: its archive_command and a restore need it."""
        if spec.backup is not None:
            server = pg.ServerDir(Path(spec.state_dir))
            pgbackrest.write_files(spec.backup, [(server, spec.port)], spec.superuser_password)

    def restore_if_backed_up(self, spec: PostgresServerSpec, server: pg.ServerDir) -> bool:
        """Re-provisioning after a disaster: the latest backup plus every archived WAL segment, not initdb."""
        repo = spec.backup
        if repo is None or not repo.restore_on_provision or not pgbackrest.has_backup(repo):
            return False
        pgbackrest.restore(repo, server)
        return True

    def bootstrap(self, spec: PostgresServerSpec, current_password: str) -> None:
        ensure_roles_and_database(
            spec.port, current_password, spec.superuser_password, spec.replication_password, spec.database
        )

    def observed(self, spec: PostgresServerSpec) -> Observed[PostgresServerStatus]:
        """The server's settings we manage, as it runs with them, and its status."""
        server = pg.ServerDir(Path(spec.state_dir))
        running = server.postmaster_pid() is not None and pg.answering(spec.port, spec.superuser_password)
        if not running:
            return Observed({}, PostgresServerStatus(running=False))
        with pg.connect(spec.port, spec.superuser_password) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            checksums = conn.execute("SHOW data_checksums").fetchone()
            status = PostgresServerStatus(
                running=True,
                server_version=version[0] if version else "",
                data_checksums=bool(checksums and checksums[0] == "on"),
                pg_hba=pg.hba_differences(server),
                altered_system=pg.undeclared_overrides(conn, server_settings(spec)),
            )
            return Observed({"settings": pg.live_settings(conn, spec.settings)}, status)

    def observe(
        self, resource_id: str, spec: PostgresServerSpec, recorded: PostgresServerStatus | None = None
    ) -> Observed[PostgresServerStatus] | None:
        if not pg.ServerDir(Path(spec.state_dir)).initialised():
            return None
        return self.observed(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: PostgresServerSpec) -> Observed[PostgresServerStatus]:
        server = pg.ServerDir(Path(spec.state_dir))
        self.write_backup_files(spec)
        pg.write_config(server, server_settings(spec))
        old_port, old_password = (
            int(old.get("port", spec.port)),
            old.get("superuserPassword", spec.superuser_password),
        )
        if server.postmaster_pid() is None:
            pg.start(server)
            old_port = spec.port
        else:
            with pg.connect(old_port, old_password) as conn:
                drifted = [
                    name for name, value in (old.get("settings") or {}).items() if value != spec.settings.get(name)
                ]
                undeclared = [line.split(" = ", 1)[0] for line in pg.undeclared_overrides(conn, server_settings(spec))]
                pg.reset_overrides(conn, [*drifted, *undeclared])
                pg.apply_settings(conn, server)
        process.wait_until(lambda: server.postmaster_pid() is not None, 60, f"PostgreSQL in {server.data}")
        self.bootstrap(spec, old_password if pg.answering(spec.port, old_password) else spec.superuser_password)
        return self.observed(spec)

    def delete(self, resource_id: str, spec: PostgresServerSpec, recorded: PostgresServerStatus | None = None) -> None:
        if not spec.allow_data_loss:
            raise ProviderError(
                f"refusing to delete the PostgreSQL data in {spec.state_dir}: this stack does not allow data loss. "
                "Back it up, then `pulumi config set thorbis:allowDataLoss true`, `pulumi up`, and destroy again"
            )
        server = pg.ServerDir(Path(spec.state_dir))
        pg.stop(server)
        process.remove_tree(server.base)
