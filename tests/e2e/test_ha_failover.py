"""Automatic failover on a real stack with thorbis:ha on: two Patroni nodes in synchronous mode, three etcd
members, HAProxy and PgBouncer in front, the whole schema inside.

One stack serves every test of the module, in order: each fault leaves the cluster healthy for the next.
The application writes through PgBouncer the whole time; each fault is injected at a deterministic point
(after acknowledged commits, then waiting until the killed processes are gone). After each: writes
resumed through the same DSN, every acknowledged commit is on the leader, never two writable primaries,
and the stack has nothing to change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pulumi.automation as auto
import pytest

from components.platform.local import pgbackrest, process
from components.platform.local.ha import etcd, patroni
from ops.stack import read_access
from ops.verify import verify
from recovery.backup import take_backup
from recovery.stack import OpenStack, opened
from testbed.ha import (
    NODES,
    HaStack,
    PrimaryWatch,
    Writer,
    application,
    committed_ids,
    configure_ha,
    drop_probe,
    kill_and_wait,
    patroni_of,
    postmaster_of,
    prepare_probe,
    reset_probe,
    running,
    whole_node,
)
from testbed.stacks import throwaway_stack
from tests.e2e.rows import key_of, visible_keys
from tests.e2e.test_tenant_isolation import SCHEMA, SYNTHESIZER, TABLES, as_company

pytestmark = [pytest.mark.e2e, pytest.mark.long]
COMMITS_BEFORE_FAULT = 50
COMMITS_AFTER_RESUME = 50


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaStack]:
    with throwaway_stack(tmp_path_factory.mktemp("backend"), "e2e-ha", replicas=NODES - 1) as live:
        ports = configure_ha(live.stack)
        started = time.monotonic()
        assert live.stack.up().summary.result == "succeeded"
        print(f"\nHA stack up in {time.monotonic() - started:.1f} s")
        stack = HaStack(live, ports)
        stack.wait_for_members()
        prepare_probe(stack)
        try:
            yield stack
        finally:
            drop_probe(stack)  # the stack's roles are dropped by destroy only when nothing else names them


def no_changes(ha: HaStack) -> None:
    """Once the leader archives again, a refresh then an update change nothing, whichever node leads; then a
    plain preview is empty."""
    ha.wait_for_archiving()
    live = ha.live
    result = live.stack.up(refresh=True, diff=True)
    changed = {op: count for op, count in (result.summary.resource_changes or {}).items() if op != "same"}
    what = [line.strip() for line in result.stdout.splitlines() if line.lstrip().startswith(("~", "+", "-"))]
    assert changed == {}, f"`up --refresh` after the fault changed {changed}: {what[:40]}"
    live.stack.preview(expect_no_changes=True)


def survive(ha: HaStack, fault: Callable[[Path], list[int]], what: str) -> tuple[str, Writer]:
    """Kill processes of the leader's node while the application writes; return the old leader."""
    reset_probe(ha)
    old_leader = ha.leader()
    writer, watch = Writer(application(ha)), PrimaryWatch(ha)
    with running(writer, watch):
        writer.wait_commits(COMMITS_BEFORE_FAULT)
        kill_and_wait(fault(ha.node_dir(old_leader)))
        fault_at = time.monotonic()
        writer.wait_commits(COMMITS_AFTER_RESUME)  # writes resumed through the same DSN
    leader = ha.leader()
    print(
        f"\n{what}: writes through PgBouncer stopped for {writer.outage_after(fault_at):.2f} s; "
        f"leader {old_leader} -> {leader}; {len(writer.acknowledged)} commits acknowledged; "
        f"{watch.rounds} rounds of the two-primaries watch"
    )
    assert watch.double_primary_rounds == [], f"two writable primaries at once: {watch.double_primary_rounds[:3]}"
    lost = set(writer.acknowledged) - committed_ids(ha, ha.node_ports[leader])
    assert lost == set(), f"{len(lost)} acknowledged commits are not on the leader {leader}"
    return old_leader, writer


