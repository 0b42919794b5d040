"""HA benchmark: how long writes stop on a failover, and what synchronous mode costs per commit.

A cluster of the HA kinds themselves (three etcd members, two Patroni nodes, HAProxy; no Pulumi, no
schema), on free ports under a throwaway directory. Measured, through the write endpoint:
- commit latency of single-row INSERTs, one at a time, in synchronous mode and then in asynchronous
  mode (switched through Patroni's dynamic configuration, as `pulumi up` does);
- failover: a writer commits without pause while the leader's postmaster, its Patroni, or its whole
  node is killed (-9); the outage is the time from the first failed to the first acknowledged commit
  after it, and the acknowledged commits missing on the new leader are counted (RPO).
Prints a table and writes bench/results/ha.json. A benchmark, not a test: it asserts nothing about time.

    source scripts/pulumi-env.sh && python -m bench.ha [--rounds 3] [--commits 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from components.platform.local import process
from components.platform.local.ha import etcd, patroni
from components.platform.local.ha.cluster import PatroniClusterKind, PatroniClusterSpec
from components.platform.local.ha.haproxy import HaRouterKind, HaRouterSpec
from components.platform.local.ha.node import PatroniNodeKind, PatroniNodeSpec
from testbed.ha import Writer, kill_and_wait, patroni_of, postmaster_of, running, whole_node
from testbed.support import free_port, reachable_state_dir

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "password_encryption": "scram-sha-256",
}


@dataclass
class Cluster:
    base: Path
    password: str
    spec: PatroniClusterSpec
    nodes: list[PatroniNodeSpec]
    router: HaRouterSpec

    def conninfo(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.router.write_port,
            "user": "postgres",
            "password": self.password,
            "dbname": "postgres",
            "connect_timeout": 3,
        }

    def leader(self) -> PatroniNodeSpec:
        found = patroni.leader_of(patroni.cluster_status([n.rest_port for n in self.nodes]))
        assert found is not None
        return next(n for n in self.nodes if n.name == found["name"])

    def settled(self) -> bool:
        members = (patroni.cluster_status([n.rest_port for n in self.nodes]) or {}).get("members", [])
        return len([m for m in members if m.get("state") in ("running", "streaming")]) == len(self.nodes) and (
            not self.spec.synchronous or any(m.get("role") == "sync_standby" for m in members)
        )


def in_parallel(actions: list[Callable[[], object]]) -> None:
    threads = [threading.Thread(target=action) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def build(base: Path) -> Cluster:
    password, replication, scope = secrets.token_urlsafe(18), secrets.token_urlsafe(18), "bench-ha"
    peers = [etcd.Peer(name=f"etcd-{j}", client_port=free_port(), peer_port=free_port()) for j in range(3)]
    members = [patroni.Member(name=f"node-{i}", port=free_port(), rest_port=free_port()) for i in range(2)]
    etcd_ports = [peer.client_port for peer in peers]
    in_parallel(
        [
            lambda peer=peer: etcd.EtcdMemberKind().create(  # type: ignore[misc]
                etcd.EtcdMemberSpec(
                    state_dir=str(base / peer.name),
                    name=peer.name,
                    client_port=peer.client_port,
                    peer_port=peer.peer_port,
                    cluster_token=scope,
                    peers=peers,
                )
            )
            for peer in peers
        ]
    )
    spec = PatroniClusterSpec(
        scope=scope,
        etcd_ports=etcd_ports,
        members=members,
        superuser_password=password,
        synchronous=True,
        ttl=20,
        loop_wait=2,
        retry_timeout=8,
        settings=SETTINGS,
    )
    PatroniClusterKind().create(spec)
    nodes = [
        PatroniNodeSpec(
            state_dir=str(base / f"ha-{m.name}"),
            scope=scope,
            name=m.name,
            port=m.port,
            rest_port=m.rest_port,
            etcd_ports=etcd_ports,
            database="postgres",
            superuser_password=password,
            replication_password=replication,
            allow_data_loss=True,
        )
        for m in members
    ]
    in_parallel([lambda node=node: PatroniNodeKind().create(node) for node in nodes])  # type: ignore[misc]
    router = HaRouterSpec(
        state_dir=str(base / "haproxy"), write_port=free_port(), read_port=free_port(), members=members
    )
    HaRouterKind().create(router)
    cluster = Cluster(base, password, spec, nodes, router)
    process.wait_until(cluster.settled, 120, "the cluster to settle")
    return cluster


def commit_latencies(cluster: Cluster, commits: int) -> dict[str, float]:
    with psycopg.connect(**cluster.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commits (id bigint, at timestamptz DEFAULT now())")
        timings = []
        for index in range(commits):
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_commits (id) VALUES (%s)", (index,))
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {
        "commits": commits,
        "median_ms": round(statistics.median(timings), 3),
        "p95_ms": round(timings[int(0.95 * len(timings)) - 1], 3),
        "p99_ms": round(timings[int(0.99 * len(timings)) - 1], 3),
    }


def set_synchronous(cluster: Cluster, synchronous: bool) -> None:
    cluster.spec = cluster.spec.model_copy(update={"synchronous": synchronous})
    PatroniClusterKind().update(cluster.spec.scope, {}, cluster.spec)
    process.wait_until(
        lambda: (
            (patroni.dynamic_configuration(cluster.nodes[0].rest_port) or {}).get("synchronous_mode") == synchronous
        ),
        30,
        "Patroni to take the mode",
    )
    process.wait_until(cluster.settled, 60, "the cluster to settle")


def failover(cluster: Cluster, fault: Callable[[Path], list[int]]) -> dict[str, Any]:
    leader = cluster.leader()
    writer = Writer(cluster.conninfo())
    with psycopg.connect(**cluster.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS ha_probe")
        conn.execute("CREATE TABLE IF NOT EXISTS ha_probe.commits (run int NOT NULL DEFAULT 0, id bigint NOT NULL)")
        conn.execute("TRUNCATE ha_probe.commits")
    with running(writer):
        writer.wait_commits(100)
        kill_and_wait(fault(Path(leader.state_dir)))
        fault_at = time.monotonic()
        writer.wait_commits(100, timeout=120)
    new_leader = cluster.leader()
    with psycopg.connect(**{**cluster.conninfo(), "port": new_leader.port}, autocommit=True) as conn:
        have = {row[0] for row in conn.execute("SELECT id FROM ha_probe.commits")}
    PatroniNodeKind().update(leader.name, {}, leader)  # a node lost whole is started again, as `up` does
    process.wait_until(cluster.settled, 120, "the old leader to rejoin")
    return {
        "outage_s": round(writer.outage_after(fault_at), 2),
        "acknowledged": len(writer.acknowledged),
        "lost": len(set(writer.acknowledged) - have),
        "leader_changed": new_leader.name != leader.name,
    }


FAULTS: dict[str, Callable[[Path], list[int]]] = {
    "postmaster": lambda node: [postmaster_of(node)],
    "patroni": lambda node: [patroni_of(node)],
    "whole node": whole_node,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="failovers per kind of fault")
    parser.add_argument("--commits", type=int, default=2000, help="commits per latency measurement")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "ttl_s": 20,
        "loop_wait_s": 2,
        "load_average_before": [round(x, 1) for x in os.getloadavg()],  # figures of a busy machine are noisy
    }
    with reachable_state_dir("thorbis-bench-ha-") as base:
        cluster = build(base)
        results["latency_synchronous"] = commit_latencies(cluster, args.commits)
        results["failover_synchronous"] = {
            name: [failover(cluster, fault) for _ in range(args.rounds)] for name, fault in FAULTS.items()
        }
        set_synchronous(cluster, False)
        results["latency_asynchronous"] = commit_latencies(cluster, args.commits)
        for node in cluster.nodes:
            patroni.stop(Path(node.state_dir))
    results["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ha.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))


def report(results: dict[str, Any]) -> str:
    lines = ["| mode | commit median (ms) | p95 (ms) | p99 (ms) |", "|---|---|---|---|"]
    for mode in ("synchronous", "asynchronous"):
        figures = results[f"latency_{mode}"]
        lines.append(f"| {mode} | {figures['median_ms']} | {figures['p95_ms']} | {figures['p99_ms']} |")
    lines += ["", "| fault (synchronous mode) | writes stopped (s), each round | leader changed | commits lost |"]
    lines.append("|---|---|---|---|")
    for name, rounds in results["failover_synchronous"].items():
        outages = ", ".join(f"{r['outage_s']:.1f}" for r in rounds)
        changed = sum(r["leader_changed"] for r in rounds)
        lost = sum(r["lost"] for r in rounds)
        lines.append(f"| {name} | {outages} | {changed} of {len(rounds)} | {lost} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
