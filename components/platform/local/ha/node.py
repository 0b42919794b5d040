"""thorbisdb:local:PatroniNode — one PostgreSQL node of the stack's Patroni cluster.

The node's role is not declared: Patroni elects the leader, and `role` is an output that a failover
changes without any input changing (a `preview` after it shows nothing to do). The first node to win
the initialize race runs initdb (checksums, SCRAM); the others copy it with pg_basebackup and stream
through a replication slot Patroni keeps on the leader; an old leader rejoins through pg_rewind.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from components.kind import Expect, Kind, Observed, ProviderError, Replace, Secret, Spec, Status
from components.platform.local import pgbackrest, process
from components.platform.local import postgres_files as pg
from components.platform.local.ha import etcd, http, patroni
from components.platform.local.pgbackrest import Repository
from components.platform.local.postgres import ensure_roles_and_database

TOKEN = "thorbisdb:local:PatroniNode"
#: initdb or a base backup of a large database happen inside a node's first start.
START_TIMEOUT_SECONDS = 1800
SWITCHOVER_TIMEOUT_SECONDS = 60


class PatroniNodeSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of the node: data/, run/, patroni.yml and its logs.")
    scope: Replace[str] = Field(pattern=r"^[a-z0-9-]{1,63}$", description="The cluster the node belongs to.")
    name: Replace[str] = Field(pattern=r"^[a-z0-9-]{1,63}$", description="The node's name in the cluster.")
    port: Replace[int] = Field(ge=1024, le=65535, description="Port of its PostgreSQL on 127.0.0.1.")
    rest_port: Replace[int] = Field(ge=1024, le=65535, description="Port of its Patroni REST API on 127.0.0.1.")
    etcd_ports: list[int] = Field(min_length=1, description="Client ports of the etcd members.")
    database: str = Field(description="The application database, made by the node that bootstraps.")
    superuser_password: Secret[str] = Field(min_length=1, description="Password of `postgres` (secret).")
    replication_password: Secret[str] = Field(min_length=1, description="Password of `replicator` (secret).")
    allow_data_loss: bool = Field(default=False, description="Whether delete may remove the data directory.")
    backup: Repository | None = Field(
        default=None,
        description="The stack's pgBackRest repository: the node archives WAL to it whenever it leads (its "
        "own pgBackRest config, written before it starts, names it pg1). None: no archiving.",
    )


class PatroniNodeStatus(Status):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="Its supervisor, Patroni and PostgreSQL run (false: `up` starts them)."
    )
    role: str | None = Field(
        default=None, description="leader, sync_standby or replica: Patroni's to decide, never drift."
    )
    timeline: int | None = Field(default=None, description="PostgreSQL's timeline: each promotion starts one.")


def node_repository(spec: PatroniNodeSpec) -> Repository | None:
    """The stack's repository as this node pushes WAL to it: through a pgBackRest config of its own."""
    if spec.backup is None:
        return None
    return spec.backup.model_copy(update={"config_dir": str(Path(spec.state_dir) / "pgbackrest")})


def write_backup_files(spec: PatroniNodeSpec) -> None:
    repo = node_repository(spec)
    if repo is not None:
        server = patroni.NodeFiles(Path(spec.state_dir)).server
        pgbackrest.write_files(repo, [(server, spec.port)], spec.superuser_password)


def node_config(spec: PatroniNodeSpec) -> patroni.NodeConfig:
    repo = node_repository(spec)
    return patroni.NodeConfig(
        base=Path(spec.state_dir),
        scope=spec.scope,
        name=spec.name,
        port=spec.port,
        rest_port=spec.rest_port,
        etcd_ports=tuple(spec.etcd_ports),
        superuser_password=spec.superuser_password,
        replication_password=spec.replication_password,
        archive_command=None if repo is None else pgbackrest.archive_command(repo),
    )


def status(spec: PatroniNodeSpec) -> PatroniNodeStatus:
    member = patroni.member_status(spec.rest_port) if patroni.supervisor_pid(Path(spec.state_dir)) else None
    if member is None:
        return PatroniNodeStatus(running=False)
    return PatroniNodeStatus(
        running=member.get("state") == "running",
        role="leader" if member.get("role") in ("master", "primary") else member.get("role"),
        timeline=member.get("timeline"),
    )


def wait_running(spec: PatroniNodeSpec) -> None:
    process.wait_until(
        lambda: patroni.running(spec.rest_port), START_TIMEOUT_SECONDS, f"Patroni node {spec.name} to run"
    )


