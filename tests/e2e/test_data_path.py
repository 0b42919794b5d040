"""The application's data path on a real stack: from `pulumi stack output` to routed, cached transactions.

Its own stack (two replicas, the whole database layer, Redis): the only other stack with replicas
(test_local_stack.py) kills and destroys its servers step by step. Everything goes through
thorbis_client and the stack's outputs, as an application would; the tests run in file order and the
last ones stop servers (a replica, Redis) and let `pulumi up` bring them back.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
import pytest
from psycopg.conninfo import conninfo_to_dict

from components.database.declared.model import load_schema
from components.outputs import connection_of
from components.platform.local import process
from components.platform.local.platform import router_dir, server_dir
from components.platform.local.postgres_files import ServerDir
from config.settings import CacheSettings
from testbed.stacks import LiveStack
from tests.e2e.rows import Synthesizer
from thorbis_client import ThorbisClient, Transaction
from thorbis_client.database import canonical_uuid

pytestmark = pytest.mark.e2e
SYNTHESIZER = Synthesizer(load_schema())
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Company:
    id: str
    user_id: str
    customer_id: str


@pytest.fixture(scope="module")
def outputs(live_stack: LiveStack) -> dict[str, auto.OutputValue]:
    result = live_stack.stack.up()
    assert result.summary.result == "succeeded"
    return dict(result.outputs)


@pytest.fixture(scope="module")
def plain_outputs(outputs: dict[str, auto.OutputValue]) -> dict[str, Any]:
    return {name: output.value for name, output in outputs.items()}


@pytest.fixture(scope="module")
def companies(live_stack: LiveStack, outputs: dict[str, auto.OutputValue]) -> tuple[Company, Company]:
    """Two companies with one row in every table (made as postgres, past RLS)."""
    with admin_on(live_stack, live_stack.postgres_port) as admin, admin.transaction():
        worlds = [SYNTHESIZER.world(admin), SYNTHESIZER.world(admin)]
    tenant = SYNTHESIZER.tenant_table.name
    return tuple(  # type: ignore[return-value]
        Company(str(world[tenant]["id"]), str(world["users"]["id"]), str(world["customers"]["id"])) for world in worlds
    )


@pytest.fixture
def client(plain_outputs: dict[str, Any]) -> Iterator[ThorbisClient]:
    with ThorbisClient.from_outputs(plain_outputs, pool_max_size=8) as made:
        yield made


def replica_dir(live_stack: LiveStack, index: int) -> ServerDir:
    return ServerDir(server_dir(live_stack.state_dir, index))


def admin_on(live_stack: LiveStack, port: int) -> Conn:
    return psycopg.connect(**live_stack.admin(port), autocommit=True)  # type: ignore[arg-type]


@contextmanager
def replay_paused(live_stack: LiveStack) -> Iterator[None]:
    """Both replicas stop replaying WAL (they stay up, streaming, in the read pool): a lag as long as
    the test needs, deterministic."""
    for port in live_stack.replica_ports:
        with admin_on(live_stack, port) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        for port in live_stack.replica_ports:
            with admin_on(live_stack, port) as conn:
                conn.execute("SELECT pg_wal_replay_resume()")


def server_of(transaction: Transaction) -> tuple[bool, int]:
    row = transaction.execute("SELECT pg_is_in_recovery(), current_setting('port')::int").fetchone()
    assert row is not None
    return bool(row[0]), int(row[1])


def display_name(transaction: Transaction, customer_id: str) -> str | None:
    row = transaction.execute("SELECT display_name FROM customers WHERE id = %s", (customer_id,)).fetchone()
    return None if row is None else str(row[0])


def rename(client: ThorbisClient, company: Company, name: str, *, invalidate: bool) -> None:
    with client.transaction(company.id, company.user_id) as tx:
        tx.execute("UPDATE customers SET display_name = %s WHERE id = %s", (name, company.customer_id))
        if invalidate:
            tx.invalidate("customers", company.customer_id)


# --- outputs ------------------------------------------------------------------------------------------


def test_up_publishes_the_data_path_as_outputs(
    live_stack: LiveStack, outputs: dict[str, auto.OutputValue], plain_outputs: dict[str, Any]
) -> None:
    assert all(outputs[name].secret for name in ("writeDsn", "readDsn", "redisUrl"))
    assert not outputs["cachePolicy"].secret
    assert plain_outputs["cachePolicy"] == CacheSettings().policy()  # the review's tiers by default
    write, read = (conninfo_to_dict(plain_outputs[name]) for name in ("writeDsn", "readDsn"))
    assert {write["user"], read["user"]} == {"authenticator"}
    assert {int(str(write["port"])), int(str(read["port"]))} == {live_stack.pgbouncer_port}
    assert (write["dbname"], read["dbname"]) == ("thorbis", "thorbis_read")
    connection = connection_of(outputs)
    assert connection is not None and connection.read_database == read["dbname"]  # one fact, two outputs
    password = live_stack.passwords["authenticatorPassword"]
    assert password not in live_stack.backend_text(), "an application password in plain text in the state"
    preview = live_stack.stack.preview()
    assert set(preview.change_summary) == {auto.OpType.SAME}, preview.change_summary


# --- routing -----------------------------------------------------------------------------------------


def test_reads_land_on_the_replicas_and_writes_on_the_primary(
    live_stack: LiveStack, client: ThorbisClient, companies: tuple[Company, Company]
) -> None:
    a = companies[0]
    with client.transaction(a.id, a.user_id) as tx:
        assert server_of(tx) == (False, live_stack.postgres_port)
    # The router sends reads to the primary while no replica answers its health check in time (as on a
    # machine busy with other stacks): wait until it routes them to both, as it does once they answer.
    wait_for_routes(live_stack, ["replica-0", "replica-1"], timeout=120)
    barrier = threading.Barrier(8, timeout=30)

    def read(_: int) -> tuple[bool, int]:
        def work(tx: Transaction) -> tuple[bool, int]:
            barrier.wait()  # 8 transactions open at once: the pool needs more than one server connection
            return server_of(tx)

        return client.run(a.id, a.user_id, work, read_only=True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        seen = set(pool.map(read, range(8)))
    assert seen == {(True, port) for port in live_stack.replica_ports}, "reads did not spread over both replicas"


def test_a_read_after_a_write_sees_it_while_the_replicas_lag(
    client: ThorbisClient, live_stack: LiveStack, companies: tuple[Company, Company]
) -> None:
    a = companies[0]
    with replay_paused(live_stack):
        rename(client, a, "read your own write", invalidate=False)
        seen = client.run(a.id, a.user_id, lambda tx: (display_name(tx, a.customer_id), tx.on_replica), read_only=True)
        other_user = canonical_uuid("00000000-0000-4000-8000-000000000001")
        stale = client.run(
            a.id, other_user, lambda tx: (display_name(tx, a.customer_id), tx.on_replica), read_only=True
        )
    assert seen == ("read your own write", False), "the writer's read went to a replica that had not replayed it"
    assert client.stats.snapshot()["read_your_writes_fallbacks"] == 1
    # another caller has no write to wait for: it reads the lagging replica (and so the old name)
    assert stale[1] is True and stale[0] != "read your own write"


# --- the cache ---------------------------------------------------------------------------------------


def test_a_write_invalidates_its_cached_entry_even_while_the_replicas_lag(
    client: ThorbisClient, live_stack: LiveStack, companies: tuple[Company, Company]
) -> None:
    a = companies[0]
    reader = canonical_uuid("00000000-0000-4000-8000-000000000002")  # not the writer: no read-your-writes

    def cached_name() -> Any:
        return client.cached(a.id, reader, "customers", a.customer_id, lambda tx: display_name(tx, a.customer_id))

    rename(client, a, "before", invalidate=True)
    time.sleep(0.5)  # replicas replay "before"
    assert cached_name() == "before"
    assert cached_name() == "before" and client.stats.snapshot()["cache_hits"] >= 1
    with replay_paused(live_stack):
        rename(client, a, "after", invalidate=True)
        assert cached_name() == "after", "the cache served the entry the write had made stale"
        assert cached_name() == "after"


def test_one_companys_cache_entries_never_serve_another(
    client: ThorbisClient, plain_outputs: dict[str, Any], companies: tuple[Company, Company]
) -> None:
    """For every family of the policy, company A caches an entry under keys chosen to collide (B's
    own id, A's id, key text that imitates another key's layout); B asks for the same keys and must get
    what its own claims load, and never A's entry."""
    a, b = companies
    families = sorted(plain_outputs["cachePolicy"]["familyTtlSeconds"])
    keys = [a.id, b.id, f"x|{a.id}", f"{a.id}:customers|1", "*", "", "1"]

    def whose(tx: Transaction) -> Any:
        row = tx.execute("SELECT app.current_company_id()::text, (SELECT count(*) FROM customers)").fetchone()
        assert row is not None
        return [row[0], row[1]]

    leaks = []
    for family in families:
        for key in keys:
            assert client.cached(a.id, a.user_id, family, key, whose)[0] == a.id
            got = client.cached(b.id, b.user_id, family, key, whose)
            if got[0] != b.id:
                leaks.append((family, key, got))
            assert client.cache.key(b.id, family, key) != client.cache.key(a.id, family, key)
    assert leaks == [], "company B was served company A's cache entries"
    for forged in (f"{b.id}:{a.id}", f"{b.id}|x", "", "not-a-company"):
        with pytest.raises(ValueError):
            client.cached(forged, b.user_id, "customers", "1", whose)
    with pytest.raises(ValueError):
        client.cached(b.id, b.user_id, "undeclared_family", "1", whose)