def test_a_killed_postmaster_of_the_leader_fails_over_and_the_old_leader_rejoins_as_a_replica(ha: HaStack) -> None:
    old_leader, _ = survive(ha, lambda node: [postmaster_of(node)], "kill -9 of the leader's postmaster")
    assert ha.leader() != old_leader, "synchronous mode promotes the standby at once (primary_start_timeout 0)"
    ha.wait_for_members()
    rejoined = {m["name"]: m["role"] for m in ha.cluster()["members"]}
    assert rejoined[old_leader] in ("replica", "sync_standby"), rejoined
    no_changes(ha)


def read_pool_server(ha: HaStack) -> tuple[bool, int] | None:
    """Where a transaction of the application's read pool (the stack's readDsn: PgBouncer's `<db>_read`)
    lands: in recovery or not, and the node's port; None while it cannot get a server."""
    read_dsn = ha.live.stack.outputs()["readDsn"].value
    try:
        with psycopg.connect(read_dsn, autocommit=True, prepare_threshold=None, connect_timeout=3) as conn:
            row = conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone()
    except psycopg.OperationalError:
        return None
    assert row is not None
    return bool(row[0]), int(row[1])


def wait_for_reads_on_a_replica(ha: HaStack) -> int:
    """The read pool reaches a replica (not the leader) within a few of HAProxy's checks; its port."""
    leader_port = ha.node_ports[ha.leader()]
    landed: list[tuple[bool, int] | None] = []

    def on_a_replica() -> bool:
        landed.append(read_pool_server(ha))
        return landed[-1] is not None and landed[-1][0] and landed[-1][1] != leader_port

    process.wait_until(on_a_replica, 60, f"the read pool to reach a replica (last: {landed[-3:]})")
    seen = landed[-1]
    assert seen is not None
    return seen[1]


def test_the_read_pool_reads_from_the_replica_patroni_names_and_follows_a_failover(ha: HaStack) -> None:
    # The postmaster test promoted the standby and the old leader rejoined: the read pool's server
    # connections to the node that now leads were cut by HAProxy, and its reads go to the new replica.
    ha.wait_for_members()
    before = wait_for_reads_on_a_replica(ha)
    replica = next(name for name, port in ha.node_ports.items() if port == before)
    kill_and_wait([postmaster_of(ha.node_dir(ha.leader()))])
    process.wait_until(
        lambda: (patroni.leader_of(patroni.cluster_status(ha.rest_ports)) or {}).get("name") == replica,
        90,
        f"{replica} to be promoted",
    )
    ha.wait_for_members()
    after = wait_for_reads_on_a_replica(ha)
    assert after != before, "the promoted node left the read pool"
    no_changes(ha)


def test_a_killed_patroni_of_the_leader_fences_its_postgres_and_writes_resume(ha: HaStack) -> None:
    # The supervisor stops the orphaned PostgreSQL at once and starts Patroni again, which finds its lock
    # still alive (ttl) or lost: either way exactly one node takes writes, and no acknowledged commit is lost.
    survive(ha, lambda node: [patroni_of(node)], "kill -9 of the leader's Patroni")
    ha.wait_for_members()
    no_changes(ha)


def test_a_leader_node_lost_whole_fails_over_and_up_brings_it_back_as_a_replica(ha: HaStack) -> None:
    old_leader, _ = survive(ha, whole_node, "kill -9 of the leader's supervisor, Patroni and postmaster")
    new_leader = ha.leader()
    assert new_leader != old_leader
    result = ha.live.stack.up(refresh=True)  # the node's processes are drift: `up` starts them again
    assert result.summary.result == "succeeded"
    ha.wait_for_members()
    roles = {m["name"]: m["role"] for m in ha.cluster()["members"]}
    assert roles[new_leader] == "leader", f"`up` must not move the leadership back: {roles}"
    assert roles[old_leader] in ("replica", "sync_standby"), roles
    no_changes(ha)


def archived_timeline(opened: OpenStack) -> int:
    """`pgbackrest check` (a WAL switch on whichever node is the primary, waited for in the repository),
    then the timeline of the newest WAL segment in the archive."""
    pgbackrest.run(opened.repository, "check", timeout=180)
    archives = (pgbackrest.info(opened.repository) or {}).get("archive") or []
    newest = max(str(a.get("max") or "") for a in archives)
    assert newest, f"no WAL in the repository: {archives}"
    return int(newest[:8], 16)


