"""thorbisdb:local:HaRouter — HAProxy in front of the Patroni nodes: a write endpoint that reaches the
current leader and a read endpoint that reaches the streaming replicas.

Each node is checked through Patroni's REST API (`GET /primary` answers 200 on the leader only, `GET
/replica?lag=N` on a running replica at most N bytes behind), so the route follows the leader lock in etcd,
never a guess from PostgreSQL itself; a node marked down has its sessions cut, so no client stays on a
demoted primary. Reads fall back to the leader when no replica is up. PgBouncer's write pool `<db>` and
read pool `<db>_read` point at these endpoints: with ha this replaces the ReadRouter (whose
`routing.route` would be a second opinion on roles), and takes its settings, pgbouncer.readMaxLagBytes and
routeCheckMs.
"""

from __future__ import annotations

import csv
import shutil
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from components.kind import Expect, Kind, Observed, ProviderError, Replace, Spec, Status
from components.platform.local import process
from components.platform.local.ha import http
from components.platform.local.ha.patroni import Member

TOKEN = "thorbisdb:local:HaRouter"
#: How long a session through HAProxy may stay silent both ways before HAProxy closes it.
SESSION_IDLE_LIMIT = "24h"


def checks(interval_ms: int) -> str:
    """Every server checked every `interval_ms` (twice as often while it changes state): a failover is
    routed within about two intervals, and a server marked down has its sessions cut."""
    return (
        f"inter {interval_ms}ms fastinter {max(50, interval_ms // 2)}ms downinter {interval_ms}ms "
        "fall 2 rise 1 on-marked-down shutdown-sessions"
    )


class HaRouterSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of haproxy.cfg, its pidfile and admin socket.")
    write_port: int = Field(ge=1024, le=65535, description="Port of the write endpoint (the leader) on 127.0.0.1.")
    read_port: int = Field(ge=1024, le=65535, description="Port of the read endpoint (the replicas) on 127.0.0.1.")
    members: list[Member] = Field(min_length=1, description="The Patroni nodes: PostgreSQL and REST API ports.")
    max_lag_bytes: int = Field(
        default=16 * 1024 * 1024, ge=0, description="A replica further behind than this serves no reads."
    )
    check_ms: int = Field(default=1000, ge=50, description="Time between two health checks of a server.")


class HaRouterStatus(Status):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="HAProxy runs and listens on both endpoints (false: `up` starts it)."
    )


def files(spec: HaRouterSpec) -> tuple[Path, Path, Path]:
    base = Path(spec.state_dir)
    return base / "haproxy.cfg", base / "haproxy.pid", base / "haproxy.sock"


def config_text(spec: HaRouterSpec) -> str:
    _, pidfile, admin = files(spec)

    def server(name: str, member: Member, options: str) -> str:
        return f"    server {name} {http.HOST}:{member.port} {options}"

    checked = [server(m.name, m, f"check port {m.rest_port}") for m in spec.members]
    # a replica-less cluster still serves reads: from the leader, whose state mirrors the write check
    leader_fallback = [server(f"{m.name}-leader", m, f"backup track write/{m.name}") for m in spec.members]
    return "\n".join(
        [
            "# Managed by thorbis-db: edits are overwritten by the next `pulumi up`.",
            "global",
            "    maxconn 4096",
            f"    pidfile {pidfile}",
            f"    stats socket {admin} mode 600 level admin",
            "defaults",
            "    mode tcp",
            "    timeout connect 3s",
            # idle limits, not statement limits: a long statement (CREATE INDEX CONCURRENTLY, a report) sends
            # nothing either way until it ends, so a short one would cut it; dead nodes are found by the checks
            f"    timeout client {SESSION_IDLE_LIMIT}",
            f"    timeout server {SESSION_IDLE_LIMIT}",
            "    timeout check 2s",
            f"    default-server {checks(spec.check_ms)}",
            "listen write",
            f"    bind {http.HOST}:{spec.write_port}",
            "    option httpchk OPTIONS /primary",  # the status alone: Patroni sends no body
            "    http-check expect status 200",
            *checked,
            "listen read",
            f"    bind {http.HOST}:{spec.read_port}",
            "    balance roundrobin",
            # Patroni measures the lag against the leader's WAL position in etcd (updated every loop_wait)
            f"    option httpchk OPTIONS /replica?lag={spec.max_lag_bytes}",
            "    http-check expect status 200",
            *checked,
            *leader_fallback,
            "",
        ]
    )


