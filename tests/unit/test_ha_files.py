"""What the HA kinds write for Patroni, etcd and HAProxy, checked without starting them."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.platform.local import postgres_files as pg
from components.platform.local.ha import cluster, etcd, haproxy, patroni

MEMBERS = [patroni.Member(name=f"node-{i}", port=30000 + 2 * i, rest_port=30001 + 2 * i) for i in range(3)]


def node(tmp_path: Path) -> patroni.NodeConfig:
    return patroni.NodeConfig(tmp_path, "thorbis-x", "node-1", 30002, 30003, (31000, 31002, 31004), "s" * 16, "r" * 16)


def test_a_node_bootstraps_with_checksums_and_scram_and_the_local_platforms_pg_hba(tmp_path: Path) -> None:
    document = patroni.config_document(node(tmp_path))
    assert "data-checksums" in document["bootstrap"]["initdb"]
    assert {"auth": "scram-sha-256"} in document["bootstrap"]["initdb"]
    postgresql = document["postgresql"]
    assert [line for line in pg.HBA.splitlines() if line and not line.startswith("#")] == postgresql["pg_hba"]
    assert all("trust" not in line and "127.0.0.1/32" in line for line in postgresql["pg_hba"] if "host" in line)
    assert postgresql["remove_data_directory_on_rewind_failure"] is True
    assert postgresql["listen"] == postgresql["connect_address"] == "127.0.0.1:30002"
    assert document["restapi"]["listen"] == "127.0.0.1:30003"
    assert document["restapi"]["authentication"]["username"] == patroni.REST_USER
    assert document["etcd3"]["hosts"] == ["127.0.0.1:31000", "127.0.0.1:31002", "127.0.0.1:31004"]


@pytest.mark.parametrize("synchronous", [True, False])
def test_the_shared_configuration_rewinds_keeps_slots_and_promotes_a_crashed_primarys_standby_only_when_synchronous(
    synchronous: bool,
) -> None:
    spec = cluster.PatroniClusterSpec(
        scope="thorbis-x",
        etcd_ports=[31000],
        members=MEMBERS,
        superuser_password="s" * 16,
        synchronous=synchronous,
        ttl=20,
        loop_wait=2,
        retry_timeout=8,
        settings={"shared_preload_libraries": "pg_cron,pg_stat_statements"},
    )
    document = cluster.dynamic_configuration(spec)
    assert document["synchronous_mode"] is synchronous
    assert document["primary_start_timeout"] == (0 if synchronous else 300)
    assert document["postgresql"]["use_pg_rewind"] and document["postgresql"]["use_slots"]
    # Patroni adds defaults of settings we do not manage: they are not drift
    stored = {**document, "postgresql": {"parameters": {**spec.settings, "max_locks_per_transaction": 64}}}
    assert cluster.as_inputs(stored, spec)["settings"] == spec.settings


def test_haproxy_sends_writes_to_the_lock_holder_and_reads_to_replicas_then_the_leader(tmp_path: Path) -> None:
    spec = haproxy.HaRouterSpec(state_dir=str(tmp_path), write_port=32000, read_port=32001, members=MEMBERS)
    text = haproxy.config_text(spec)
    write, read = text.split("listen write")[1].split("listen read")
    assert "option httpchk OPTIONS /primary" in write and "option httpchk OPTIONS /replica" in read
    assert "on-marked-down shutdown-sessions" in text
    for member in MEMBERS:
        checked = f"server {member.name} 127.0.0.1:{member.port} check port {member.rest_port}"
        assert checked in write and checked in read
        assert f"server {member.name}-leader 127.0.0.1:{member.port} backup track write/{member.name}" in read


def test_etcd_members_name_every_peer_and_listen_on_loopback_only(tmp_path: Path) -> None:
    peers = [etcd.Peer(name=f"etcd-{j}", client_port=31000 + 2 * j, peer_port=31001 + 2 * j) for j in range(3)]
    spec = etcd.EtcdMemberSpec(
        state_dir=str(tmp_path), name="etcd-1", client_port=31002, peer_port=31003, cluster_token="t", peers=peers
    )
    argv = etcd.command(spec, "new")
    cluster_flag = next(arg for arg in argv if arg.startswith("--initial-cluster="))
    assert cluster_flag.count("=http://127.0.0.1:") == 3
    assert all("127.0.0.1" in arg for arg in argv if "-urls=" in arg)