def timeline_of(ha: HaStack, name: str) -> int:
    member = next(m for m in ha.cluster()["members"] if m["name"] == name)
    return int(member["timeline"])


def test_wal_is_archived_and_backed_up_from_whichever_node_leads(ha: HaStack) -> None:
    opened_stack = opened(ha.live.stack)
    before = ha.leader()
    first = take_backup(opened_stack)  # pgBackRest finds the primary among the stanza's nodes
    assert archived_timeline(opened_stack) == timeline_of(ha, before)
    survive(ha, lambda node: [postmaster_of(node)], "kill -9 of the leader's postmaster (archiving on)")
    after = ha.leader()
    assert after != before
    ha.wait_for_members()
    assert archived_timeline(opened_stack) == timeline_of(ha, after), "the new leader archives its timeline"
    second = take_backup(opened_stack, "incr")
    assert second.label != first.label and second.backups_kept >= 2
    print(f"\nbackups {first.label} (leader {before}) and {second.label} (leader {after}); WAL archived from both")
    no_changes(ha)  # the BackupRepository's archive_ok holds (it is drift when archiving fails)


def etcd_pid(ha: HaStack, index: int) -> int:
    pid = process.read_pid(ha.live.state_dir / f"etcd-{index}" / "etcd.pid")
    assert pid is not None
    return pid


def test_losing_one_etcd_member_of_three_stops_nothing(ha: HaStack) -> None:
    reset_probe(ha)
    leader = ha.leader()
    writer = Writer(application(ha))
    with running(writer):
        writer.wait_commits(COMMITS_BEFORE_FAULT)
        kill_and_wait([etcd_pid(ha, 0)])
        # the leader renews its lock every loop: commits across two ttl show that it kept it
        deadline = time.monotonic() + 2 * 20
        while time.monotonic() < deadline:
            writer.wait_commits(20)
    assert writer.errors == [], writer.errors[:3]
    assert ha.leader() == leader
    assert etcd.healthy(ha.ports.etcd_client(1)) and etcd.healthy(ha.ports.etcd_client(2))


def test_losing_two_etcd_members_stops_writes_without_a_failover_and_they_resume_when_etcd_returns(
    ha: HaStack,
) -> None:
    reset_probe(ha)
    leader = ha.leader()
    writer, watch = Writer(application(ha)), PrimaryWatch(ha)
    with running(writer, watch):
        writer.wait_commits(COMMITS_BEFORE_FAULT)
        kill_and_wait([etcd_pid(ha, 1)])  # member 0 is still down from the test before
        lost_quorum_at = time.monotonic()
        # Without quorum the leader cannot renew its lock: it demotes itself after retryTimeout, and no
        # other node may promote (it cannot take a lock either). Watch for a whole ttl past the demotion.
        process.wait_until(lambda: writer.stalled_for(3), 60, "the leader to stop taking writes")
        watched_from, stalled_at = watch.rounds, time.monotonic()
        time.sleep(20 + 2 * 2)  # ttl + 2 loops (the stack's defaults): any failover would have happened
        assert watch.rounds > watched_from
        assert not writer.committed_after(stalled_at), "writes went on without an etcd quorum"
        assert ha.live.stack.up(refresh=True).summary.result == "succeeded"  # etcd members are started again
        writer.wait_commits(COMMITS_AFTER_RESUME)
    assert watch.double_primary_rounds == []
    new_leader = ha.leader()
    lost = set(writer.acknowledged) - committed_ids(ha, ha.node_ports[new_leader])
    assert lost == set()
    print(
        f"\netcd quorum lost: writes stopped for {writer.outage_after(lost_quorum_at):.1f} s; {leader} -> {new_leader}"
    )
    ha.wait_for_members()
    no_changes(ha)