def test_a_cold_key_is_loaded_once_by_many_concurrent_readers(
    client: ThorbisClient, companies: tuple[Company, Company]
) -> None:
    a = companies[0]
    loads = 0
    lock = threading.Lock()
    start = threading.Barrier(16, timeout=30)
    key = f"cold-{uuid.uuid4()}"

    def slow_load(tx: Transaction) -> Any:
        nonlocal loads
        with lock:
            loads += 1
        tx.execute("SELECT pg_sleep(0.3)")
        return display_name(tx, a.customer_id)

    def reader(_: int) -> Any:
        start.wait()
        return client.cached(a.id, a.user_id, "companies", key, slow_load)

    with ThreadPoolExecutor(max_workers=16) as pool:
        values = list(pool.map(reader, range(16)))
    assert len(set(values)) == 1
    assert loads == 1, f"{loads} readers loaded the same cold key"


# --- failures ------------------------------------------------------------------------------------------


@contextmanager
def reading_all_along(work: Callable[[], Any]) -> Iterator[list[Any]]:
    """Two threads call `work` until the block ends; what each call returned, or raised."""
    results: list[Any] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                results.append(work())
            except Exception as error:  # an error is a result here: the test counts them
                results.append(error)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)


def stop_replica(live_stack: LiveStack, index: int) -> None:
    server = replica_dir(live_stack, index)
    process.run(process.as_service_user([process.pg_tool("pg_ctl"), "-D", str(server.data), "stop", "-m", "fast"]), "")


