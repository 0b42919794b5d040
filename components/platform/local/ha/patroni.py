"""Patroni on this host: a node's configuration file, its supervisor process, and its REST API.

The node's local file holds only what is the node's own (ports, directories, passwords, pg_hba); what
the whole cluster shares (timings, synchronous mode, postgresql.conf settings) is Patroni's dynamic
configuration in etcd, written by the PatroniCluster kind (components/platform/local/ha/cluster.py).
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.kind import ProviderError, Spec
from components.platform.local import postgres_files as pg
from components.platform.local import process
from components.platform.local.ha import http
from components.platform.local.postgres_files import REPLICATION_ROLE

NAMESPACE = "/service/"
#: The user of Patroni's REST API for unsafe requests (restart, switchover, configuration).
REST_USER = "thorbis"
SYSTEM_PYTHON = "/usr/bin/python3"  # Patroni's own interpreter; the supervisor needs only its stdlib
#: pg_hba.conf of every member: the local platform's (passwords only, loopback only), which Patroni writes.
HBA = [line for line in pg.HBA.splitlines() if line and not line.startswith("#")]


class Member(Spec):
    """A node as the others address it: its PostgreSQL and its Patroni REST API."""

    name: str
    port: int
    rest_port: int


@dataclass(frozen=True)
class NodeFiles:
    """Where one node keeps its files, around the PostgreSQL directory layout of the local platform."""

    base: Path

    @property
    def server(self) -> pg.ServerDir:
        return pg.ServerDir(self.base)

    @property
    def config(self) -> Path:
        return self.base / "patroni.yml"

    @property
    def log(self) -> Path:
        return self.base / "patroni.log"

    @property
    def temporary(self) -> Path:
        """Patroni's TMPDIR: its initdb takes the superuser password from a file it makes there."""
        return self.base / "tmp"

    @property
    def supervisor(self) -> Path:
        return self.base / "supervise.py"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.base / "supervise.pid"

    @property
    def patroni_pidfile(self) -> Path:
        return self.base / "patroni.pid"


@dataclass(frozen=True)
class NodeConfig:
    """What a node's patroni.yml is made from."""

    base: Path
    scope: str
    name: str
    port: int
    rest_port: int
    etcd_ports: tuple[int, ...]
    superuser_password: str
    replication_password: str
    archive_command: str | None = None
    """This node's push of WAL into the stack's pgBackRest repository (its own config names it pg1)."""