def test_a_setting_that_takes_a_restart_is_rolled_through_the_nodes_the_leader_last(ha: HaStack) -> None:
    """shared_buffers is read from postgresql.conf; max_connections is one Patroni passes on the command
    line, which pg_settings never shows as pending a restart."""
    reset_probe(ha)
    leader = ha.leader()
    with psycopg.connect(**ha.admin(ha.node_ports[leader]), autocommit=True) as conn:
        connections = int(conn.execute("SHOW max_connections").fetchone()[0]) + 10  # type: ignore[index]
    writer = Writer(application(ha))
    with running(writer):
        writer.wait_commits(COMMITS_BEFORE_FAULT)
        ha.live.stack.set_config("thorbis:postgres.sharedBuffers", auto.ConfigValue("160MB"), path=True)
        ha.live.stack.set_config("thorbis:postgres.maxConnections", auto.ConfigValue(str(connections)), path=True)
        result = ha.live.stack.up()
        writer.wait_commits(COMMITS_AFTER_RESUME)
    updated = {op: n for op, n in (result.summary.resource_changes or {}).items() if op != "same"}
    assert updated == {"update": 1}, f"only Patroni's dynamic configuration changes: {updated}"
    resources = (ha.live.stack.export_stack().deployment or {}).get("resources", [])
    cluster = next(r for r in resources if r["type"] == "thorbisdb:local:PatroniCluster")
    assert cluster["outputs"]["restarted"][-1] == leader, f"the leader restarts last: {cluster['outputs']['restarted']}"
    assert len(cluster["outputs"]["restarted"]) == NODES
    assert ha.leader() == leader, "a rolling restart keeps the leader"
    for name, port in ha.node_ports.items():
        with psycopg.connect(**ha.admin(port), autocommit=True) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone() == ("160MB",), name
            assert conn.execute("SHOW max_connections").fetchone() == (str(connections),), name
    print(
        f"\nrolling restart ({' then '.join(cluster['outputs']['restarted'])}): writes stopped for "
        f"{writer.outage_after(0):.2f} s at most"
    )
    ha.live.stack.preview(expect_no_changes=True)


def test_a_node_is_added_and_removed_by_a_plain_up(ha: HaStack) -> None:
    leader = ha.leader()
    ha.live.stack.set_config("thorbis:replicas.count", auto.ConfigValue(str(NODES)), path=True)
    added = ha.live.stack.up()
    assert (added.summary.resource_changes or {}).get(auto.OpType.CREATE) == 1
    ha.nodes = NODES + 1
    ha.wait_for_members()
    roles = {m["name"]: m["role"] for m in ha.cluster()["members"]}
    assert roles[leader] == "leader" and roles[f"node-{NODES}"] in ("replica", "sync_standby"), roles
    ha.live.stack.set_config("thorbis:replicas.count", auto.ConfigValue(str(NODES - 1)), path=True)
    removed = ha.live.stack.up()
    assert (removed.summary.resource_changes or {}).get(auto.OpType.DELETE) == 1
    ha.nodes = NODES
    ha.wait_for_members()
    assert f"node-{NODES}" not in {m["name"] for m in ha.cluster()["members"]}, "its member key is deleted"
    assert not ha.node_dir(f"node-{NODES}").exists()
    no_changes(ha)


def test_verify_reports_the_cluster(ha: HaStack) -> None:
    results = {r.check: r for r in verify(read_access(ha.live.stack))}
    for check in ("HA leader and members", "HA synchronous standby", "etcd health", "replicas streaming"):
        assert results[check].result == "PASS", results[check]
    assert f"leader {ha.leader()}" in results["HA leader and members"].detail
    assert "3/3 etcd members healthy" in results["etcd health"].detail


def test_tenant_isolation_holds_through_pgbouncer_on_the_leader_after_the_faults(ha: HaStack) -> None:
    """Every table, through the application's path: each company sees its own row and not the other's."""
    with psycopg.connect(**ha.admin(ha.live.postgres_port), autocommit=True) as admin, admin.transaction():
        a, b = SYNTHESIZER.world(admin), SYNTHESIZER.world(admin)
    tenant = SYNTHESIZER.tenant_table.name
    wrong = []
    with psycopg.connect(**application(ha), autocommit=True, prepare_threshold=None) as app:
        for name in TABLES:
            table = SCHEMA.table(name)
            for ours in (a, b):
                with as_company(app, str(ours[tenant]["id"])):
                    visible = visible_keys(app, table)
                if visible != {key_of(table, ours[name])}:
                    wrong.append(name)
    assert wrong == [], f"tables where a company does not see exactly its own row: {sorted(set(wrong))}"