#: Reads counted after a route change: enough to show where they land, however slow the machine is.
READS_AFTER = 10


def reads_after(results: list[Any], marker: int) -> list[Any]:
    """The next READS_AFTER results of the reading threads after `marker` (waiting for them)."""
    process.wait_until(lambda: len(results) >= marker + READS_AFTER, 30, f"{READS_AFTER} reads")
    return results[marker : marker + READS_AFTER]


def wait_for_routes(live_stack: LiveStack, wanted: list[str], timeout: float = 20) -> None:
    routes = router_dir(live_stack.state_dir) / "routes.json"
    process.wait_until(lambda: json.loads(routes.read_text())["readTargets"] == wanted, timeout, f"reads on {wanted}")


def test_stopped_replicas_send_reads_elsewhere_with_no_error(
    client: ThorbisClient, live_stack: LiveStack, companies: tuple[Company, Company]
) -> None:
    a = companies[0]
    reader = canonical_uuid("00000000-0000-4000-8000-000000000003")
    one, other = live_stack.replica_ports

    def read() -> tuple[bool, int]:
        return client.run(a.id, reader, server_of, read_only=True)

    with reading_all_along(read) as results:
        both = reads_after(results, 0)
        stop_replica(live_stack, 0)
        wait_for_routes(live_stack, ["replica-1"])
        only_other = reads_after(results, len(results))
        stop_replica(live_stack, 1)
        wait_for_routes(live_stack, ["primary"])
        on_primary = reads_after(results, len(results))
    errors = [result for result in results if isinstance(result, Exception)]
    assert errors == [], f"reads failed while replicas stopped: {errors[:3]}"
    assert only_other and set(only_other) == {(True, other)}
    assert on_primary and set(on_primary) == {(False, live_stack.postgres_port)}
    assert (True, one) in both

    live_stack.stack.refresh()  # the stopped replicas are drift (and the router's readTargets show where reads went)
    repaired = live_stack.stack.up()
    assert (repaired.summary.resource_changes or {}).get(auto.OpType.UPDATE, 0) >= 2, "up did not restart them"
    wait_for_routes(live_stack, ["replica-0", "replica-1"])
    assert read()[0] is True


def test_redis_stopped_mid_run_costs_latency_not_errors(
    client: ThorbisClient, live_stack: LiveStack, companies: tuple[Company, Company]
) -> None:
    a = companies[0]

    def cached_read() -> Any:
        return client.cached(a.id, a.user_id, "settings", "theme", lambda tx: display_name(tx, a.customer_id))

    expected = cached_read()
    with reading_all_along(cached_read) as results:
        time.sleep(0.5)
        pid = process.read_pid(Path(live_stack.state_dir) / "redis" / "redis.pid")
        assert pid is not None
        process.terminate(pid, "Redis")
        marker = len(results)
        time.sleep(1.5)
    assert [r for r in results if isinstance(r, Exception)] == [], "a read failed because Redis stopped"
    assert results[marker:] and set(results[marker:]) == {expected}
    assert client.cache.errors >= 1
    assert client.stats.snapshot()["cache_loads"] >= 2, "with Redis gone, the database should have answered"
    live_stack.stack.refresh()
    assert (live_stack.stack.up().summary.resource_changes or {}).get(auto.OpType.UPDATE, 0) >= 1
    time.sleep(client.config.cache.redis_retry_ms / 1000)  # the breaker lets the cache be tried again
    cached_read()
    assert client.fetch(a.id, a.user_id, "settings", "theme", lambda tx: None).source == "cache"
