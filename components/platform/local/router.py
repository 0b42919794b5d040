"""thorbisdb:local:ReadRouter — keeps PgBouncer's slots pointed where `routing.route` says, every moment.

PgBouncer 1.18 has no health checks of its own: a host list keeps sending every other new server
connection to a stopped replica, and a failed login stops the whole pool for `server_login_retry`. The
router is a small process beside PgBouncer: every `intervalMs` it reads each server's health (as
PgBouncer's auth role, through a SECURITY DEFINER function that reports recovery, streaming and the WAL
position), asks `routing.route` for the write and read targets, re-points the slots (components/
platform/local/slots.py) and, when a server it left is still up (a lagging replica, a demoted primary),
has PgBouncer RECONNECT that pool. It writes what it decided to `routes.json` on every pass: `pulumi
refresh` reports it (`readTargets`, `writeTarget`) and a stopped router is drift that `up` restarts.

The kind starts it detached (DAEMON), as the provider's user, with the config file it wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.connection import LOOPBACK
from components.kind import Expect, Kind, Observed, Replace, Secret, Spec, Status
from components.platform.local import process, slots
from components.platform.local.pgbouncer import AUTH_ROLE, AUTH_SCHEMA, HEALTH_FUNCTION, console
from components.platform.routing import Health, Routes, read_database, route

TOKEN = "thorbisdb:local:ReadRouter"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
#: The router's process (not `-m`: the package imports this module before it would run as __main__).
DAEMON = "import sys, pathlib; from components.platform.local.router import serve; serve(pathlib.Path(sys.argv[1]))"
HEALTH_QUERY = sql.SQL("SELECT * FROM {}.{}()").format(sql.Identifier(AUTH_SCHEMA), sql.Identifier(HEALTH_FUNCTION))


class ServerSpec(Spec):
    name: str = Field(pattern=r"^[a-z0-9-]{1,40}$", description="The server's name in routes: primary, replica-0, ...")
    port: int = Field(ge=1024, le=65535, description="Its port on the loopback address.")
    socket_dir: str = Field(description="Directory of its Unix socket.")
    primary: bool = Field(default=False, description="Whether it was declared the primary.")


class ReadRouterSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of the router's config, pidfile, log and routes.json.")
    pgbouncer_dir: str = Field(description="PgBouncer's state directory, where the slots live.")
    pgbouncer_port: int = Field(ge=1024, le=65535, description="PgBouncer's port, for RECONNECT.")
    database: str = Field(description="The application database (its write pool; the read pool is <db>_read).")
    auth_password: Secret[str] = Field(min_length=1, description="Password of PgBouncer's auth role (secret).")
    servers: list[ServerSpec] = Field(min_length=1, description="The primary and every replica.")
    read_slots: int = Field(ge=1, description="How many read slots PgBouncer's read pool lists.")
    max_lag_bytes: int = Field(ge=0, description="A replica further behind than this serves no reads.")
    interval_ms: int = Field(ge=50, description="Time between two passes.")


class ReadRouterStatus(Status):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="The router runs and has passed recently (false: `up` starts it)."
    )
    write_target: str | None = Field(default=None, description="The server the write pool's slot points at.")
    read_targets: list[str] | None = Field(default=None, description="The servers the read pool's slots point at.")


def files(spec: ReadRouterSpec) -> tuple[Path, Path, Path, Path]:
    base = Path(spec.state_dir)
    return base / "router.json", base / "router.pid", base / "routes.json", base / "router.log"


@dataclass(frozen=True)
class Seen:
    """One server's health, and its WAL position in bytes."""

    health: Health
    wal_bytes: int | None = None
    """Its WAL position in bytes: replayed on a replica, written on the primary."""


def observe_server(spec: ReadRouterSpec, server: ServerSpec) -> Seen:
    try:
        with psycopg.connect(
            host=LOOPBACK,
            port=server.port,
            dbname=spec.database,
            user=AUTH_ROLE,
            password=spec.auth_password,
            connect_timeout=2,
            autocommit=True,
        ) as conn:
            row = conn.execute(HEALTH_QUERY).fetchone()
    except psycopg.Error:
        return Seen(Health(server.name, server.primary, answering=False))
    assert row is not None
    in_recovery, streaming, wal_bytes = row
    health = Health(server.name, server.primary, answering=True, in_recovery=in_recovery, streaming=streaming)
    return Seen(health, None if wal_bytes is None else int(wal_bytes))


def observe(spec: ReadRouterSpec) -> list[Health]:
    """Every server's health, each one's lag measured against the server out of recovery."""
    seen = [observe_server(spec, server) for server in spec.servers]
    heads = [o.wal_bytes for o in seen if o.health.answering and not o.health.in_recovery and o.wal_bytes is not None]
    head = max(heads) if heads else None
    return [
        replace(o.health, lag_bytes=None if head is None or o.wal_bytes is None else max(0, head - o.wal_bytes))
        for o in seen
    ]


def reconnect(spec: ReadRouterSpec, databases: set[str]) -> None:
    """Close the server connections of these pools as they are released (PgBouncer's RECONNECT)."""
    try:
        with console(spec.pgbouncer_port, spec.auth_password, timeout=2) as admin:
            for database in sorted(databases):
                admin.execute(sql.SQL("RECONNECT {}").format(sql.Identifier(database)))
    except psycopg.Error:
        pass  # PgBouncer down: it has no server connections to close


