"""A PostgreSQL data directory on this host: its layout, configuration files and pg_ctl."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import psycopg
from psycopg import sql
from pydantic import Field

from components import engine_log
from components.connection import LOOPBACK
from components.kind import Expect, ProviderError, Status
from components.platform.local import process
from components.scram import is_verifier_of, scram_verifier

#: The superuser initdb makes (and the official image's), which the platform's admin connection logs in as.
SUPERUSER = "postgres"
#: The role replicas stream as.
REPLICATION_ROLE = "replicator"
MANAGED_CONF = "thorbis.conf"
HBA = f"""# Managed by thorbis-db. Passwords only (SCRAM), loopback only.
local   all          all                          scram-sha-256
host    all          all          {LOOPBACK}/32    scram-sha-256
host    replication  {REPLICATION_ROLE}   {LOOPBACK}/32    scram-sha-256
"""


@dataclass(frozen=True)
class ServerDir:
    """Where one server keeps its files: <base>/data, <base>/run (socket), <base>/postgres.log."""

    base: Path

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "run"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    @property
    def building(self) -> Path:
        """Where this process builds the data directory (same filesystem) before moving it into place."""
        return self.base / f"{self.data.name}{BUILDING}{os.getpid()}"

    def initialised(self) -> bool:
        return whole_cluster(self.data)

    def postmaster_pid(self) -> int | None:
        return process.read_pid(self.data / "postmaster.pid")


BUILDING = ".building-"  # data.building-<pid>: a build in progress, or the remains of one a kill interrupted
SET_ASIDE = ".incomplete-"  # data.incomplete-<UTC time>: a data directory that was not a whole cluster
#: Where the code before built-aside directories kept the superuser password during initdb; found, it
#: means that initdb was killed and the data directory beside it is half-made.
LEGACY_PASSWORD_FILE = ".initdb-password"


def whole_cluster(data: Path) -> bool:
    """Whether `data` holds a complete cluster. A data directory is moved into place only once its build
    finished (built_aside); for one made otherwise, pg_control is what initdb's bootstrap, pg_basebackup
    and pgBackRest's restore write last but one, last and last: PG_VERSION alone comes first."""
    return (data / "PG_VERSION").is_file() and (data / "global" / "pg_control").is_file()


@contextmanager
def built_aside(server: ServerDir) -> Iterator[Path]:
    """An empty directory beside `server.data` to build a cluster in (initdb, pg_basebackup, a restore),
    renamed into place when the block ends without error: a kill at any moment leaves either no data
    directory or a whole one, and the build's remains under a name `clear_half_made` recognises."""
    target = server.building
    process.make_private_dir(server.base)
    discard_build(target)
    process.make_private_dir(target)
    try:
        yield target
    except BaseException:
        discard_build(target)
        raise
    target.rename(server.data)  # fails rather than replace a data directory that appeared meanwhile
    process.sync_directory(server.base)


def working_in(directory: Path) -> list[int]:
    """Processes whose working directory is in `directory` or whose arguments name it (initdb and its
    single-user postgres, pg_basebackup, pgBackRest's restore and its workers)."""
    paths = {str(directory), os.path.realpath(directory)}
    return [
        found.pid
        for found in process.live_processes()
        if found.pid != os.getpid()
        and (
            any(found.cwd == path or found.cwd.startswith(path + "/") for path in paths)
            or any(names_path(arg, path) for arg in found.argv for path in paths)
        )
    ]


def names_path(argument: str, path: str) -> bool:
    return argument == path or argument.endswith("=" + path) or path + "/" in argument


def stop_working_in(directory: Path) -> list[int]:
    """Kill what still works in a directory being discarded or set aside (it is ours: named by us)."""
    pids = working_in(directory)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    process.wait_until(lambda: not working_in(directory), 30, f"the processes working in {directory} to exit")
    return pids


def discard_build(target: Path) -> list[int]:
    """Remove an unfinished build: nothing ever ran on it, so it holds no row of its own, only what it was
    being made from (nothing, the primary, the backup repository), and keeping it could fill the disk the
    next build needs. Returns the processes that were still working in it."""
    if not target.exists():
        return []
    stopped = stop_working_in(target)
    process.remove_tree(target)
    return stopped


def clear_half_made(server: ServerDir) -> list[str]:
    """Before a server directory is built: remove the remains of builds a kill interrupted, and set aside
    (rename and keep: it may hold data) a data directory that is not a whole cluster. Says each act."""
    done = remove_interrupted_builds(server)
    legacy = server.base / LEGACY_PASSWORD_FILE
    interrupted_initdb = legacy.exists()
    if interrupted_initdb:
        legacy.unlink()
        done.append(f"removed {legacy}, the superuser password an interrupted initdb left")
    if server.data.exists() and (interrupted_initdb or not whole_cluster(server.data)):
        done.append(set_aside(server))
    for line in done:
        engine_log.warn(line)
    return done


