"""PgBouncer's write and read pools and the read router, on real servers made by their own kinds.

A primary, two streaming replicas, PgBouncer with two read slots and a router checking every 100 ms.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from components.connection import LOOPBACK
from components.platform.local import process
from components.platform.local.pgbouncer import PgBouncerKind, PgBouncerSpec
from components.platform.local.router import ReadRouterKind, ReadRouterSpec, ReadRouterStatus, files
from testbed.support import reachable_state_dir
from tests.integration.conftest import (
    DATABASE,
    Primary,
    Replica,
    eventually,
    pgbouncer_spec,
    running_replica,
)

AUTH_PASSWORD = "it-auth-Pass'word:0123"
APP_ROLE, APP_PASSWORD = "it_router_app", "it-app-Pass-0123"
MAX_LAG = 1024 * 1024


@dataclass
class Pools:
    primary: Primary
    replicas: list[Replica]
    bouncer: PgBouncerSpec
    router_kind: ReadRouterKind
    router: ReadRouterSpec
    router_id: str

    def connect(self, database: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=LOOPBACK,
            port=self.bouncer.port,
            dbname=database,
            user=APP_ROLE,
            password=APP_PASSWORD,
            autocommit=True,
            prepare_threshold=None,
            connect_timeout=10,
        )

    def routes(self) -> dict[str, Any]:
        return dict(json.loads(files(self.router)[2].read_text()))


def router_spec(base: Path, primary: Primary, replicas: list[Replica], bouncer: PgBouncerSpec) -> ReadRouterSpec:
    servers = [{"name": "primary", "port": primary.port, "socketDir": str(primary.server.socket_dir), "primary": True}]
    servers += [
        {"name": f"replica-{i}", "port": r.spec.port, "socketDir": str(r.base / "run")} for i, r in enumerate(replicas)
    ]
    return ReadRouterSpec.model_validate(
        {
            "stateDir": str(base / "router"),
            "pgbouncerDir": bouncer.state_dir,
            "pgbouncerPort": bouncer.port,
            "database": DATABASE,
            "authPassword": AUTH_PASSWORD,
            "servers": servers,
            "readSlots": len(replicas),
            "maxLagBytes": MAX_LAG,
            "intervalMs": 100,
        }
    )


@pytest.fixture(scope="module")
def pools(primary: Primary) -> Iterator[Pools]:
    with (
        running_replica(primary) as first,
        running_replica(primary) as second,
        reachable_state_dir() as base,
        primary.connect() as conn,
    ):
        conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}'")
        bouncer = pgbouncer_spec(primary, base / "pgbouncer", AUTH_PASSWORD, read_slots=2, default_pool_size=4)
        bouncer_kind = PgBouncerKind()
        bouncer_id, _ = bouncer_kind.create(bouncer)
        router = router_spec(base, primary, [first, second], bouncer)
        router_kind = ReadRouterKind()
        router_id, _ = router_kind.create(router)
        try:
            yield Pools(primary, [first, second], bouncer, router_kind, router, router_id)
        finally:
            router_kind.delete(router_id, router)
            bouncer_kind.delete(bouncer_id, bouncer)
            conn.execute(f"DROP ROLE {APP_ROLE}")


def servers_of(pools: Pools, database: str, clients: int) -> set[tuple[bool, int]]:
    """(in recovery, port) of the servers that `clients` transactions open at once land on."""
    together = threading.Barrier(clients, timeout=30)

    def one(_: int) -> tuple[bool, int]:
        with pools.connect(database) as conn, conn.transaction():
            row = conn.execute("SELECT pg_is_in_recovery(), current_setting('port')::int").fetchone()
            together.wait()
        assert row is not None
        return bool(row[0]), int(row[1])

    with ThreadPoolExecutor(max_workers=clients) as executor:
        return set(executor.map(one, range(clients)))


def test_the_read_pool_spreads_over_the_replicas_and_the_write_pool_is_the_primary(pools: Pools) -> None:
    replica_ports = {r.spec.port for r in pools.replicas}
    assert servers_of(pools, f"{DATABASE}_read", 4) == {(True, port) for port in replica_ports}
    assert servers_of(pools, DATABASE, 2) == {(False, pools.primary.port)}
    observed = pools.router_kind.observe(pools.router_id, pools.router)
    assert observed is not None
    assert observed.status == ReadRouterStatus(
        running=True, write_target="primary", read_targets=["replica-0", "replica-1"]
    )


def test_a_replica_too_far_behind_leaves_the_read_pool_until_it_catches_up(pools: Pools) -> None:
    lagging = pools.replicas[0]
    with lagging.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        with pools.primary.connect() as conn:  # more WAL than MAX_LAG: a table's worth, then a segment switch
            conn.execute("CREATE TABLE IF NOT EXISTS it_router_lag AS SELECT g FROM generate_series(1, 50000) g")
            conn.execute("SELECT pg_switch_wal()")
        eventually(lambda: pools.routes()["readTargets"] == ["replica-1"], 20, "the lagging replica to leave")
        assert "bytes behind" in pools.routes()["excluded"]["replica-0"]
        # its server connections were closed (RECONNECT): new transactions only find the other replica
        assert servers_of(pools, f"{DATABASE}_read", 4) == {(True, pools.replicas[1].spec.port)}
    finally:
        with lagging.connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        with pools.primary.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS it_router_lag")
    eventually(lambda: pools.routes()["readTargets"] == ["replica-0", "replica-1"], 20, "the replica to return")


def test_a_router_that_stopped_is_drift_that_update_restarts(pools: Pools) -> None:
    pid = process.read_pid(files(pools.router)[1])
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not process.pid_alive(pid), 10, "the router to die")
    observed = pools.router_kind.observe(pools.router_id, pools.router)
    assert observed is not None and observed.status.running is False
    assert pools.router_kind.drifted(observed.status, pools.router) == ["running"]
    assert pools.router_kind.update(pools.router_id, {}, pools.router).status.running is True


def test_a_router_started_by_a_caller_with_secrets_in_its_environment_keeps_none_of_them(
    pools: Pools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router outlives the provider, whose environment holds the caller's PGPASSWORD and the stack's
    config (PULUMI_CONFIG, secrets decrypted): it starts with the servers' clean environment instead."""
    pid = process.read_pid(files(pools.router)[1])
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not process.pid_alive(pid), 10, "the router to die")
    monkeypatch.setenv("PGPASSWORD", "caller-secret-pgpassword")
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({"thorbis:postgresPassword": "caller-secret-config"}))
    assert pools.router_kind.update(pools.router_id, {}, pools.router).status.running is True
    restarted = process.read_pid(files(pools.router)[1])
    assert restarted is not None
    environment = Path(f"/proc/{restarted}/environ").read_bytes()
    names = {entry.split(b"=", 1)[0].decode() for entry in environment.split(b"\0") if entry}
    assert not names & {"PGPASSWORD", "PULUMI_CONFIG"}, sorted(names)
    assert b"caller-secret" not in environment


def test_the_auth_role_learns_the_servers_health_and_no_other_statistic(pools: Pools) -> None:
    with psycopg.connect(
        host=LOOPBACK,
        port=pools.replicas[0].spec.port,
        dbname=DATABASE,
        user="pgbouncer_auth",
        password=AUTH_PASSWORD,
        autocommit=True,
    ) as conn:
        assert conn.execute("SELECT * FROM pgbouncer.server_health()").fetchone()[:2] == (True, True)  # type: ignore[index]
        assert conn.execute("SELECT status, sender_host FROM pg_stat_wal_receiver").fetchone() == (None, None)


def test_a_router_whose_directory_is_removed_stops_by_itself(pools: Pools) -> None:
    """A drill or a hand removes the state directory without stopping it: it must not run on unseen."""
    pid = process.read_pid(files(pools.router)[1])
    assert pid is not None
    shutil.rmtree(pools.router.state_dir)
    eventually(lambda: not process.pid_alive(pid), 10, "the router without its directory to stop")
    assert pools.router_kind.observe(pools.router_id, pools.router) is None  # gone: up makes it again
    pools.router_kind.create(pools.router)
