"""What a Patroni node's start meets and passes on, with the real supervisor and Patroni (no etcd: the node
never gets to run PostgreSQL here; the whole cluster is tests/e2e/test_ha_failover.py): a half-made data
directory set aside and kept, the password file of an interrupted initdb removed, and no secret of the
caller in the environment of the processes that outlive it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from components.platform.local import process
from components.platform.local.ha import cluster, patroni
from components.platform.local.ha.patroni import Member
from testbed.support import free_port, reachable_state_dir
from tests.integration.conftest import SUPERUSER_PASSWORD, Primary, eventually

CALLER_SECRETS = {"PGPASSWORD": "caller-secret-pgpassword", "PULUMI_CONFIG": json.dumps({"x": "caller-secret"})}


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[patroni.NodeFiles]:
    """A node's files, its patroni.yml naming an etcd nobody listens on; stopped after the test."""
    for name, value in CALLER_SECRETS.items():
        monkeypatch.setenv(name, value)
    with reachable_state_dir() as directory:
        config = patroni.NodeConfig(
            base=directory / "ha-node-0",
            scope="thorbis-start",
            name="node-0",
            port=free_port(),
            rest_port=free_port(),
            etcd_ports=(free_port(),),
            superuser_password=SUPERUSER_PASSWORD,
            replication_password="replication-" + SUPERUSER_PASSWORD,
        )
        patroni.write_files(config)
        files = patroni.NodeFiles(config.base)
        try:
            yield files
        finally:
            patroni.stop(files.base, timeout=30)


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.decode().split("=", 1) for entry in raw.split(b"\0") if b"=" in entry)


def test_a_node_starts_with_no_secret_of_the_caller_and_a_private_tmpdir(node: patroni.NodeFiles) -> None:
    """The supervisor and Patroni outlive the provider, whose environment holds the caller's PGPASSWORD and
    the stack's decrypted config; Patroni's TMPDIR (where its initdb writes the superuser password) is a
    directory of the node only the postgres OS user enters, not the shared /tmp."""
    patroni.start(node.base)
    supervisor = patroni.supervisor_pid(node.base)
    assert supervisor is not None
    eventually(lambda: patroni.patroni_pid(node.base) is not None, 30, "Patroni to start")
    for pid in (supervisor, patroni.patroni_pid(node.base)):
        assert pid is not None
        environment = environment_of(pid)
        assert not environment.keys() & CALLER_SECRETS.keys(), sorted(environment)
        assert not any("caller-secret" in value for value in environment.values())
        assert environment["TMPDIR"] == str(node.temporary)
    assert node.temporary.stat().st_mode & 0o077 == 0


def test_a_node_start_sets_aside_a_half_made_cluster_and_removes_an_interrupted_initdbs_password_file(
    node: patroni.NodeFiles,
) -> None:
    """What a kill inside Patroni's initdb or base backup leaves: a data directory without pg_control (kept
    aside: it may hold data) and, from initdb, the file holding the superuser password."""
    data = node.server.data
    (data / "base").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "base" / "copied-so-far").write_text("a page\n")
    process.make_private_dir(node.temporary)
    (node.temporary / "tmpleft").write_text(SUPERUSER_PASSWORD)
    patroni.start(node.base)
    aside = list(node.base.glob("data.incomplete-*"))
    assert len(aside) == 1 and (aside[0] / "base" / "copied-so-far").read_text() == "a page\n"
    assert node.temporary.is_dir() and not list(node.temporary.iterdir())


def test_a_node_takes_a_restart_setting_once_its_file_has_it_and_then_waits_for_a_restart(primary: Primary) -> None:
    """The rolling restart's test of a node (components/platform/local/ha/cluster.py) on a real server: a new
    max_connections is not taken while only declared; once the server's files have it (Patroni writes every
    setting into postgresql.conf and reloads; here ALTER SYSTEM) it is taken and a restart is due, though the
    live value is still the old one. The password before a rotation still opens a session."""
    live = int(primary.scalar("SHOW max_connections"))
    member = Member(name="node-0", port=primary.port, rest_port=free_port())
    spec = cluster_spec(member, {"max_connections": str(live + 10)})
    rotated = ["new-" + SUPERUSER_PASSWORD, SUPERUSER_PASSWORD]
    assert cluster.settings_applied(member, spec, rotated) == (False, False)
    try:
        with primary.connect() as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(live + 10)))
            conn.execute("SELECT pg_reload_conf()")
        eventually(lambda: cluster.settings_applied(member, spec, rotated) == (True, True), 10, "the reload")
        assert int(primary.scalar("SHOW max_connections")) == live
    finally:
        with primary.connect() as conn:
            conn.execute("ALTER SYSTEM RESET max_connections")
            conn.execute("SELECT pg_reload_conf()")
    eventually(lambda: cluster.settings_applied(member, spec, rotated) == (False, False), 10, "the reset")


def cluster_spec(member: Member, settings: dict[str, str]) -> cluster.PatroniClusterSpec:
    return cluster.PatroniClusterSpec(
        scope="thorbis-settings",
        etcd_ports=[free_port()],
        members=[member],
        superuser_password=SUPERUSER_PASSWORD,
        synchronous=True,
        ttl=30,
        loop_wait=10,
        retry_timeout=10,
        settings=settings,
    )
