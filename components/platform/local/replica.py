"""thorbisdb:local:PostgresReplica — a hot standby streaming from the primary through its own slot."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import psycopg
from pydantic import Field, field_validator

from components.connection import LOOPBACK
from components.kind import Expect, Kind, Observed, ProviderError, Replace, Secret, Spec
from components.platform.local import postgres_files as pg
from components.platform.local import process
from components.platform.local.postgres_files import REPLICATION_ROLE

TOKEN = "thorbisdb:local:PostgresReplica"


class PostgresReplicaSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of this replica: data/, run/ and postgres.log.")
    port: int = Field(ge=1024, le=65535, description="Port of the replica on 127.0.0.1.")
    primary_port: Replace[int] = Field(ge=1024, le=65535, description="Port of the primary on 127.0.0.1.")
    slot_name: Replace[str] = Field(description="Physical replication slot on the primary, one per replica.")
    superuser_password: Secret[str] = Field(min_length=1, description="Password of `postgres` (secret).")
    replication_password: Secret[str] = Field(min_length=1, description="Password of `replicator` (secret).")
    settings: dict[str, str] = Field(default_factory=dict, description="postgresql.conf settings we manage.")

    @field_validator("slot_name")
    @classmethod
    def slot_name_is_valid(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9_]{1,63}", value):
            raise ValueError("a slot name is 1-63 characters of a-z, 0-9 and _")
        return value


class PostgresReplicaStatus(pg.ServerFilesStatus):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="The replica's postmaster runs and answers (false: `up` starts it)."
    )
    streaming: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="It is in recovery and its WAL receiver streams from the primary."
    )


def replica_settings(spec: PostgresReplicaSpec) -> dict[str, str]:
    server = pg.ServerDir(Path(spec.state_dir))
    return {
        **spec.settings,
        "listen_addresses": LOOPBACK,
        "port": str(spec.port),
        "unix_socket_directories": str(server.socket_dir),
        "hot_standby": "on",
        "primary_slot_name": spec.slot_name,
        "primary_conninfo": (
            f"host={LOOPBACK} port={spec.primary_port} user={REPLICATION_ROLE} "
            f"passfile={server.base / '.pgpass'} application_name={spec.slot_name}"
        ),
    }


def write_passfile(spec: PostgresReplicaSpec) -> Path:
    passfile = Path(spec.state_dir) / ".pgpass"
    escaped = spec.replication_password.replace("\\", "\\\\").replace(":", "\\:")
    process.write_private_file(passfile, f"{LOOPBACK}:{spec.primary_port}:*:{REPLICATION_ROLE}:{escaped}\n")
    return passfile


def drop_slot(spec: PostgresReplicaSpec) -> None:
    with pg.connect(spec.primary_port, spec.superuser_password) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
            (spec.slot_name,),
        )


def base_backup(spec: PostgresReplicaSpec) -> None:
    """A copy of the primary, built aside and moved into place once pg_basebackup has finished."""
    server = pg.ServerDir(Path(spec.state_dir))
    process.make_private_dir(server.base)
    passfile = write_passfile(spec)
    drop_slot(spec)  # a slot left by an earlier replica of the same name would hold WAL forever
    # The slot reserves WAL before the backup starts. pg_basebackup --create-slot makes it only once the
    # backup has begun, and a checkpoint of another replica's backup in between can recycle the WAL
    # this one needs ("requested WAL segment ... has already been removed").
    with pg.connect(spec.primary_port, spec.superuser_password) as conn:
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (spec.slot_name,))
    with pg.built_aside(server) as target:
        process.run(
            process.as_service_user(
                [
                    process.pg_tool("pg_basebackup"),
                    f"--dbname=host={LOOPBACK} port={spec.primary_port} user={REPLICATION_ROLE} passfile={passfile}",
                    f"--pgdata={target}",
                    "--write-recovery-conf",
                    "--wal-method=stream",
                    "--checkpoint=fast",
                    f"--slot={spec.slot_name}",
                ]
            ),
            f"pg_basebackup from {LOOPBACK}:{spec.primary_port} into {server.data}",
            timeout=600,
        )
        # -R wrote standby.signal and a primary_conninfo into postgresql.auto.conf, which would override
        # ours in thorbis.conf: keep the signal, drop those lines.
        auto_conf = target / "postgresql.auto.conf"
        kept = [
            line
            for line in auto_conf.read_text().splitlines()
            if not line.startswith(("primary_conninfo", "primary_slot_name"))
        ]
        process.write_private_file(auto_conf, "\n".join(kept) + "\n")


class PostgresReplicaKind(Kind[PostgresReplicaSpec, PostgresReplicaStatus]):
    token = TOKEN
    spec_type = PostgresReplicaSpec
    status_type = PostgresReplicaStatus

    def create(self, spec: PostgresReplicaSpec) -> tuple[str, Observed[PostgresReplicaStatus]]:
        server = pg.ServerDir(Path(spec.state_dir))
        pg.clear_half_made(server)
        if not server.initialised():
            base_backup(spec)
        write_passfile(spec)
        pg.write_config(server, replica_settings(spec))
        pg.start(server)
        self.wait_streaming(spec)
        return str(server.data), self.status(spec)

    def status(self, spec: PostgresReplicaSpec) -> Observed[PostgresReplicaStatus]:
        """Its settings we manage, as it runs with them, and whether it runs and streams."""
        server = pg.ServerDir(Path(spec.state_dir))
        if server.postmaster_pid() is None or not pg.answering(spec.port, spec.superuser_password):
            return Observed({}, PostgresReplicaStatus(running=False, streaming=False))
        with pg.connect(spec.port, spec.superuser_password) as conn:
            recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            receiver = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
            streaming = bool(recovery and recovery[0] and receiver and receiver[0] == "streaming")
            settings = pg.live_settings(conn, spec.settings)
            files = {
                "pg_hba": pg.hba_differences(server),
                "altered_system": pg.undeclared_overrides(conn, replica_settings(spec)),
            }
        return Observed({"settings": settings}, PostgresReplicaStatus(running=True, streaming=streaming, **files))

    def wait_streaming(self, spec: PostgresReplicaSpec) -> None:
        process.wait_until(lambda: bool(self.status(spec).status.streaming), 60, f"replica {spec.slot_name} to stream")

    def observe(
        self, resource_id: str, spec: PostgresReplicaSpec, recorded: PostgresReplicaStatus | None = None
    ) -> Observed[PostgresReplicaStatus] | None:
        if not pg.ServerDir(Path(spec.state_dir)).initialised():
            return None
        return self.status(spec)

    def update(
        self, resource_id: str, old: dict[str, Any], spec: PostgresReplicaSpec
    ) -> Observed[PostgresReplicaStatus]:
        server = pg.ServerDir(Path(spec.state_dir))
        write_passfile(spec)
        pg.write_config(server, replica_settings(spec))
        if server.postmaster_pid() is None:
            pg.start(server)
        else:
            old_port = int(old.get("port", spec.port))
            try:
                with pg.connect(old_port, spec.superuser_password) as conn:
                    undeclared = pg.undeclared_overrides(conn, replica_settings(spec))
                    pg.reset_overrides(conn, [line.split(" = ", 1)[0] for line in undeclared])
                    pg.apply_settings(conn, server)
            except (ProviderError, psycopg.Error):
                pg.pg_ctl(server, "restart", "-m", "fast")
        self.wait_streaming(spec)
        return self.status(spec)

    def delete(
        self, resource_id: str, spec: PostgresReplicaSpec, recorded: PostgresReplicaStatus | None = None
    ) -> None:
        """A replica holds a copy only: its directory goes, and so does its slot on the primary."""
        server = pg.ServerDir(Path(spec.state_dir))
        pg.stop(server)
        if process.port_open(spec.primary_port):
            drop_slot(spec)
        process.remove_tree(server.base)