def haproxy() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        raise ProviderError("haproxy is not installed: run scripts/install-deps")
    return found


def start(spec: HaRouterSpec) -> None:
    """Start HAProxy, or reload it when it runs (the old process finishes its sessions, `-sf`)."""
    config, pidfile, _ = files(spec)
    process.run([haproxy(), "-c", "-q", "-f", str(config)], f"haproxy -c -f {config}")
    old = process.read_pid(pidfile)
    argv = [haproxy(), "-D", "-f", str(config), "-p", str(pidfile), *(["-sf", str(old)] if old else [])]
    process.run(process.as_service_user(argv), f"haproxy -D -f {config}")
    process.wait_until(
        lambda: process.port_open(spec.write_port) and process.port_open(spec.read_port),
        30,
        f"HAProxy on ports {spec.write_port} and {spec.read_port}",
    )
    process.wait_until(lambda: len(routed_leaders(spec)) == 1, 60, "the write endpoint to reach the Patroni leader")


def server_states(spec: HaRouterSpec) -> dict[tuple[str, str], str]:
    """Each (proxy, server)'s status (UP, DOWN, ...) from HAProxy's admin socket (`show stat`)."""
    _, _, admin = files(spec)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(2)
            connection.connect(str(admin))
            connection.sendall(b"show stat\n")
            raw = b"".join(iter(lambda: connection.recv(65536), b""))
    except OSError:
        return {}
    table = list(csv.reader(raw.decode().lstrip("# ").splitlines()))
    if not table:
        return {}
    header = table[0]
    proxy, server, state = header.index("pxname"), header.index("svname"), header.index("status")
    return {(row[proxy], row[server]): row[state] for row in table[1:] if len(row) > state}


def routed_leaders(spec: HaRouterSpec) -> list[str]:
    """The nodes the write endpoint sends connections to now: one, once a leader is elected and checked."""
    members = {member.name for member in spec.members}
    return [
        name
        for (proxy, name), state in server_states(spec).items()
        if proxy == "write" and name in members and state == "UP"
    ]


def stop(spec: HaRouterSpec) -> None:
    _, pidfile, _ = files(spec)
    if (pid := process.read_pid(pidfile)) is not None:
        process.terminate(pid, "HAProxy")


def status(spec: HaRouterSpec) -> HaRouterStatus:
    _, pidfile, _ = files(spec)
    running = process.read_pid(pidfile) is not None
    return HaRouterStatus(running=running and process.port_open(spec.write_port) and process.port_open(spec.read_port))


class HaRouterKind(Kind[HaRouterSpec, HaRouterStatus]):
    token = TOKEN
    spec_type = HaRouterSpec
    status_type = HaRouterStatus

    def create(self, spec: HaRouterSpec) -> tuple[str, HaRouterStatus]:
        config, _, _ = files(spec)
        process.make_private_dir(Path(spec.state_dir))
        process.write_private_file(config, config_text(spec))
        start(spec)
        return str(config), status(spec)

    def observe(
        self, resource_id: str, spec: HaRouterSpec, recorded: HaRouterStatus | None = None
    ) -> Observed[HaRouterStatus] | None:
        return Observed({}, status(spec)) if Path(resource_id).exists() else None

    def update(self, resource_id: str, old: dict[str, Any], spec: HaRouterSpec) -> HaRouterStatus:
        config, _, _ = files(spec)
        process.write_private_file(config, config_text(spec))
        if old.get("writePort") != spec.write_port or old.get("readPort") != spec.read_port:
            stop(spec)  # -sf hands sockets over only on the same ports
        start(spec)
        return status(spec)

    def delete(self, resource_id: str, spec: HaRouterSpec, recorded: HaRouterStatus | None = None) -> None:
        stop(spec)
        process.remove_tree(Path(spec.state_dir))
