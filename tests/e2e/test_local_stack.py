"""A dev-like stack on the local platform, for real: up, replication, pooling, Redis, drift, destroy.

The tests share one stack and run in file order: each step builds on the state the one before left.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pulumi.automation as auto
import pytest
import redis
from psycopg import sql

from components.connection import LOOPBACK, Endpoint
from components.database.declared.model import load_schema
from components.outputs import CONNECTION, connection_of
from testbed.stacks import LiveStack
from testbed.support import listening, processes_under

pytestmark = pytest.mark.e2e
MARKER = "written on the primary"


def wait_for(condition, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_up_creates_every_server(live_stack: LiveStack) -> None:
    result = live_stack.stack.up()
    assert result.summary.result == "succeeded"
    changes = result.summary.resource_changes or {}
    assert list(changes) == [auto.OpType.CREATE]
    live_stack.resources = changes[auto.OpType.CREATE]
    assert all(listening(port) for port in live_stack.all_ports)
    # the connection exported once for tools, the application's DSNs and cache policy (issue 15): secrets secret
    assert set(result.outputs) == {CONNECTION, "writeDsn", "readDsn", "redisUrl", "cachePolicy"}
    assert [name for name, output in result.outputs.items() if not output.secret] == ["cachePolicy"]
    exported = connection_of(result.outputs)
    assert exported is not None
    assert exported.primary == Endpoint.loopback(live_stack.postgres_port)
    assert exported.replicas == tuple(Endpoint.loopback(port) for port in live_stack.replica_ports)
    assert exported.pooler == Endpoint.loopback(live_stack.pgbouncer_port)
    assert exported.redis == Endpoint.loopback(live_stack.redis_port)
    assert exported.admin_password == live_stack.passwords["postgresPassword"]
    assert exported.redis_password == live_stack.passwords["redisPassword"]


def test_a_row_written_on_the_primary_is_read_on_every_replica(live_stack: LiveStack) -> None:
    with psycopg.connect(**live_stack.admin(), autocommit=True) as primary:  # type: ignore[arg-type]
        # a schema of the test's own: a table made by hand in `public` would be drift of its grants
        primary.execute("CREATE SCHEMA IF NOT EXISTS e2e_scratch")
        primary.execute("CREATE TABLE IF NOT EXISTS e2e_scratch.e2e_marker (note text)")
        primary.execute("INSERT INTO e2e_scratch.e2e_marker VALUES (%s)", (MARKER,))
        streaming = primary.execute(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1"
        ).fetchall()
    assert [row[0] for row in streaming] == ["replica_0", "replica_1"]
    for port in live_stack.replica_ports:
        with psycopg.connect(**live_stack.admin(port), autocommit=True) as replica:  # type: ignore[arg-type]

            def replicated(conn: psycopg.Connection = replica) -> bool:
                found = conn.execute("SELECT to_regclass('e2e_scratch.e2e_marker') IS NOT NULL").fetchone()
                marked = bool(found and found[0])
                return marked and bool(conn.execute("SELECT 1 FROM e2e_scratch.e2e_marker").fetchone())

            assert wait_for(replicated), f"the row did not reach the replica on port {port}"


def test_300_clients_through_pgbouncer_while_the_server_sees_at_most_the_pool(live_stack: LiveStack) -> None:
    with psycopg.connect(**live_stack.admin(), autocommit=True) as admin:  # type: ignore[arg-type]
        admin.execute("DROP ROLE IF EXISTS e2e_app")
        admin.execute("CREATE ROLE e2e_app LOGIN PASSWORD 'e2e-app-password-1'")
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            with psycopg.connect(**live_stack.admin(), autocommit=True) as watcher:  # type: ignore[arg-type]
                while not stop.is_set():
                    row = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'e2e_app'").fetchone()
                    peak = max(peak, row[0] if row else 0)
                    time.sleep(0.02)

        def client(_: int) -> int:
            with psycopg.connect(
                host=LOOPBACK,
                port=live_stack.pgbouncer_port,
                user="e2e_app",
                password="e2e-app-password-1",
                dbname="thorbis",
                prepare_threshold=None,
                connect_timeout=30,
            ) as conn:
                row = conn.execute("SELECT 1 FROM pg_sleep(0.05)").fetchone()
                return row[0] if row else 0

        watcher = threading.Thread(target=sample)
        watcher.start()
        try:
            with ThreadPoolExecutor(max_workers=300) as pool:
                results = list(pool.map(client, range(300)))
        finally:
            stop.set()
            watcher.join()
    assert results == [1] * 300
    assert 0 < peak <= 10 + 2, f"the server saw {peak} connections of e2e_app; the pool is 10 (+2 reserve)"


def test_redis_refuses_a_client_without_the_password(live_stack: LiveStack) -> None:
    with pytest.raises(redis.AuthenticationError), redis.Redis(port=live_stack.redis_port) as anonymous:
        anonymous.ping()
    with redis.Redis(port=live_stack.redis_port, password=live_stack.passwords["redisPassword"]) as client:
        assert client.ping()


def test_a_second_up_changes_nothing(live_stack: LiveStack) -> None:
    second = live_stack.stack.up(diff=True)
    assert second.summary.resource_changes == {"same": live_stack.resources}, second.stdout[-3000:]
    live_stack.stack.preview(expect_no_changes=True)


def test_database_drift_made_by_hand_is_previewed_and_repaired(live_stack: LiveStack) -> None:
    jobs_index = next(index.name for index in load_schema().table("jobs").foreign_key_indexes())
    with psycopg.connect(**live_stack.admin(), autocommit=True) as admin:  # type: ignore[arg-type]
        admin.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("public", jobs_index)))
        admin.execute("ALTER TABLE public.customers DISABLE ROW LEVEL SECURITY")
        admin.execute("ALTER POLICY invoices_tenant_select ON public.invoices USING (true)")

    live_stack.stack.refresh()
    preview = live_stack.stack.preview(diff=True)
    assert preview.change_summary.get(auto.OpType.CREATE, 0) == 1, preview.stdout  # the dropped index
    assert preview.change_summary.get(auto.OpType.UPDATE, 0) == 2, preview.stdout  # RLS, the policy
    for name in (f"index-{jobs_index}", "row-security-customers", "policy-invoices_tenant_select"):
        assert name in preview.stdout

    live_stack.stack.up()
    with psycopg.connect(**live_stack.admin()) as admin:  # type: ignore[arg-type]
        assert admin.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{jobs_index}",)).fetchone() == (True,)
        rls = admin.execute(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'public.customers'::regclass"
        ).fetchone()
        assert rls == (True,)
        policy = admin.execute(
            "SELECT qual FROM pg_policies WHERE tablename = 'invoices' AND policyname = 'invoices_tenant_select'"
        ).fetchone()
        assert policy is not None and "current_company_id" in policy[0]
    live_stack.stack.preview(expect_no_changes=True)


def test_passwords_are_never_in_plain_text_in_state(live_stack: LiveStack) -> None:
    stored = live_stack.backend_text()
    assert "ciphertext" in stored
    for key, password in live_stack.passwords.items():
        assert password not in stored, f"{key} is in the state in plain text"


def test_a_killed_primary_is_drift_and_up_brings_it_back_with_its_data(live_stack: LiveStack) -> None:
    pidfile = Path(live_stack.state_dir) / "postgres-primary" / "data" / "postmaster.pid"
    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
    assert wait_for(lambda: not listening(live_stack.postgres_port))

    refreshed = live_stack.stack.refresh()
    assert refreshed.summary.result == "succeeded"
    preview = live_stack.stack.preview(diff=True)
    assert preview.change_summary.get(auto.OpType.UPDATE, 0) >= 1, preview.stdout
    assert "running" in preview.stdout

    repaired = live_stack.stack.up()
    assert (repaired.summary.resource_changes or {}).get(auto.OpType.UPDATE, 0) >= 1
    with psycopg.connect(**live_stack.admin()) as primary:  # type: ignore[arg-type]
        assert primary.execute("SELECT note FROM e2e_scratch.e2e_marker").fetchall() == [(MARKER,)]
    live_stack.stack.preview(expect_no_changes=True)


def test_destroy_leaves_no_process_and_no_listening_port(live_stack: LiveStack) -> None:
    assert live_stack.stack.destroy().summary.resource_changes == {"delete": live_stack.resources}
    assert processes_under(live_stack.state_dir) == []
    assert [port for port in live_stack.all_ports if listening(port)] == []
