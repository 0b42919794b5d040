"""`pulumi up` killed at the moments that hurt, then brought back by the one documented command.

One stack on a copy of the program with few tables (the servers, roles, schemas and extensions, then
`companies` and `audit_logs`), one replica, backups on with a short archive_timeout. Each test kills the
whole process tree of a command (the CLI, the language host, the provider, and the tools they run) at a
point reached by the work itself: a child process that appears (initdb, pg_basebackup, `pg_ctl restart`,
`pgbackrest restore`), the conversion's capture trigger in the catalog, or the k-th resource the engine
reports done. Then `scripts/recover` runs, and the stack must match its code (a preview shows no change),
its servers run and stream, the rows written before are identical, and no process or file of the
interrupted run is left. The tests run in file order; each builds on the state the one before left.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
import pytest
from psycopg import sql

from testbed.stacks import LiveStack, throwaway_stack
from testbed.support import (
    copy_project_without_tables,
    kill_tree,
    live_processes_under,
    parent_of,
    schema_subset,
    signal_all,
    stop_tree,
    stop_when_seen,
    write_schema,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
TABLES = ["companies", "audit_logs"]
CONVERTED = "audit_logs"
SCRATCH = sql.Identifier("e2e_interrupted", "rows")
#: What a killed run must not leave: builds that never finished, the superuser password of the code
#: before built-aside directories, copies of secret files half written.
STRAY_FILES = ("**/*.building-*", "**/.initdb-password", "**/.*.tmp")


@dataclass
class Interrupted:
    live: LiveStack
    project: Path
    logs: Path
    watched: list[sql.Identifier] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def stack(self) -> auto.Stack:
        return self.live.stack

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PULUMI_BACKEND_URL": f"file://{self.live.backend}"}

    def connect(self, port: int | None = None) -> psycopg.Connection[Any]:
        conninfo: dict[str, Any] = self.live.admin(port)
        return psycopg.connect(**conninfo, autocommit=True)

    def start(self, argv: list[str], name: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            started = subprocess.Popen(
                argv,
                cwd=self.project,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return started, log

    def up_command(self, *extra: str) -> list[str]:
        return ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", self.stack.name, *extra]

    def recover_command(self) -> list[str]:
        return [str(ROOT / "scripts" / "recover"), self.stack.name, "--work-dir", str(self.project)]

    def kill_when(self, argv: list[str], name: str, seen: Callable[[str], bool]) -> list[str]:
        """Run `argv`, and kill its whole tree when a process matching `seen` appears."""
        running, log = self.start(argv, name)
        try:
            stopped = stop_when_seen(seen, running)
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{log.read_text()[-4000:]}") from None
        killed = kill_tree(running.pid)
        with suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGKILL)  # in the tree, unless it had left it (a daemon): killed either way
        running.wait(timeout=30)
        return killed

    def recover(self, name: str = "recover") -> str:
        running, log = self.start(self.recover_command(), name)
        assert running.wait(timeout=900) == 0, log.read_text()[-6000:]
        output = log.read_text()
        assert "a preview shows no change" in output
        return output

    def checksums(self, *relations: sql.Identifier) -> dict[str, str]:
        """Row count and md5 of every row of each relation, on the primary."""
        sums = {}
        with self.connect() as conn:
            for relation in relations:
                row = conn.execute(
                    sql.SQL(
                        "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '' ORDER BY t::text)), '') "
                        "FROM {} t"
                    ).format(relation)
                ).fetchone()
                sums[relation.as_string(conn)] = str(row[0]) if row else ""
        return sums

    def remember(self, *relations: sql.Identifier) -> None:
        """These relations' rows must come through every later kill unchanged."""
        self.watched += [relation for relation in relations if relation not in self.watched]
        self.fingerprints = self.checksums(*self.watched)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Interrupted]:
    base = tmp_path_factory.mktemp("interrupted")
    project = copy_project_without_tables(base / "project")
    (base / "backend").mkdir()
    (base / "logs").mkdir()
    with throwaway_stack(base / "backend", "e2e-kill", replicas=1, work_dir=project) as live:
        live.stack.set_config("thorbis:backup.archiveTimeout", auto.ConfigValue("2s"), path=True)
        yield Interrupted(live, project, base / "logs")