def apply(spec: ReadRouterSpec, routes: Routes, health: list[Health]) -> list[str]:
    """Point every slot where `routes` says; return the slots that moved."""
    pgbouncer_dir = Path(spec.pgbouncer_dir)
    servers = {s.name: slots.Server(s.name, s.port, s.socket_dir, s.primary) for s in spec.servers}
    before = slots.current(pgbouncer_dir, servers, slots.all_slots(spec.read_slots))
    wanted = slots.assignment(routes, spec.read_slots)
    moved = [slot for slot, name in wanted.items() if slots.point(pgbouncer_dir, slot, servers[name])]
    answering = {h.name for h in health if h.answering}
    left_alive = {slot for slot in moved if before.get(slot) in answering}
    pools = {spec.database if slot == slots.WRITE_SLOT else read_database(spec.database) for slot in left_alive}
    if pools:
        reconnect(spec, pools)
    return moved


def run_once(spec: ReadRouterSpec, changes: int = 0) -> dict[str, Any]:
    """One pass: observe, decide, apply; the status written to routes.json (and returned)."""
    health = observe(spec)
    routes = route(health, spec.max_lag_bytes)
    moved = apply(spec, routes, health)
    status = {
        "checkedAt": time.time(),
        "pid": os.getpid(),
        "writeTarget": routes.write,
        "readTargets": list(routes.read),
        "readFallsBack": routes.read_falls_back,
        "excluded": routes.excluded,
        "lagBytes": {h.name: h.lag_bytes for h in health},
        "changes": changes + (1 if moved else 0),
    }
    _, _, status_file, _ = files(spec)
    process.write_private_file(status_file, json.dumps(status, indent=1, sort_keys=True))
    if moved:
        excluded = ", ".join(f"{name}: {why}" for name, why in routes.excluded.items()) or "none"
        print(
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} write -> {routes.write}; read -> {', '.join(routes.read)}; "
            f"moved {', '.join(moved)}; excluded: {excluded}",
            flush=True,
        )
    return status


def serve(config_file: Path) -> None:
    """The router's loop, until SIGTERM."""
    spec = ReadRouterSpec.model_validate_json(config_file.read_text())
    _, pidfile, _, _ = files(spec)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    pidfile.write_text(f"{os.getpid()}\n")
    changes = 0
    while not stopping and config_file.exists():  # its directory removed (a drill, by hand): it goes too
        try:
            changes = run_once(spec, changes)["changes"]
        except Exception as error:  # a pass that failed must not end the router: the next one retries
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pass failed: {error!r}", flush=True)
        time.sleep(spec.interval_ms / 1000)
    pidfile.unlink(missing_ok=True)


def status(spec: ReadRouterSpec) -> Observed[ReadRouterStatus]:
    """Whether the router runs and has passed recently, and the routes it last applied."""
    _, pidfile, status_file, _ = files(spec)
    try:
        last = json.loads(status_file.read_text())
    except (OSError, ValueError):
        last = {}
    fresh = time.time() - float(last.get("checkedAt", 0)) < max(10.0, 20 * spec.interval_ms / 1000)
    running = process.read_pid(pidfile) is not None and fresh
    routes = ReadRouterStatus(
        running=running, write_target=last.get("writeTarget"), read_targets=last.get("readTargets", [])
    )
    return Observed({}, routes)


def start(spec: ReadRouterSpec) -> None:
    config_file, pidfile, _, log = files(spec)
    if process.read_pid(pidfile) is not None:
        return
    pidfile.unlink(missing_ok=True)
    with log.open("a") as output:
        subprocess.Popen(
            # as the provider's own user: the virtualenv's interpreter may not be readable by the service user
            [sys.executable, "-c", DAEMON, str(config_file)],
            cwd=PROJECT_ROOT,
            env=process.server_environment({"PYTHONPATH": str(PROJECT_ROOT)}),  # no secret of the caller
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.wait_until(lambda: bool(status(spec).status.running), 30, f"the read router of {spec.pgbouncer_dir}")


def stop(spec: ReadRouterSpec) -> None:
    _, pidfile, _, _ = files(spec)
    if (pid := process.read_pid(pidfile)) is not None:
        process.terminate(pid, "read router")


def configure(spec: ReadRouterSpec) -> None:
    config_file, _, _, _ = files(spec)
    Path(spec.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    process.write_private_file(config_file, spec.model_dump_json(by_alias=True))


class ReadRouterKind(Kind[ReadRouterSpec, ReadRouterStatus]):
    token = TOKEN
    spec_type = ReadRouterSpec
    status_type = ReadRouterStatus

    def create(self, spec: ReadRouterSpec) -> tuple[str, Observed[ReadRouterStatus]]:
        configure(spec)
        run_once(spec)  # the slots are right before the first client, not one interval later
        start(spec)
        return files(spec)[0].as_posix(), status(spec)

    def observe(
        self, resource_id: str, spec: ReadRouterSpec, recorded: ReadRouterStatus | None = None
    ) -> Observed[ReadRouterStatus] | None:
        if not Path(resource_id).exists():
            return None
        return status(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: ReadRouterSpec) -> Observed[ReadRouterStatus]:
        stop(spec)
        configure(spec)
        run_once(spec)
        start(spec)
        return status(spec)

    def delete(self, resource_id: str, spec: ReadRouterSpec, recorded: ReadRouterStatus | None = None) -> None:
        stop(spec)
        process.remove_tree(Path(spec.state_dir))
