"""The local platform's kinds against real servers: create -> observe -> update -> delete, and drift."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from components.connection import LOOPBACK
from components.kind import ProviderError, Spec, reported
from components.platform.local import process
from components.platform.local.pgbouncer import AUTH_ROLE, AUTH_SCHEMA, PgBouncerKind, PgBouncerSpec, admin_console
from components.platform.local.redis import RedisKind, RedisSpec, memory_bytes
from testbed.support import free_port, listening, processes_under, reachable_state_dir
from tests.integration.conftest import (
    DATABASE,
    REPLICATION_PASSWORD,
    SETTINGS,
    Primary,
    Replica,
    eventually,
    flat,
    pgbouncer_spec,
    running_replica,
)

AUTH_PASSWORD = 'it-"bouncer" pass:0123'  # a double quote: userlist.txt must escape it
CLEAN_FILES: dict[str, list[str]] = {
    "pgHba": [],
    "alteredSystem": [],
}  # pg_hba.conf and postgresql.auto.conf as the stack has them
REDIS_PASSWORD = 'it-re"dis\\ pass word'  # quote, backslash and space: redis.conf must quote them
APP_PASSWORD = "it-App-Pass-0123"


def recorded(spec: Spec, *outputs: dict[str, Any] | None) -> dict[str, Any]:
    """What Pulumi keeps for a resource: its inputs, then its outputs (the latest last)."""
    state = spec.model_dump(by_alias=True)
    for produced in outputs:
        state.update(produced or {})
    return state


def with_settings(spec: Any, **changes: str) -> Any:
    return spec.model_copy(update={"settings": {**spec.settings, **changes}})


def make_login_role(primary: Primary, prefix: str) -> str:
    """An application role, as the database layer would make it: LOGIN with a SCRAM password."""
    role = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with primary.connect() as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(APP_PASSWORD)
            )
        )
    return role


# --- PostgresServer -------------------------------------------------------------------------------------


def test_primary_has_checksums_scram_preloads_app_database_and_replicator(primary: Primary) -> None:
    observed = flat(primary.kind.observe(primary.resource_id, primary.spec))
    assert observed is not None
    assert observed["running"] is True
    assert observed["dataChecksums"] is True
    assert observed["serverVersion"].startswith("15")
    assert observed["settings"] == SETTINGS

    assert primary.scalar("SHOW data_checksums") == "on"
    with primary.connect() as conn:
        rules = conn.execute("SELECT auth_method, error FROM pg_hba_file_rules").fetchall()
    assert rules, "pg_hba.conf has no rules"
    assert all(method == "scram-sha-256" and error is None for method, error in rules), rules
    # pg_cron's worker retries each second until the app database (made after start) exists
    cron_query = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher' AND datname = %s"
    eventually(lambda: primary.scalar(cron_query, (DATABASE,)) == 1, 10, "pg_cron's launcher to start")
    preloaded = {name.strip() for name in primary.scalar("SHOW shared_preload_libraries").split(",")}
    assert {"pg_cron", "pg_stat_statements"} <= preloaded
    assert primary.scalar("SELECT count(*) FROM pg_database WHERE datname = %s", (DATABASE,)) == 1
    assert primary.scalar("SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = 'replicator'")
    assert primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'").startswith("SCRAM-SHA-256$")
    with psycopg.connect(
        host=LOOPBACK,
        port=primary.port,
        user="replicator",
        password=REPLICATION_PASSWORD,
        dbname="replication",
        replication="true",
        connect_timeout=5,
    ) as walsender:
        assert walsender.info.status == psycopg.pq.ConnStatus.OK
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=LOOPBACK, port=primary.port, user="postgres", password="wrong", connect_timeout=5)


def test_update_reloads_work_mem_and_restarts_for_shared_buffers(own_primary: Primary) -> None:
    kind, server = own_primary.kind, own_primary.server
    first_pid = server.postmaster_pid()

    reloaded = with_settings(own_primary.spec, work_mem="8MB")
    outputs = reported(kind.update(own_primary.resource_id, own_primary.state(), reloaded))
    assert outputs["settings"] == reloaded.settings
    assert own_primary.scalar("SHOW work_mem") == "8MB"
    assert server.postmaster_pid() == first_pid, "a reloadable setting must not restart the server"

    restarted = with_settings(reloaded, shared_buffers="64MB")
    outputs = reported(
        kind.update(own_primary.resource_id, recorded(reloaded, own_primary.outputs, outputs), restarted)
    )
    assert outputs["settings"] == restarted.settings
    assert own_primary.scalar("SHOW shared_buffers") == "64MB"
    assert own_primary.scalar("SHOW work_mem") == "8MB"
    assert own_primary.scalar("SELECT count(*) FROM pg_settings WHERE pending_restart") == 0
    assert server.postmaster_pid() not in (None, first_pid), "shared_buffers takes a restart"


def test_alter_system_by_hand_is_drift_that_update_repairs(own_primary: Primary) -> None:
    kind, spec = own_primary.kind, own_primary.spec
    with own_primary.connect() as conn:
        conn.execute("ALTER SYSTEM SET work_mem = '64MB'")
        conn.execute("SELECT pg_reload_conf()")
    eventually(lambda: own_primary.scalar("SHOW work_mem") == "64MB", 10, "work_mem set by hand to load")

    observed = flat(kind.observe(own_primary.resource_id, spec))
    assert observed is not None
    assert observed["settings"] == {**SETTINGS, "work_mem": "64MB"}

    repaired = reported(kind.update(own_primary.resource_id, own_primary.state(observed), spec))
    assert repaired["settings"] == SETTINGS
    assert own_primary.scalar("SHOW work_mem") == "4MB"
    assert "work_mem" not in (own_primary.server.data / "postgresql.auto.conf").read_text()
    assert flat(kind.observe(own_primary.resource_id, spec)) == repaired


def test_a_trust_line_in_pg_hba_and_an_undeclared_alter_system_are_drift_that_update_removes(
    own_primary: Primary,
) -> None:
    kind, spec, server = own_primary.kind, own_primary.spec, own_primary.server
    hba = server.data / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust   # a backdoor\n" + hba.read_text())
    with own_primary.connect() as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("SELECT pg_reload_conf()")
    eventually(lambda: own_primary.scalar("SHOW log_statement") == "all", 10, "log_statement set by hand to load")
    with psycopg.connect(host=LOOPBACK, port=own_primary.port, user="postgres", dbname="postgres") as intruder:
        assert intruder.execute("SELECT 1").fetchone() == (1,)  # no password: the backdoor works

    observed = flat(kind.observe(own_primary.resource_id, spec))
    assert observed is not None
    assert observed["pgHba"] == ["+ host all all 127.0.0.1/32 trust"]
    assert observed["alteredSystem"] == ["log_statement = all"]
    assert kind.drifted(kind.status_of(own_primary.state(observed)), spec) == ["pgHba", "alteredSystem"]

    repaired = reported(kind.update(own_primary.resource_id, own_primary.state(observed), spec))
    assert (repaired["pgHba"], repaired["alteredSystem"]) == ([], [])
    assert own_primary.scalar("SHOW log_statement") == "none"
    assert "log_statement" not in (server.data / "postgresql.auto.conf").read_text()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=LOOPBACK, port=own_primary.port, user="postgres", dbname="postgres", connect_timeout=5)


def test_killed_postmaster_is_reported_and_update_restarts_it_with_its_data(own_primary: Primary) -> None:
    kind, spec, server = own_primary.kind, own_primary.spec, own_primary.server
    with own_primary.connect() as conn:
        conn.execute("CREATE TABLE crash_probe (note text)")
        conn.execute("INSERT INTO crash_probe VALUES ('written before the crash')")
    killed = server.postmaster_pid()
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    eventually(lambda: server.postmaster_pid() is None, 10, "the killed postmaster to die")

    observed = flat(kind.observe(own_primary.resource_id, spec))
    assert observed == {"running": False}
    assert kind.drifted(kind.status_of(own_primary.state(observed)), spec) == ["running"]
    assert kind.drifted(kind.status_of(own_primary.state()), spec) == []

    started = reported(kind.update(own_primary.resource_id, own_primary.state(observed), spec))
    assert started["running"] is True
    assert server.postmaster_pid() not in (None, killed)
    assert own_primary.scalar("SELECT note FROM crash_probe") == "written before the crash"


def test_delete_keeps_data_unless_allowed_then_leaves_nothing(own_primary: Primary) -> None:
    kind, spec, server = own_primary.kind, own_primary.spec, own_primary.server
    with pytest.raises(ProviderError, match="allowDataLoss"):
        kind.delete(own_primary.resource_id, spec)
    assert server.initialised()
    assert server.postmaster_pid() is not None
    assert own_primary.scalar("SELECT 1") == 1
    assert processes_under(own_primary.base), "the test cannot see the server's processes"

    kind.delete(own_primary.resource_id, spec.model_copy(update={"allow_data_loss": True}))
    assert processes_under(own_primary.base) == []
    assert not listening(own_primary.port)
    assert not own_primary.base.exists()
    assert flat(kind.observe(own_primary.resource_id, spec)) is None


# --- PostgresReplica ------------------------------------------------------------------------------------


@pytest.fixture
def replica(primary: Primary) -> Iterator[Replica]:
    with running_replica(primary) as made:
        yield made


def replica_has(replica: Replica, note: str) -> bool:
    try:
        with replica.connect() as conn:
            row = conn.execute("SELECT count(*) FROM replicated WHERE note = %s", (note,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return row is not None and row[0] == 1


def test_replica_streams_rows_through_its_own_slot(primary: Primary, replica: Replica) -> None:
    assert replica.outputs == {**CLEAN_FILES, "running": True, "streaming": True, "settings": SETTINGS}
    note = uuid.uuid4().hex
    with primary.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS replicated (note text)")
        conn.execute("INSERT INTO replicated VALUES (%s)", (note,))
    eventually(lambda: replica_has(replica, note), 10, "a row written on the primary to reach the replica")

    with primary.connect() as conn:
        senders = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
        slot = conn.execute(
            "SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = %s", (replica.spec.slot_name,)
        ).fetchall()
    assert (replica.spec.slot_name, "streaming") in senders
    assert slot == [("physical", True)]
    with replica.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("INSERT INTO replicated VALUES ('refused on a standby')")
    assert flat(replica.kind.observe(replica.resource_id, replica.spec)) == replica.outputs


def test_replica_update_applies_settings_and_keeps_streaming(replica: Replica) -> None:
    changed = with_settings(replica.spec, work_mem="16MB")
    outputs = reported(replica.kind.update(replica.resource_id, recorded(replica.spec, replica.outputs), changed))
    assert outputs == {**CLEAN_FILES, "running": True, "streaming": True, "settings": changed.settings}
    with replica.connect() as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("16MB",)


def test_a_replicas_pg_hba_and_alter_system_by_hand_are_drift_that_update_removes(replica: Replica) -> None:
    hba = replica.base / "data" / "pg_hba.conf"
    hba.write_text(hba.read_text() + "host all all 127.0.0.1/32 trust\n")
    with replica.connect() as conn:
        conn.execute("ALTER SYSTEM SET log_connections = on")
    observed = flat(replica.kind.observe(replica.resource_id, replica.spec))
    assert observed is not None
    assert (observed["pgHba"], observed["alteredSystem"]) == (
        ["+ host all all 127.0.0.1/32 trust"],
        ["log_connections = on"],
    )

    repaired = reported(
        replica.kind.update(replica.resource_id, recorded(replica.spec, replica.outputs, observed), replica.spec)
    )
    assert repaired == replica.outputs
    assert "trust" not in hba.read_text()
    assert "log_connections" not in (replica.base / "data" / "postgresql.auto.conf").read_text()


def test_replica_delete_drops_its_slot_and_directory(primary: Primary) -> None:
    with running_replica(primary) as replica:
        slot_query = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s"
        assert primary.scalar(slot_query, (replica.spec.slot_name,)) == 1
        assert processes_under(replica.base)

        replica.kind.delete(replica.resource_id, replica.spec)
        assert primary.scalar(slot_query, (replica.spec.slot_name,)) == 0
        assert not replica.base.exists()
        assert processes_under(replica.base) == []
        assert not listening(replica.spec.port)
        assert flat(replica.kind.observe(replica.resource_id, replica.spec)) is None


# --- PgBouncer ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bouncer:
    kind: PgBouncerKind
    spec: PgBouncerSpec
    resource_id: str
    outputs: dict[str, Any]

    @property
    def base(self) -> Path:
        return Path(self.spec.state_dir)

    def connect(self, role: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=LOOPBACK,
            port=self.spec.port,
            user=role,
            password=APP_PASSWORD,
            dbname=DATABASE,
            autocommit=True,
            connect_timeout=30,
            prepare_threshold=None,
        )

    def show_config(self) -> dict[str, str]:
        with admin_console(self.spec) as console:
            return {str(row[0]): str(row[1]) for row in console.execute("SHOW CONFIG").fetchall()}


@pytest.fixture
def bouncer(primary: Primary) -> Iterator[Bouncer]:
    with reachable_state_dir() as base:
        spec = pgbouncer_spec(primary, base / "pgbouncer", AUTH_PASSWORD, default_pool_size=4, reserve_pool_size=1)
        kind = PgBouncerKind()
        resource_id, outputs = kind.create(spec)
        try:
            yield Bouncer(kind, spec, resource_id, reported(outputs))
        finally:
            kind.delete(resource_id, spec)


def test_pgbouncer_serves_300_clients_on_a_bounded_server_pool(primary: Primary, bouncer: Bouncer) -> None:
    role, clients = make_login_role(primary, "it_pool_load"), 300
    limit = bouncer.spec.default_pool_size + bouncer.spec.reserve_pool_size
    all_connected = threading.Barrier(clients, timeout=60)
    load_over = threading.Event()
    peaks: list[int] = []

    def sample_server_connections() -> None:
        with primary.connect() as conn:
            while not load_over.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone()
                peaks.append(row[0] if row else 0)
                time.sleep(0.01)

    def client(number: int) -> int:
        try:
            with bouncer.connect(role) as conn:
                all_connected.wait()  # 300 clients connected at once before any query
                row = conn.execute("SELECT %s::int, pg_sleep(0.02)", (number,)).fetchone()
        except BaseException:
            all_connected.abort()
            raise
        assert row is not None
        return int(row[0])

    sampler = threading.Thread(target=sample_server_connections)
    sampler.start()
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            answers = list(pool.map(client, range(clients), timeout=90))
    finally:
        load_over.set()
        sampler.join(timeout=10)
    assert sorted(answers) == list(range(clients))
    assert peaks, "pg_stat_activity was never sampled"
    assert 1 <= max(peaks) <= limit, f"the server saw {max(peaks)} connections of {role}; the pool allows {limit}"


def userlist_entries(path: Path) -> list[tuple[str, str]]:
    """userlist.txt as PgBouncer reads it: two double-quoted fields a line, a quote inside doubled."""
    field = r'"((?:[^"]|"")*)"'
    entries = []
    for line in path.read_text().splitlines():
        match = re.fullmatch(rf"{field}\s+{field}", line)
        assert match, f"PgBouncer cannot parse this line of {path}: {line!r}"
        entries.append((match.group(1).replace('""', '"'), match.group(2).replace('""', '"')))
    return entries


def test_pgbouncer_keeps_no_password_file_of_app_users(primary: Primary, bouncer: Bouncer) -> None:
    role = make_login_role(primary, "it_pool_user")
    with bouncer.connect(role) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)

    assert userlist_entries(bouncer.base / "userlist.txt") == [(AUTH_ROLE, AUTH_PASSWORD)]
    verifier = primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    for path in (path for path in bouncer.base.rglob("*") if path.is_file()):
        text = path.read_text(errors="replace")
        assert APP_PASSWORD not in text and verifier not in text, f"{path} holds {role}'s password"


def test_pgbouncer_observe_and_update(bouncer: Bouncer) -> None:
    assert bouncer.outputs["running"] is True
    assert flat(bouncer.kind.observe(bouncer.resource_id, bouncer.spec)) == bouncer.outputs
    assert bouncer.outputs["defaultPoolSize"] == 4

    changed = bouncer.spec.model_copy(update={"default_pool_size": 6, "max_client_conn": 500})
    outputs = reported(bouncer.kind.update(bouncer.resource_id, recorded(bouncer.spec, bouncer.outputs), changed))
    assert (outputs["defaultPoolSize"], outputs["maxClientConn"]) == (6, 500)
    live = bouncer.show_config()
    assert (live["default_pool_size"], live["max_client_conn"]) == ("6", "500")


def test_pgbouncer_set_by_hand_is_drift_that_update_restores(bouncer: Bouncer) -> None:
    with admin_console(bouncer.spec) as console:
        console.execute("SET default_pool_size = 17")
    observed = flat(bouncer.kind.observe(bouncer.resource_id, bouncer.spec))
    assert observed is not None
    assert observed["defaultPoolSize"] == 17

    restored = reported(
        bouncer.kind.update(bouncer.resource_id, recorded(bouncer.spec, bouncer.outputs, observed), bouncer.spec)
    )
    assert restored["defaultPoolSize"] == 4
    assert bouncer.show_config()["default_pool_size"] == "4"


def test_pgbouncer_delete_stops_it_and_removes_its_lookup(primary: Primary, bouncer: Bouncer) -> None:
    assert processes_under(bouncer.base)
    bouncer.kind.delete(bouncer.resource_id, bouncer.spec)
    assert processes_under(bouncer.base) == []
    assert not listening(bouncer.spec.port)
    assert not bouncer.base.exists()
    assert primary.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (AUTH_ROLE,)) == 0
    assert primary.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (AUTH_SCHEMA,)) == 0
    assert flat(bouncer.kind.observe(bouncer.resource_id, bouncer.spec)) is None


# --- Redis ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisServer:
    kind: RedisKind
    spec: RedisSpec
    resource_id: str
    outputs: dict[str, Any]

    @property
    def base(self) -> Path:
        return Path(self.spec.state_dir)

    def client(self, password: str | None = REDIS_PASSWORD) -> redis.Redis:
        return redis.Redis(
            host=LOOPBACK, port=self.spec.port, password=password, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )

    def config(self, name: str) -> str:
        with self.client() as connection:
            return str(connection.config_get(name)[name])

    def pid(self) -> int | None:
        return process.read_pid(self.base / "redis.pid")


@contextmanager
def running_redis(**changes: Any) -> Iterator[RedisServer]:
    with reachable_state_dir() as base:
        spec = RedisSpec(state_dir=str(base / "redis"), port=free_port(), password=REDIS_PASSWORD, maxmemory="64mb")
        spec = spec.model_copy(update=changes)
        kind = RedisKind()
        resource_id, outputs = kind.create(spec)
        try:
            yield RedisServer(kind, spec, resource_id, reported(outputs))
        finally:
            kind.delete(resource_id, spec.model_copy(update={"allow_data_loss": True}))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as made:
        yield made


def test_redis_refuses_clients_without_the_password(redis_server: RedisServer) -> None:
    with redis_server.client(password=None) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with redis_server.client(password="wrong") as guesser, pytest.raises(redis.AuthenticationError):
        guesser.ping()
    with redis_server.client() as connection:
        assert connection.set("it:key", "value")
        assert connection.get("it:key") == b"value"


def test_redis_observe_and_update(redis_server: RedisServer) -> None:
    expected = {
        "running": True,
        "port": redis_server.spec.port,
        "maxmemory": "64mb",
        "maxmemoryPolicy": "allkeys-lru",
        "persistence": False,
        "passwordRequired": True,
    }
    assert redis_server.outputs == expected
    assert flat(redis_server.kind.observe(redis_server.resource_id, redis_server.spec)) == expected

    new_password = "it-Rotated-0123"
    changed = redis_server.spec.model_copy(
        update={"maxmemory": "32mb", "maxmemory_policy": "volatile-lru", "password": new_password}
    )
    outputs = reported(
        redis_server.kind.update(redis_server.resource_id, recorded(redis_server.spec, expected), changed)
    )
    assert outputs == {**expected, "maxmemory": "32mb", "maxmemoryPolicy": "volatile-lru"}
    with redis_server.client(new_password) as connection:
        live = connection.config_get("maxmemory", "maxmemory-policy")
    assert live == {"maxmemory": str(memory_bytes("32mb")), "maxmemory-policy": "volatile-lru"}
    with redis_server.client() as old, pytest.raises(redis.AuthenticationError):
        old.ping()


def test_redis_config_set_by_hand_is_drift_that_update_restores(redis_server: RedisServer) -> None:
    with redis_server.client() as connection:
        connection.config_set("maxmemory", "1mb")
    observed = flat(redis_server.kind.observe(redis_server.resource_id, redis_server.spec))
    assert observed is not None
    assert observed["maxmemory"] == str(memory_bytes("1mb"))

    restored = reported(
        redis_server.kind.update(
            redis_server.resource_id, recorded(redis_server.spec, redis_server.outputs, observed), redis_server.spec
        )
    )
    assert restored["maxmemory"] == "64mb"
    assert redis_server.config("maxmemory") == str(memory_bytes("64mb"))


def test_redis_password_removed_by_hand_is_drift_that_update_sets_again(redis_server: RedisServer) -> None:
    with redis_server.client() as connection:
        connection.config_set("requirepass", "")
    observed = flat(redis_server.kind.observe(redis_server.resource_id, redis_server.spec))
    assert observed == {**redis_server.outputs, "passwordRequired": False}  # read without the password
    assert redis_server.kind.drifted(redis_server.kind.status_of(observed), redis_server.spec) == ["passwordRequired"]

    restored = reported(
        redis_server.kind.update(
            redis_server.resource_id, recorded(redis_server.spec, redis_server.outputs, observed), redis_server.spec
        )
    )
    assert restored == redis_server.outputs
    with redis_server.client(password=None) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()


def test_redis_delete_leaves_no_listener(redis_server: RedisServer) -> None:
    pid = redis_server.pid()
    assert pid is not None
    redis_server.kind.delete(redis_server.resource_id, redis_server.spec)
    assert not listening(redis_server.spec.port)
    assert not process.pid_alive(pid)
    assert not redis_server.base.exists()
    assert flat(redis_server.kind.observe(redis_server.resource_id, redis_server.spec)) is None


def test_redis_with_persistence_is_kept_unless_data_loss_is_allowed() -> None:
    with running_redis(persistence=True) as persisted:
        assert persisted.outputs["persistence"] is True
        with pytest.raises(ProviderError, match="allowDataLoss"):
            persisted.kind.delete(persisted.resource_id, persisted.spec)
        assert listening(persisted.spec.port)
        assert persisted.base.exists()