def others_running(spec: PatroniNodeSpec) -> list[dict[str, Any]]:
    cluster = patroni.cluster_status([spec.rest_port])
    return [m for m in (cluster or {}).get("members", []) if m.get("name") != spec.name and m.get("state") == "running"]


def hand_over_leadership(spec: PatroniNodeSpec) -> None:
    """A leader that is being removed first hands its lock to a running replica (a planned switchover).
    Best effort: when no replica can take it (the whole cluster is going), stopping the leader is enough."""
    if status(spec).role != "leader" or not others_running(spec):
        return
    auth = (patroni.REST_USER, spec.superuser_password)
    with contextlib.suppress(ProviderError):
        http.call(spec.rest_port, "/switchover", "POST", {"leader": spec.name}, SWITCHOVER_TIMEOUT_SECONDS, auth)


def forget_member(spec: PatroniNodeSpec) -> None:
    """Remove the node's member key from etcd now, rather than when its ttl runs out: the leader then
    drops its replication slot, and the cluster no longer lists it."""
    for port in spec.etcd_ports:
        with contextlib.suppress(ProviderError):
            etcd.delete(port, f"{patroni.NAMESPACE}{spec.scope}/members/{spec.name}")
            return


def set_aside(base: Path) -> Path:
    """Keep a removed node's data beside the stack's directories (data loss is not allowed)."""
    aside = base.with_name(f"removed-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    base.rename(aside)
    return aside


class PatroniNodeKind(Kind[PatroniNodeSpec, PatroniNodeStatus]):
    token = TOKEN
    spec_type = PatroniNodeSpec
    status_type = PatroniNodeStatus
    deleting_loses = (
        "the Patroni node {name} would leave the cluster, its data directory set aside (deleted when "
        "thorbis:allowDataLoss is true): its copy of the data is lost to the cluster"
    )
    replacing_loses = (
        "Patroni node {name} would be replaced ({changes}): it is deleted first, its data directory set aside, "
        "and a new node made in its place; with every node replaced (as a change of thorbis:postgres.port or "
        "thorbis:ha.basePort does) the stack's DSN would serve a new, empty cluster. Keep the old value"
    )

    def create(self, spec: PatroniNodeSpec) -> tuple[str, PatroniNodeStatus]:
        write_backup_files(spec)
        patroni.write_files(node_config(spec))
        patroni.start(Path(spec.state_dir))
        wait_running(spec)
        self.ensure_database(spec)
        return spec.name, status(spec)

    def ensure_database(self, spec: PatroniNodeSpec, current_password: str | None = None) -> None:
        """Passwords and the application database, made on whichever node leads (they then stream)."""
        if status(spec).role != "leader":
            return
        current = current_password or spec.superuser_password
        if not pg.answering(spec.port, current):
            current = spec.superuser_password  # already changed (by another node's update)
        ensure_roles_and_database(spec.port, current, spec.superuser_password, spec.replication_password, spec.database)

    def observe(
        self, resource_id: str, spec: PatroniNodeSpec, recorded: PatroniNodeStatus | None = None
    ) -> Observed[PatroniNodeStatus] | None:
        if not patroni.NodeFiles(Path(spec.state_dir)).server.initialised():
            return None
        return Observed({}, status(spec))

    def update(self, resource_id: str, old: dict[str, Any], spec: PatroniNodeSpec) -> PatroniNodeStatus:
        base = Path(spec.state_dir)
        write_backup_files(spec)
        if patroni.write_files(node_config(spec)):
            patroni.reload(base)
        patroni.start(base)
        wait_running(spec)
        self.ensure_database(spec, old.get("superuserPassword"))
        return status(spec)

    def delete(self, resource_id: str, spec: PatroniNodeSpec, recorded: PatroniNodeStatus | None = None) -> None:
        """The node leaves the cluster (a leader hands over first); its directory is deleted when the stack
        allows data loss, and set aside otherwise (it may be the last copy: destroy deletes every node)."""
        base = Path(spec.state_dir)
        hand_over_leadership(spec)
        patroni.stop(base)
        forget_member(spec)
        if spec.allow_data_loss:
            process.remove_tree(base)
        elif base.exists():
            aside = set_aside(base)
            print(f"thorbisdb: {spec.name}'s data directory was kept in {aside}", file=sys.stderr)