def server_pids(state_dir: Path) -> set[int]:
    """The servers the stack runs: postmasters, PgBouncer, the read router and Redis, by their pidfiles."""
    pidfiles = [*state_dir.glob("postgres-*/data/postmaster.pid")]
    pidfiles += [state_dir / name for name in ("pgbouncer/pgbouncer.pid", "router/router.pid", "redis/redis.pid")]
    pids = set()
    for pidfile in pidfiles:
        try:
            pids.add(int(pidfile.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def descends_from(pid: int, ancestors: set[int]) -> bool:
    while pid and pid not in ancestors:
        parent = parent_of(pid)
        if parent is None or parent == pid:
            return False
        pid = parent
    return pid in ancestors


def assert_converged(state: Interrupted) -> None:
    """The servers run and the replicas stream, the rows are those written before, and nothing of the
    interrupted run is left: no file, and no process but the servers'. (That a preview shows no change,
    recover has checked with `pulumi preview --expect-no-changes`: `recover` asserts it exited 0.)"""
    with state.connect() as conn:
        streaming = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
    replicas = json.loads(state.stack.get_config("thorbis:replicas").value)["count"]
    assert streaming == (int(replicas),)
    assert state.checksums(*state.watched) == state.fingerprints
    state_dir = state.live.state_dir
    assert [str(path) for pattern in STRAY_FILES for path in state_dir.glob(pattern)] == []
    servers = server_pids(state_dir)
    strays = [cmd for pid, cmd in live_processes_under(state_dir) if not descends_from(pid, servers)]
    assert strays == []


def write_rows(state: Interrupted, count: int) -> None:
    with state.connect() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS e2e_interrupted")
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, note text)").format(SCRATCH))
        first = conn.execute(sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(SCRATCH)).fetchone()
        start = int(first[0]) if first else 1
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(%s::bigint, %s::bigint) g").format(
                SCRATCH
            ),
            (start, start + count - 1),
        )
    state.remember(SCRATCH)


def in_dir(directory: Path, *words: str) -> Callable[[str], bool]:
    """A command line that names `directory` and every word."""
    return lambda line: str(directory) in line and all(word in line for word in words)


def test_an_up_killed_during_initdb_is_recovered(interrupted: Interrupted) -> None:
    primary = interrupted.live.state_dir / "postgres-primary"
    killed = interrupted.kill_when(interrupted.up_command(), "up-initdb", in_dir(primary, "initdb", "--pgdata"))
    assert any("initdb" in line for line in killed), killed
    assert not (primary / "data").exists() and list(primary.glob("data.building-*")), "killed during initdb"
    output = interrupted.recover("recover-initdb")
    assert "removed the lock left by an interrupted update" in output
    assert "the remains of a build that was interrupted" in output
    write_rows(interrupted, 1000)
    assert_converged(interrupted)


def test_an_up_killed_during_a_replicas_base_backup_is_recovered(interrupted: Interrupted) -> None:
    interrupted.stack.set_config("thorbis:replicas.count", auto.ConfigValue("2"), path=True)
    replica = interrupted.live.state_dir / "postgres-replica-1"
    interrupted.kill_when(interrupted.up_command(), "up-basebackup", in_dir(replica, "pg_basebackup"))
    assert not (replica / "data").exists()
    interrupted.recover("recover-basebackup")
    assert_converged(interrupted)


def test_an_up_killed_during_a_primary_restart_is_recovered(interrupted: Interrupted) -> None:
    interrupted.stack.set_config("thorbis:postgres.sharedBuffers", auto.ConfigValue("144MB"), path=True)
    primary = interrupted.live.state_dir / "postgres-primary" / "data"
    interrupted.kill_when(interrupted.up_command(), "up-restart", in_dir(primary, "pg_ctl", "restart"))
    interrupted.recover("recover-restart")
    assert_converged(interrupted)
    with interrupted.connect() as conn:
        assert conn.execute("SHOW shared_buffers").fetchone() == ("144MB",)


def test_recover_refuses_while_an_up_runs_and_changes_nothing_when_nothing_was_interrupted(
    interrupted: Interrupted,
) -> None:
    running, log = interrupted.start(interrupted.up_command(), "up-running")
    locks = interrupted.live.backend / ".pulumi" / "locks"
    deadline = time.monotonic() + 120
    while not list(locks.rglob(f"{interrupted.stack.name}/*.json")):
        assert running.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.01)
    frozen = stop_tree(running.pid)  # the update is alive, only slow: recovery must leave it alone
    try:
        refused = subprocess.run(
            interrupted.recover_command(), env=interrupted.env, capture_output=True, text=True, check=False
        )
    finally:
        signal_all(frozen, signal.SIGCONT)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "locked by an update that is still running" in refused.stderr
    assert running.wait(timeout=600) == 0, log.read_text()[-3000:]
    output = interrupted.recover("recover-nothing")
    assert "removed the lock" not in output and "pending from" not in output
    up = output.split("recover: up:")[1]
    assert re.search(r"Resources:\s+\d+ unchanged\s+Duration", up), up[-3000:]