def remove_interrupted_builds(server: ServerDir) -> list[str]:
    done = []
    for leftover in sorted(server.base.glob(f"{server.data.name}{BUILDING}*")):
        if leftover != server.building:
            stopped = discard_build(leftover)
            still = f", stopping {len(stopped)} process(es) still working in it" if stopped else ""
            done.append(f"removed {leftover}, the remains of a build that was interrupted{still}")
    return done


def set_aside(server: ServerDir) -> str:
    stopped = stop_working_in(server.data)
    aside = server.base / f"{server.data.name}{SET_ASIDE}{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    server.data.rename(aside)
    running = f"; stopped {len(stopped)} process(es) running on it" if stopped else ""
    return (
        f"set aside {server.data} as {aside.name}: it is not a whole cluster (an interrupted initdb, base "
        f"backup or restore){running}; it is kept: remove it once you know it holds nothing you need"
    )


def conf_value(value: str) -> str:
    """A value as postgresql.conf wants it: numbers bare, everything else single-quoted."""
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("'", "''") + "'"


def write_config(server: ServerDir, settings: dict[str, str]) -> bool:
    """Write our settings file and pg_hba.conf; return whether anything changed."""
    lines = ["# Managed by thorbis-db: edits are overwritten by the next `pulumi up`."]
    lines += [f"{name} = {conf_value(value)}" for name, value in sorted(settings.items())]
    changed = process.write_private_file(server.data / MANAGED_CONF, "\n".join(lines) + "\n")
    changed |= process.write_private_file(server.data / "pg_hba.conf", HBA)
    main_conf = server.data / "postgresql.conf"
    include = f"include_if_exists = '{MANAGED_CONF}'\n"
    if include not in main_conf.read_text():
        with main_conf.open("a") as conf:
            conf.write(include)
        changed = True
    return changed


