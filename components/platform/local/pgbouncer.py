"""thorbisdb:local:PgBouncer — transaction pooling: the write pool `<db>` and the read pool `<db>_read`.

Application users are looked up with `auth_query` through a SECURITY DEFINER function, so no password
file of theirs exists on disk; `auth_file` holds PgBouncer's own auth user only. Server connections go
through slots (components/platform/local/slots.py) that the ReadRouter keeps pointed at healthy servers;
a slot that does not exist yet points at the primary. After every transaction a server connection of
either pool is reset (DISCARD ALL) before another client gets it: nothing a client set, created or holds
there outlives its transaction (README, "Security").
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field

from components.connection import LOOPBACK
from components.kind import Expect, Kind, Observed, ProviderError, Replace, Secret, Spec, Status
from components.platform.local import postgres_files as pg
from components.platform.local import process, slots

TOKEN = "thorbisdb:local:PgBouncer"
AUTH_ROLE = "pgbouncer_auth"
AUTH_SCHEMA = "pgbouncer"
PoolMode = Literal["transaction", "session"]
"""PgBouncer's pool_mode values we support (statement mode breaks transactions)."""
#: How PgBouncer looks up an application user's SCRAM verifier (through the function of auth_lookup_statements).
AUTH_QUERY = f"SELECT usename, passwd FROM {AUTH_SCHEMA}.get_auth($1)"
#: PgBouncer's admin console: the pseudo-database of SHOW POOLS and friends.
CONSOLE_DATABASE = "pgbouncer"
HEALTH_FUNCTION = "server_health"
"""What the read router asks every server: in recovery, streaming, and its WAL position."""

#: Spec fields that are PgBouncer settings, with their names in pgbouncer.ini / SHOW CONFIG.
POOL_SETTINGS = {
    "maxClientConn": "max_client_conn",
    "defaultPoolSize": "default_pool_size",
    "reservePoolSize": "reserve_pool_size",
    "reservePoolTimeout": "reserve_pool_timeout",
    "maxDbConnections": "max_db_connections",
    "minPoolSize": "min_pool_size",
    "serverLoginRetry": "server_login_retry",
    "poolMode": "pool_mode",
}
#: Spec fields that reset server connections, not in the stack's config: every platform resets alike.
RESET_SETTINGS = {
    "serverResetQuery": "server_reset_query",
    "serverResetQueryAlways": "server_reset_query_always",
}
#: What resets a server connection between clients: session settings and role (claims however set, SET
#: ROLE, search_path), temporary objects, prepared statements, cursors WITH HOLD, advisory locks, LISTEN.
RESET_QUERY = "DISCARD ALL"


class PgBouncerSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of pgbouncer.ini, userlist.txt, its log and pidfile.")
    port: int = Field(ge=1024, le=65535, description="Port PgBouncer listens on (127.0.0.1).")
    primary_port: int = Field(ge=1024, le=65535, description="Port of the primary on 127.0.0.1.")
    primary_socket_dir: str = Field(description="Socket directory of the primary, where new slots point.")
    read_slots: int = Field(default=1, ge=1, description="Slots of the read pool's host list (one per replica).")
    database: str = Field(description="The application database, where the auth lookup function lives.")
    superuser_password: Secret[str] = Field(min_length=1, description="Password of `postgres`, to install the lookup.")
    auth_password: Secret[str] = Field(min_length=1, description="Password of PgBouncer's auth user (secret).")
    max_client_conn: int = Field(default=1000, ge=1)
    default_pool_size: int = Field(default=25, ge=1)
    reserve_pool_size: int = Field(default=5, ge=0)
    reserve_pool_timeout: int = Field(default=3, ge=0)
    max_db_connections: int = Field(default=0, ge=0)
    min_pool_size: int = Field(default=0, ge=0)
    server_login_retry: int = Field(default=1, ge=0)
    pool_mode: PoolMode = "transaction"
    server_reset_query: str = Field(
        default=RESET_QUERY, description="Run on a server connection when a client releases it, before another."
    )
    server_reset_query_always: bool = Field(
        default=True, description="Reset in transaction pooling too: after every transaction (not only in session)."
    )


class PgBouncerStatus(Status):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="PgBouncer runs and its admin console answers (false: `up` starts it)."
    )


def shared_settings(values: Mapping[str, Any]) -> dict[str, str]:
    """pgbouncer.ini's settings of every platform: auth through the lookup function, and the pool settings
    from values under their camelCase names (this spec's or the config's)."""
    return {
        "auth_type": "scram-sha-256",
        "auth_user": AUTH_ROLE,
        "auth_query": AUTH_QUERY,
        "admin_users": AUTH_ROLE,
        "stats_users": AUTH_ROLE,
        "ignore_startup_parameters": "extra_float_digits",
        # idle server connections are reused oldest first, so a pool's work spreads over its hosts
        "server_round_robin": "1",
        **{name: str(values[key]) for key, name in POOL_SETTINGS.items()},
        **reset_settings(values),
    }