def test_an_up_killed_at_a_random_point_while_creating_tables_is_recovered(interrupted: Interrupted) -> None:
    write_schema(interrupted.project, schema_subset(TABLES, plain=(CONVERTED,)))
    seed = random.randrange(1_000_000)
    done_before_kill = random.Random(seed).randrange(1, 12)  # of the 20-odd objects two tables bring
    print(f"\nkilled after {done_before_kill} resources done (seed {seed})")
    events = interrupted.logs / "events-random.jsonl"
    argv = interrupted.up_command("--event-log", str(events))
    running, log = interrupted.start(argv, "up-random", PULUMI_DEBUG_COMMANDS="true")  # for --event-log
    deadline = time.monotonic() + 300
    while resources_done(events) < done_before_kill:
        assert running.poll() is None, f"up ended before {done_before_kill} resources were done:\n{log.read_text()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    kill_tree(running.pid)
    running.wait(timeout=30)
    interrupted.recover("recover-random")
    assert_converged(interrupted)
    resources = (interrupted.stack.export_stack().deployment or {}).get("resources", [])
    adopted = [r["urn"] for r in resources if r["type"] == "thorbisdb:db:Table" and r["outputs"].get("adopted")]
    assert adopted == [], "a table the killed up made is the stack's own, not adopted (destroy would keep it)"


def resources_done(events: Path) -> int:
    """How many resources the engine reports created so far (its event log, one JSON event a line)."""
    try:
        lines = events.read_text().splitlines()
    except OSError:
        return 0
    done = 0
    for line in lines:
        try:
            outputs = json.loads(line).get("resOutputsEvent") or {}
        except json.JSONDecodeError:
            continue  # the line being written
        done += outputs.get("metadata", {}).get("op") == "create"
    return done


def test_an_up_killed_during_a_table_conversion_is_recovered(interrupted: Interrupted) -> None:
    with interrupted.connect() as conn:
        company = conn.execute(
            "INSERT INTO public.companies (name, slug) VALUES ('Killed Co', 'killed-co') RETURNING id"
        ).fetchone()
        assert company is not None
        conn.execute(
            "INSERT INTO public.audit_logs (company_id, action, entity_type, created_at) "
            "SELECT %s, 'update', 'job', now() - g * interval '1 minute' FROM generate_series(1, 200000) g",
            (company[0],),
        )
    interrupted.remember(sql.Identifier("public", CONVERTED))
    write_schema(interrupted.project, schema_subset(TABLES))
    running, log = interrupted.start(interrupted.up_command(), "up-conversion")
    with interrupted.connect() as conn:
        deadline = time.monotonic() + 300
        while not conn.execute(
            "SELECT 1 FROM pg_trigger WHERE tgname = %s", (f"{CONVERTED}_conversion_capture",)
        ).fetchone():
            assert running.poll() is None, f"up ended before the conversion began:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    kill_tree(running.pid)
    running.wait(timeout=30)
    with interrupted.connect() as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'public.audit_logs'::regclass").fetchone()
    assert kind == ("r",), "the kill came after the swap"
    interrupted.recover("recover-conversion")
    with interrupted.connect() as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'public.audit_logs'::regclass").fetchone()
    assert kind == ("p",)
    assert_converged(interrupted)


def test_a_recovery_killed_during_a_restore_is_recovered(interrupted: Interrupted) -> None:
    backup = subprocess.run(
        [str(ROOT / "scripts" / "backup"), interrupted.stack.name, "--work-dir", str(interrupted.project)],
        env=interrupted.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert backup.returncode == 0, backup.stdout + backup.stderr
    write_rows(interrupted, 500)
    wait_archived(interrupted)
    crash_servers(interrupted.live.state_dir)
    primary = interrupted.live.state_dir / "postgres-primary"
    interrupted.kill_when(interrupted.recover_command(), "recover-killed", in_dir(primary, "pgbackrest", "restore"))
    assert not (primary / "data").exists()
    output = interrupted.recover("recover-restore")
    assert "replayed the archived WAL to" in output and "every archived segment was replayed" in output
    assert_converged(interrupted)
    interrupted.stack.preview(expect_no_changes=True)


def wait_archived(state: Interrupted, timeout: float = 60) -> None:
    """Until the WAL of what was committed is in the repository: within archive_timeout, no switch by hand."""
    with state.connect() as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        assert row is not None
        deadline = time.monotonic() + timeout
        while True:
            archived = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if archived and archived[0] and archived[0] >= row[0]:
                return
            assert time.monotonic() < deadline, f"{row[0]} not archived within {timeout} s"
            time.sleep(0.1)


def crash_servers(state_dir: Path) -> None:
    """The host is lost: every PostgreSQL of the stack killed at once, its data directory gone."""
    for pidfile in state_dir.glob("postgres-*/data/postmaster.pid"):
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
    for data in state_dir.glob("postgres-*/data"):
        deadline = time.monotonic() + 30
        while [pid for pid, _ in live_processes_under(data)]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        subprocess.run(["rm", "-rf", str(data)], check=True)