def initdb(server: ServerDir, superuser_password: str) -> None:
    """A new cluster with data checksums and SCRAM; the password's verifier reaches initdb through a pipe."""
    process.make_private_dir(server.socket_dir)
    with built_aside(server) as target:
        process.run(
            process.as_service_user(
                [
                    process.pg_tool("initdb"),
                    "--pgdata",
                    str(target),
                    "--data-checksums",
                    "--auth=scram-sha-256",
                    f"--username={SUPERUSER}",
                    "--pwfile=/dev/stdin",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            f"initdb of {server.data}",
            # initdb stores a verifier as given: the password itself never reaches initdb
            secret_input=scram_verifier(superuser_password) + "\n",
        )


def pg_ctl(server: ServerDir, action: str, *options: str, timeout: float = 120) -> None:
    argv = [
        process.pg_tool("pg_ctl"),
        action,
        "-D",
        str(server.data),
        "-w",
        "-t",
        str(int(timeout)),
        *options,
    ]
    if action in ("start", "restart"):
        argv += ["-l", str(server.log)]
    process.run(process.as_service_user(argv), f"pg_ctl {action} of {server.data}", timeout=timeout + 30)


def lingering_pids(server: ServerDir) -> list[int]:
    """Processes of a postmaster that died: itself until it is reaped, and its backends (their cwd is the
    data directory). PostgreSQL will not start while its socket lock names a pid that still exists."""
    try:
        dead_postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        dead_postmaster = None
    data = os.path.realpath(server.data)
    return [
        found.pid
        for found in process.live_processes()
        if (found.pid == dead_postmaster and found.name == "postgres") or found.cwd == data
    ]


def start(server: ServerDir) -> None:
    if server.postmaster_pid() is None:
        process.wait_until(
            lambda: not lingering_pids(server), 30, f"the processes a crashed PostgreSQL left in {server.data} to exit"
        )
        (server.data / "postmaster.pid").unlink(missing_ok=True)  # left by a crash
        process.make_private_dir(server.socket_dir)
        pg_ctl(server, "start")


def in_archive_recovery(server: ServerDir) -> bool:
    """A restored cluster that has not finished replaying the archive (PostgreSQL removes the signal file
    when it promotes itself)."""
    return (server.data / "recovery.signal").exists()


def stop(server: ServerDir) -> None:
    if server.postmaster_pid() is not None:
        pg_ctl(server, "stop", "-m", "fast")


def password_verifier(conn: psycopg.Connection, role: str, password: str) -> sql.Literal:
    """The role's password as a SCRAM verifier computed here (never the text: the server's log and
    pg_stat_statements keep statements): the one the server holds when it is this password's, else new."""
    stored = conn.execute("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s", (role,)).fetchone()
    if stored is not None and is_verifier_of(stored[0], password):
        return sql.Literal(stored[0])
    return sql.Literal(scram_verifier(password))


def connect(port: int, password: str, dbname: str = "postgres", user: str = SUPERUSER) -> psycopg.Connection:
    try:
        return psycopg.connect(
            host=LOOPBACK,
            port=port,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=5,
            autocommit=True,
        )
    except psycopg.OperationalError as error:
        raise ProviderError(f"cannot connect to PostgreSQL on {LOOPBACK}:{port} as {user}: {error}") from error


def answering(port: int, password: str) -> bool:
    try:
        with connect(port, password) as conn:
            conn.execute("SELECT 1")
        return True
    except ProviderError:
        return False


_UNIT = re.compile(r"^\s*(-?\d+)\s*(B|kB|MB|GB|TB|us|ms|s|min|h|d)?\s*$")
_FACTORS = {
    "B": 1 / 1024,
    "kB": 1,
    "MB": 1024,
    "GB": 1024**2,
    "TB": 1024**3,
    "us": 0.001,
    "ms": 1,
    "s": 1000,
    "min": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}


def normalised(value: str) -> str:
    """A setting in one canonical form, so '1GB' and '1024MB' compare equal."""
    match = _UNIT.match(value)
    if match and match.group(2):
        return repr(int(match.group(1)) * _FACTORS[match.group(2)])
    return value.strip().strip("'").lower()


def live_settings(conn: psycopg.Connection, wanted: dict[str, str]) -> dict[str, str]:
    """The server's values of the settings we manage, reported as the wanted text where equivalent."""
    live: dict[str, str] = {}
    for name, value in wanted.items():
        row = conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()
        current = "" if row is None or row[0] is None else str(row[0])
        live[name] = value if normalised(current) == normalised(value) else current
    return live


class ServerFilesStatus(Status):
    """What a server's files say that its settings do not: pg_hba.conf and postgresql.auto.conf."""

    pg_hba: Annotated[list[str] | None, Expect([])] = Field(
        default=None,
        description="pg_hba.conf rules that are not the stack's (`+ rule` added by hand, `- rule` removed); "
        "`up` writes the file back and reloads.",
    )
    altered_system: Annotated[list[str] | None, Expect([])] = Field(
        default=None,
        description="Settings set with ALTER SYSTEM that the stack does not declare (`name = value`); `up` "
        "resets them.",
    )


#: What pgBackRest's restore writes into postgresql.auto.conf (and a promoted server no longer reads).
RESTORE_WRITES = ("restore_command", "recovery_target")


def hba_differences(server: ServerDir) -> list[str]:
    """pg_hba.conf's rules that are not the stack's (`+ line`, added by hand) and the stack's that are
    missing (`- line`), spaces collapsed; [] when it is as written."""
    ours, found = hba_rules(HBA), hba_rules(file_text(server.data / "pg_hba.conf"))
    return [f"+ {rule}" for rule in found if rule not in ours] + [f"- {rule}" for rule in ours if rule not in found]


def hba_rules(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].split() for line in text.splitlines())
    return [" ".join(words) for words in lines if words]


def file_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def undeclared_overrides(conn: psycopg.Connection, managed: Iterable[str]) -> list[str]:
    """`name = value` of the settings set with ALTER SYSTEM (postgresql.auto.conf) that the stack does not
    manage (those it manages show as their own drift)."""
    rows = conn.execute(
        "SELECT name, setting FROM pg_file_settings WHERE sourcefile = current_setting('data_directory') || "
        "'/postgresql.auto.conf' ORDER BY seqno"
    ).fetchall()
    skipped = {*managed}
    return [
        f"{name} = {setting}"
        for name, setting in rows
        if name not in skipped and not str(name).startswith(RESTORE_WRITES)
    ]


def reset_overrides(conn: psycopg.Connection, names: list[str]) -> None:
    """Undo ALTER SYSTEM made by hand for settings we manage (postgresql.auto.conf wins over ours)."""
    for name in names:
        conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))


def apply_settings(conn: psycopg.Connection, server: ServerDir) -> None:
    """Reload; restart when a changed setting needs it (port, shared_buffers, ...)."""
    conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)  # backends take the reloaded file at their next command, pending_restart with it
    pending = conn.execute("SELECT count(*) FROM pg_settings WHERE pending_restart").fetchone()
    if pending and pending[0]:
        conn.close()
        pg_ctl(server, "restart", "-m", "fast")