def reset_settings(values: Mapping[str, Any]) -> dict[str, str]:
    """After every transaction, in transaction pooling too: from the spec's fields, or their defaults
    (the stack's config has none: every platform resets alike)."""
    defaults = {field.alias: field.default for field in PgBouncerSpec.model_fields.values()}
    return {name: ini_value(values.get(key, defaults[key])) for key, name in RESET_SETTINGS.items()}


def files(spec: PgBouncerSpec) -> tuple[Path, Path, Path]:
    base = Path(spec.state_dir)
    return base / "pgbouncer.ini", base / "userlist.txt", base / "pgbouncer.pid"


def ini_value(value: object) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def live_value(value: str | None, wanted: object) -> object:
    """A value of SHOW CONFIG in the spec's type: a flag is "1" or "0", a number digits."""
    if value is None or isinstance(wanted, bool):
        return None if value is None else value == "1"
    return int(value) if value.isdigit() else value


def ini_text(spec: PgBouncerSpec) -> str:
    _, userlist, pidfile = files(spec)
    base = Path(spec.state_dir)
    settings = {
        "listen_addr": LOOPBACK,
        "listen_port": str(spec.port),
        "unix_socket_dir": str(base),
        "auth_file": str(userlist),
        "pidfile": str(pidfile),
        "logfile": str(base / "pgbouncer.log"),
        **shared_settings(spec.model_dump(by_alias=True)),
    }
    return "\n".join(
        [
            "; Managed by thorbis-db: edits are overwritten by the next `pulumi up`.",
            "[databases]",
            *slots.databases_lines(base, spec.database, spec.read_slots),
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in settings.items()),
            "",
        ]
    )


def userlist_text(spec: PgBouncerSpec) -> str:
    """auth_file with PgBouncer's own auth user only; a double quote inside a field is written twice."""
    password = spec.auth_password.replace('"', '""')
    return f'"{AUTH_ROLE}" "{password}"\n'


def auth_role_statement(verb: Literal["CREATE", "ALTER"], verifier: sql.Composable) -> sql.Composed:
    """PgBouncer's auth user, its password only ever as a SCRAM verifier (a literal here, a psql variable
    computed in the container by docker's init script)."""
    return sql.SQL("{} ROLE {} WITH LOGIN PASSWORD {}").format(sql.SQL(verb), sql.Identifier(AUTH_ROLE), verifier)


