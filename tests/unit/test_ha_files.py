"""What the HA kinds write for Patroni, etcd and HAProxy, checked without starting them."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.connection import ConnectionSpec
from components.platform.local import pgbackrest, pgbouncer
from components.platform.local import platform as local
from components.platform.local import postgres_files as pg
from components.platform.local.ha import cluster, etcd, haproxy, node, patroni
from testbed.support import reachable_state_dir
from tests.unit.test_config import Stack

MEMBERS = [patroni.Member(name=f"node-{i}", port=30000 + 2 * i, rest_port=30001 + 2 * i) for i in range(3)]


def node_config(tmp_path: Path) -> patroni.NodeConfig:
    return patroni.NodeConfig(tmp_path, "thorbis-x", "node-1", 30002, 30003, (31000, 31002, 31004), "s" * 16, "r" * 16)


def test_a_node_bootstraps_with_checksums_and_scram_and_the_local_platforms_pg_hba(tmp_path: Path) -> None:
    document = patroni.config_document(node_config(tmp_path))
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


def test_haproxys_replica_check_takes_the_read_pools_lag_limit_and_interval(tmp_path: Path) -> None:
    spec = haproxy.HaRouterSpec(
        state_dir=str(tmp_path), write_port=32000, read_port=32001, members=MEMBERS, max_lag_bytes=4096, check_ms=300
    )
    text = haproxy.config_text(spec)
    read = text.split("listen read")[1]
    assert "option httpchk OPTIONS /replica?lag=4096" in read
    assert "default-server inter 300ms fastinter 150ms downinter 300ms" in text


def test_with_ha_pgbouncers_two_pools_go_to_haproxys_endpoints_and_no_slot_is_made(tmp_path: Path) -> None:
    spec = pgbouncer.PgBouncerSpec(
        state_dir=str(tmp_path),
        port=33000,
        primary_port=32000,
        primary_socket_dir=str(tmp_path / "none"),
        read_port=32001,
        database="thorbis",
        superuser_password="s" * 16,
        auth_password="a" * 16,
        server_login_retry=3,
    )
    text = pgbouncer.ini_text(spec)
    assert "thorbis = host=127.0.0.1 port=32000 dbname=thorbis" in text
    assert "thorbis_read = host=127.0.0.1 port=32001 dbname=thorbis" in text
    assert "* = host=127.0.0.1 port=32000" in text
    assert "server_login_retry = 3" in text and "routes" not in text
    pgbouncer.ensure_slots(spec)
    assert not (tmp_path / "routes").exists()


def test_with_ha_the_connection_names_haproxys_endpoints_and_the_managers() -> None:
    settings = (
        Stack()
        .with_values(postgres={"port": 40000}, replicas={"count": 1}, ha={"mode": "patroni"}, backup={"enabled": False})
        .parse()
    )
    connection = local.loopback_connection(settings, "local", "p" * 16, "r" * 16)
    assert connection.primary.port == 40000 and [r.port for r in connection.replicas] == [settings.ha_read_port]
    assert connection.read_database == "thorbis_read"
    assert connection.ha is not None
    assert [e.port for e in connection.ha.patroni] == [n.rest_port for n in settings.ha_nodes]
    assert [e.port for e in connection.ha.etcd] == [p.client_port for p in settings.etcd_peers]
    assert local.loopback_connection(Stack().parse(), "local", "p" * 16, "r" * 16).ha is None


def test_with_ha_the_database_layer_sees_the_write_endpoint_and_not_the_nodes() -> None:
    """A node added or removed changes the HA endpoints: the database layer's connection must not change
    with them (every database object would wait on the new node, as main keeps it from waiting on a replica)."""

    def database_connection(count: int) -> ConnectionSpec:
        settings = (
            Stack().with_values(replicas={"count": count}, ha={"mode": "patroni"}, backup={"enabled": False}).parse()
        )
        return local.loopback_connection(settings, "local", "p" * 16, "").for_database()

    assert database_connection(1) == database_connection(2)
    assert database_connection(1).ha is None


def test_with_ha_and_backups_every_node_pushes_wal_through_a_pgbackrest_config_naming_itself() -> None:
    settings = (
        Stack().with_values(replicas={"count": 1}, ha={"mode": "patroni"}, backup={"restoreOnProvision": False}).parse()
    )
    repo = local.backup_repository(settings)
    assert repo is not None
    gucs = local.postgres_settings(settings)
    assert gucs["archive_mode"] == "on" and "archive_command" not in gucs, "the shared settings name no node"
    with reachable_state_dir() as tmp_path:
        spec = node.PatroniNodeSpec(
            state_dir=str(tmp_path / "ha-node-1"),
            scope="thorbis-x",
            name="node-1",
            port=30002,
            rest_port=30003,
            etcd_ports=[31000],
            database="thorbis",
            superuser_password="s" * 16,
            replication_password="r" * 16,
            backup=repo,
        )
        own = tmp_path / "ha-node-1" / "pgbackrest"
        parameters = patroni.config_document(node.node_config(spec))["postgresql"]["parameters"]
        assert parameters["archive_command"] == f"pgbackrest --config-path={own} --stanza=dev archive-push %p"
        node.write_backup_files(spec)
        text = (own / "pgbackrest.conf").read_text()
        assert f"pg1-path={tmp_path / 'ha-node-1' / 'data'}" in text and "pg1-port=30002" in text and "pg2-" not in text
        assert f"repo1-path={repo.path}" in text


def test_the_stacks_stanza_lists_every_node_so_pgbackrest_backs_up_whichever_leads(tmp_path: Path) -> None:
    repo = pgbackrest.Repository(path=str(tmp_path / "repo"), stanza="dev", config_dir=str(tmp_path / "cfg"))
    servers = [(pg.ServerDir(tmp_path / f"ha-node-{i}"), 30000 + 2 * i) for i in range(3)]
    text = pgbackrest.config_text(repo, servers)
    for index, (server, port) in enumerate(servers, start=1):
        assert f"pg{index}-path={server.data}" in text and f"pg{index}-port={port}" in text
