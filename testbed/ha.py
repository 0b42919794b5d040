"""What the HA tests share: a stack with thorbis:ha on, an application writer through PgBouncer, a watch
for two writable primaries, and the fault points (each kill waits until the process is gone)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
from psycopg import sql

from components.platform.local import process
from components.platform.local.backup import archive_failing
from components.platform.local.ha import patroni
from testbed.stacks import LiveStack, consecutive_free_ports
from testbed.support import free_port

NODES = 2
#: Ports are kept for one node more than the stack starts with, which a test adds and removes.
SPARE_NODES = 1
ETCD_MEMBERS = 3
PROBE_SCHEMA = "ha_probe"
PROBE_TABLE = sql.Identifier(PROBE_SCHEMA, "commits")
#: How long a writer may wait for the cluster to take writes again before the test fails.
RESUME_TIMEOUT_SECONDS = 90


@dataclass
class HaPorts:
    node_base: int
    etcd_base: int
    read: int

    def node(self, index: int) -> tuple[int, int]:
        """PostgreSQL and REST API ports of node `index` (thorbis:ha.basePort + 2i, + 2i + 1)."""
        return self.node_base + 2 * index, self.node_base + 2 * index + 1

    def etcd_client(self, index: int) -> int:
        return self.etcd_base + 2 * index


def configure_ha(stack: auto.Stack, synchronous: bool = True) -> HaPorts:
    ports = HaPorts(
        consecutive_free_ports(2 * (NODES + SPARE_NODES))[0], consecutive_free_ports(2 * ETCD_MEMBERS)[0], free_port()
    )
    values = {
        "thorbis:ha.mode": "patroni",
        "thorbis:ha.synchronous": "true" if synchronous else "false",
        "thorbis:ha.etcdMembers": str(ETCD_MEMBERS),
        "thorbis:ha.basePort": str(ports.node_base),
        "thorbis:ha.etcdBasePort": str(ports.etcd_base),
        "thorbis:ha.readPort": str(ports.read),
        # WAL archived from whichever node leads; a Patroni cluster is not re-provisioned from the repository
        "thorbis:backup.enabled": "true",
        "thorbis:backup.restoreOnProvision": "false",
    }
    stack.set_all_config({key: auto.ConfigValue(value) for key, value in values.items()}, path=True)
    return ports


@dataclass
class HaStack:
    live: LiveStack
    ports: HaPorts
    nodes: int = NODES

    def node_dir(self, name: str) -> Path:
        return self.live.state_dir / f"ha-{name}"

    @property
    def rest_ports(self) -> list[int]:
        return [self.ports.node(i)[1] for i in range(self.nodes)]

    @property
    def node_ports(self) -> dict[str, int]:
        return {f"node-{i}": self.ports.node(i)[0] for i in range(self.nodes)}

    def cluster(self) -> dict[str, Any]:
        found = patroni.cluster_status(self.rest_ports)
        assert found is not None, "no Patroni node answers"
        return found

    def leader(self) -> str:
        leader = patroni.leader_of(self.cluster())
        assert leader is not None, f"no leader: {self.cluster()}"
        return str(leader["name"])

    def wait_for_members(self, timeout: float = 120) -> None:
        """Every node runs (the leader, and each replica streaming), and one of them leads."""

        def settled() -> bool:
            members = (patroni.cluster_status(self.rest_ports) or {}).get("members", [])
            running = [m for m in members if m.get("state") in ("running", "streaming")]
            return len(running) == self.nodes and sum(m.get("role") == "leader" for m in members) == 1

        process.wait_until(settled, timeout, "every HA node to run, one of them leading")

    def admin(self, port: int) -> dict[str, Any]:
        return {**self.live.admin(port), "connect_timeout": 2}

    def wait_for_archiving(self, timeout: float = 120) -> None:
        """The leader's archiver has succeeded since its last failure. A new leader's first attempts may fail
        (the old timeline's segments), which the BackupRepository rightly shows as drift until one succeeds."""

        def caught_up() -> bool:
            try:
                with psycopg.connect(**self.admin(self.node_ports[self.leader()]), autocommit=True) as conn:
                    row = conn.execute("SELECT last_archived_time, last_failed_time FROM pg_stat_archiver").fetchone()
            except (psycopg.Error, AssertionError):
                return False
            return not archive_failing(*(row or (None, None)))

        process.wait_until(caught_up, timeout, "the leader's archiver to succeed after its last failure")


def kill_and_wait(pids: list[int]) -> None:
    """SIGKILL, then wait until each process is gone: the fault happened, whatever runs next."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    process.wait_until(lambda: not any(process.pid_alive(pid) for pid in pids), 30, f"{pids} to die")


def postmaster_of(node_dir: Path) -> int:
    pid = process.read_pid(node_dir / "data" / "postmaster.pid")
    assert pid is not None, f"no PostgreSQL runs in {node_dir}"
    return pid


def patroni_of(node_dir: Path) -> int:
    pid = patroni.patroni_pid(node_dir)
    assert pid is not None, f"no Patroni runs in {node_dir}"
    return pid


def whole_node(node_dir: Path) -> list[int]:
    supervisor = patroni.supervisor_pid(node_dir)
    assert supervisor is not None
    return [supervisor, patroni_of(node_dir), postmaster_of(node_dir)]


@dataclass
class Writer:
    """The application: commits one row per transaction through PgBouncer as `authenticator`, and
    remembers every commit the server acknowledged, and when.

    Writes that stop do not always fail: PgBouncer holds a client's query while it has no server to send
    it to (query_wait_timeout), so an outage is measured as the gap between acknowledged commits.
    """

    conninfo: dict[str, Any]
    acknowledged: list[int] = field(default_factory=list)
    acknowledged_at: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        next_id = 0
        while not self.stop.is_set():
            next_id += 1
            try:
                if conn is None:
                    conn = psycopg.connect(**self.conninfo, autocommit=True, prepare_threshold=None)
                conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(PROBE_TABLE), (next_id,))
                self.acknowledged.append(next_id)
                self.acknowledged_at.append(time.monotonic())
            except psycopg.Error as error:
                self.errors.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def wait_commits(self, count: int, timeout: float = RESUME_TIMEOUT_SECONDS) -> None:
        target = len(self.acknowledged) + count
        process.wait_until(lambda: len(self.acknowledged) >= target, timeout, f"{count} more acknowledged commits")

    def committed_after(self, moment: float) -> bool:
        return bool(self.acknowledged_at) and self.acknowledged_at[-1] > moment

    def stalled_for(self, seconds: float) -> bool:
        """No commit acknowledged in the last `seconds`."""
        return not self.acknowledged_at or time.monotonic() - self.acknowledged_at[-1] > seconds

    def outage_after(self, moment: float) -> float:
        """The longest time without an acknowledged commit, from the last one before `moment` on."""
        times = self.acknowledged_at
        first = next((i for i, at in enumerate(times) if at > moment), len(times))
        window = times[max(first - 1, 0) :]
        return max((later - earlier for earlier, later in itertools.pairwise(window)), default=0.0)


@dataclass
class PrimaryWatch:
    """Asks every node, many times a second, whether it takes writes; remembers any round in which two did."""

    ha: HaStack
    double_primary_rounds: list[list[str]] = field(default_factory=list)
    rounds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def writable(self, port: int) -> bool:
        try:
            with psycopg.connect(**self.ha.admin(port), autocommit=True) as conn:
                row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
                return bool(row and row[0])
        except psycopg.Error:
            return False

    def run(self) -> None:
        while not self.stop.is_set():
            primaries = [name for name, port in self.ha.node_ports.items() if self.writable(port)]
            self.rounds += 1
            if len(primaries) > 1:
                self.double_primary_rounds.append(primaries)
            time.sleep(0.05)


@contextmanager
def running(*workers: Writer | PrimaryWatch) -> Iterator[None]:
    threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.stop.set()
        for thread in threads:
            thread.join(timeout=30)


def committed_ids(ha: HaStack, port: int) -> set[int]:
    with psycopg.connect(**ha.admin(port), autocommit=True) as conn:
        return {row[0] for row in conn.execute(sql.SQL("SELECT id FROM {}").format(PROBE_TABLE))}


def prepare_probe(ha: HaStack) -> None:
    """A table outside the declared schema, which the application's login role may write to."""
    schema, application_role = sql.Identifier(PROBE_SCHEMA), sql.Identifier("authenticator")
    with psycopg.connect(**ha.admin(ha.live.postgres_port), autocommit=True) as conn:
        for statement in (
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (run int NOT NULL DEFAULT 0, id bigint NOT NULL)").format(
                PROBE_TABLE
            ),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, application_role),
            sql.SQL("GRANT INSERT, SELECT ON {} TO {}").format(PROBE_TABLE, application_role),
        ):
            conn.execute(statement)


def drop_probe(ha: HaStack) -> None:
    with psycopg.connect(**ha.admin(ha.live.postgres_port), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(PROBE_SCHEMA)))


def reset_probe(ha: HaStack) -> None:
    with psycopg.connect(**ha.admin(ha.live.postgres_port), autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(PROBE_TABLE))


def application(ha: HaStack) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": ha.live.pgbouncer_port,
        "user": "authenticator",
        "password": ha.live.passwords["authenticatorPassword"],
        "dbname": "thorbis",
        "connect_timeout": 3,
    }