def auth_lookup_statements() -> list[sql.Composed]:
    """SECURITY DEFINER functions only the auth user may call: the lookup of non-superusers' verifiers, and
    the server's health for the read router."""
    ids = {
        "schema": sql.Identifier(AUTH_SCHEMA),
        "role": sql.Identifier(AUTH_ROLE),
        "health": sql.Identifier(HEALTH_FUNCTION),
    }
    return [
        sql.SQL(statement).format(**ids)
        for statement in (
            "CREATE SCHEMA IF NOT EXISTS {schema}",
            "REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            """CREATE OR REPLACE FUNCTION {schema}.get_auth(p_usename text)
               RETURNS TABLE (usename name, passwd text)
               LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
               AS $$ SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s
                     WHERE s.usename = p_usename AND NOT s.usesuper $$""",
            "REVOKE ALL ON FUNCTION {schema}.get_auth(text) FROM PUBLIC",
            "GRANT EXECUTE ON FUNCTION {schema}.get_auth(text) TO {role}",
            # the WAL receiver's status is for superusers and pg_read_all_stats only: this shows the read
            # router that one bit and nothing else of the server's statistics
            """CREATE OR REPLACE FUNCTION {schema}.{health}(
                   OUT in_recovery boolean, OUT streaming boolean, OUT wal_bytes numeric)
               LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
               AS $$ SELECT pg_catalog.pg_is_in_recovery(),
                            EXISTS (SELECT FROM pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming'),
                            pg_catalog.pg_wal_lsn_diff(
                                CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
                                     ELSE pg_catalog.pg_current_wal_lsn() END, '0/0') $$""",
            "REVOKE ALL ON FUNCTION {schema}.{health}() FROM PUBLIC",
            "GRANT EXECUTE ON FUNCTION {schema}.{health}() TO {role}",
        )
    ]


def install_auth_lookup(spec: PgBouncerSpec) -> None:
    """The auth role, and a SECURITY DEFINER lookup that only it may call, in the app database."""
    with pg.connect(spec.primary_port, spec.superuser_password, dbname=spec.database) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (AUTH_ROLE,)).fetchone()
        verifier = pg.password_verifier(conn, AUTH_ROLE, spec.auth_password)
        conn.execute(auth_role_statement("ALTER" if exists else "CREATE", verifier))
        for statement in auth_lookup_statements():
            conn.execute(statement)


def ensure_slots(spec: PgBouncerSpec) -> None:
    """Slots that do not exist yet point at the primary (the router moves them once it runs)."""
    base = Path(spec.state_dir)
    primary = slots.Server("primary", spec.primary_port, spec.primary_socket_dir, primary=True)
    for slot in slots.all_slots(spec.read_slots):
        if not slots.slot_link(base, slot).is_symlink():
            slots.point(base, slot, primary)


def console(port: int, auth_password: str, timeout: int = 5) -> psycopg.Connection:
    """PgBouncer's admin console speaks the simple query protocol only: a client-side cursor."""
    return psycopg.connect(
        host=LOOPBACK,
        port=port,
        dbname=CONSOLE_DATABASE,
        user=AUTH_ROLE,
        password=auth_password,
        autocommit=True,
        connect_timeout=timeout,
        cursor_factory=psycopg.ClientCursor,
        prepare_threshold=None,
    )


def admin_console(spec: PgBouncerSpec, port: int | None = None) -> psycopg.Connection:
    return console(port or spec.port, spec.auth_password)


def status(spec: PgBouncerSpec, port: int | None = None) -> Observed[PgBouncerStatus]:
    """Whether it runs and answers, and its port and pool settings as the admin console reports them."""
    _, _, pidfile = files(spec)
    if process.read_pid(pidfile) is None:
        return Observed({}, PgBouncerStatus(running=False))
    try:
        with admin_console(spec, port) as console:
            rows = console.execute("SHOW CONFIG").fetchall()
    except psycopg.Error:
        return Observed({}, PgBouncerStatus(running=False))
    live = {row[0]: row[1] for row in rows}
    wanted = spec.model_dump(by_alias=True)
    observed: dict[str, Any] = {"port": int(live.get("listen_port", spec.port))}
    observed |= {key: live_value(live.get(name), wanted[key]) for key, name in (POOL_SETTINGS | RESET_SETTINGS).items()}
    return Observed(observed, PgBouncerStatus(running=True))


def start(spec: PgBouncerSpec) -> None:
    ini, _, pidfile = files(spec)
    if process.read_pid(pidfile) is None:
        pidfile.unlink(missing_ok=True)
        process.run(process.as_service_user(["pgbouncer", "-d", "-q", str(ini)]), f"pgbouncer -d {ini}")
        # listening comes before the pidfile and the admin console: wait for all of them
        process.wait_until(lambda: bool(status(spec).status.running), 30, f"PgBouncer on port {spec.port}")


def stop(spec: PgBouncerSpec) -> None:
    _, _, pidfile = files(spec)
    if (pid := process.read_pid(pidfile)) is not None:
        process.terminate(pid, "PgBouncer")


class PgBouncerKind(Kind[PgBouncerSpec, PgBouncerStatus]):
    token = TOKEN
    spec_type = PgBouncerSpec
    status_type = PgBouncerStatus

    def create(self, spec: PgBouncerSpec) -> tuple[str, Observed[PgBouncerStatus]]:
        ini, userlist, _ = files(spec)
        process.make_private_dir(Path(spec.state_dir))
        install_auth_lookup(spec)
        ensure_slots(spec)
        process.write_private_file(userlist, userlist_text(spec))
        process.write_private_file(ini, ini_text(spec))
        start(spec)
        return str(ini), status(spec)

    def observe(
        self, resource_id: str, spec: PgBouncerSpec, recorded: PgBouncerStatus | None = None
    ) -> Observed[PgBouncerStatus] | None:
        if not Path(resource_id).exists():
            return None
        return status(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: PgBouncerSpec) -> Observed[PgBouncerStatus]:
        ini, userlist, pidfile = files(spec)
        install_auth_lookup(spec)
        ensure_slots(spec)
        process.write_private_file(userlist, userlist_text(spec))
        process.write_private_file(ini, ini_text(spec))
        pid = process.read_pid(pidfile)
        if pid is not None and int(old.get("port", spec.port)) != spec.port:
            stop(spec)  # listen_port takes a restart
        elif pid is not None:
            os.kill(pid, signal.SIGHUP)  # reload pgbouncer.ini, undoing SETs made by hand
            wanted = spec.model_dump(by_alias=True)
            process.wait_until(
                lambda: all(status(spec).inputs.get(key) == wanted[key] for key in POOL_SETTINGS),
                10,
                "PgBouncer reload",
            )
        start(spec)
        return status(spec)

    def delete(self, resource_id: str, spec: PgBouncerSpec, recorded: PgBouncerStatus | None = None) -> None:
        stop(spec)
        if process.port_open(spec.primary_port):
            try:
                with pg.connect(spec.primary_port, spec.superuser_password, dbname=spec.database) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(AUTH_SCHEMA)))
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(AUTH_ROLE)))
            except (ProviderError, psycopg.Error):
                pass  # the primary is going too; nothing of the pooler's is worth keeping
        process.remove_tree(Path(spec.state_dir))