def config_document(node: NodeConfig) -> dict[str, Any]:
    files = NodeFiles(node.base)
    address = f"{http.HOST}:{node.port}"
    return {
        "scope": node.scope,
        "namespace": NAMESPACE,
        "name": node.name,
        "restapi": {
            "listen": f"{http.HOST}:{node.rest_port}",
            "connect_address": f"{http.HOST}:{node.rest_port}",
            "authentication": {"username": REST_USER, "password": node.superuser_password},
        },
        "etcd3": {"hosts": [f"{http.HOST}:{port}" for port in node.etcd_ports], "protocol": "http"},
        "bootstrap": {
            # the dynamic configuration is in etcd before any node starts; this is only its fallback
            "dcs": {},
            "initdb": [
                "data-checksums",
                {"auth": "scram-sha-256"},
                {"encoding": "UTF8"},
                {"locale": "C.UTF-8"},
            ],
        },
        "postgresql": {
            "listen": address,
            "connect_address": address,
            "data_dir": str(files.server.data),
            "bin_dir": str(process.postgres_bindir()),
            "pgpass": str(node.base / ".pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": node.superuser_password},
                "replication": {"username": REPLICATION_ROLE, "password": node.replication_password},
            },
            # a node's own settings, over the shared ones of the dynamic configuration (Patroni's precedence)
            "parameters": {
                "unix_socket_directories": str(files.server.socket_dir),
                **({"archive_command": node.archive_command} if node.archive_command else {}),
            },
            "pg_hba": HBA,
            "basebackup": [{"checkpoint": "fast"}],
            "use_unix_socket": False,
            # a node's data is a copy of the leader's: when pg_rewind cannot bring an old leader back,
            # it is copied anew rather than left out of the cluster
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def write_files(node: NodeConfig) -> bool:
    """patroni.yml (passwords inside: readable by the service user only) and the supervisor script."""
    files = NodeFiles(node.base)
    process.make_private_dir(node.base)
    changed = process.write_private_file(files.config, yaml.safe_dump(config_document(node), sort_keys=False))
    process.write_private_file(files.supervisor, Path(__file__).with_name("supervise.py").read_text())
    return changed


def supervisor_pid(base: Path) -> int | None:
    return process.read_pid(NodeFiles(base).supervisor_pidfile)


def patroni_pid(base: Path) -> int | None:
    return process.read_pid(NodeFiles(base).patroni_pidfile)


def start(base: Path) -> None:
    """Start the node's supervisor (which starts Patroni, which starts PostgreSQL) unless it runs."""
    files = NodeFiles(base)
    if supervisor_pid(base) is not None:
        return
    if shutil.which("patroni") is None:
        raise ProviderError("patroni is not installed: run scripts/install-deps")
    process.make_private_dir(files.server.socket_dir)
    clear_remains(files)
    pid = process.spawn(
        [
            SYSTEM_PYTHON,
            str(files.supervisor),
            f"--config={files.config}",
            f"--data-dir={files.server.data}",
            f"--pg-ctl={process.pg_tool('pg_ctl')}",
            f"--patroni-pidfile={files.patroni_pidfile}",
        ],
        files.log,
        base,
        env={"TMPDIR": str(files.temporary)},
    )
    process.write_private_file(files.supervisor_pidfile, f"{pid}\n")


def clear_remains(files: NodeFiles) -> None:
    """Before Patroni starts: what a kill of the node left. A data directory that is not a whole cluster
    (Patroni's initdb or base backup interrupted) is set aside, as the local platform's are; the password
    file of an interrupted initdb (Patroni's own, in its TMPDIR: never the shared /tmp) is removed."""
    pg.clear_half_made(files.server)
    process.remove_tree(files.temporary)
    process.make_private_dir(files.temporary)


def stop(base: Path, timeout: float = 120) -> None:
    """Stop the supervisor, which stops Patroni, which stops PostgreSQL (a leader hands its lock on)."""
    files = NodeFiles(base)
    if (pid := supervisor_pid(base)) is not None:
        process.terminate(pid, f"the Patroni supervisor of {base}", timeout)
    process.wait_until(
        lambda: files.server.postmaster_pid() is None, timeout, f"PostgreSQL of {base} to stop with its Patroni"
    )


def reload(base: Path) -> None:
    """Patroni rereads its file on SIGHUP."""
    if (pid := patroni_pid(base)) is not None:
        os.kill(pid, signal.SIGHUP)


def member_status(rest_port: int) -> dict[str, Any] | None:
    """GET /patroni: the node's state, role, timeline, pending restart; None when it does not answer."""
    try:
        code, body = http.call(rest_port, "/patroni", timeout=2)
    except ProviderError:
        return None
    return body if isinstance(body, dict) and code in (200, 503) else None


def cluster_status(rest_ports: list[int]) -> dict[str, Any] | None:
    """GET /cluster from the first node that answers: every member's role, state, lag; and the leader."""
    for port in rest_ports:
        try:
            code, body = http.call(port, "/cluster", timeout=2)
        except ProviderError:
            continue
        if code == 200 and isinstance(body, dict):
            return body
    return None


def dynamic_configuration(rest_port: int) -> dict[str, Any] | None:
    """GET /config: the cluster's dynamic configuration as the node knows it."""
    try:
        code, body = http.call(rest_port, "/config", timeout=2)
    except ProviderError:
        return None
    return body if code == 200 and isinstance(body, dict) else None


def leader_of(cluster: dict[str, Any] | None) -> dict[str, Any] | None:
    members = (cluster or {}).get("members", [])
    return next((m for m in members if m.get("role") == "leader"), None)


def running(rest_port: int) -> bool:
    status = member_status(rest_port)
    return status is not None and status.get("state") == "running"
