"""`thorbis:postgres.settings` checked before anything changes: no setting the stack sets itself, and every
value accepted by the PostgreSQL server binaries of this host, which judge it with their own catalog (name,
type, unit, range, enum values, whether it may be set at all) as they would at the server's next start."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from components.kind import ProviderError
from components.platform.local import process
from config.errors import Problem, show_value
from config.settings import NAMESPACE, StackSettings

#: Settings the stack sets itself and depends on (replication, archiving, pg_cron, where the server listens,
#: its own files): a value in thorbis:postgres.settings would break what the stack builds on them.
OWNED_GUCS = frozenset(
    {
        "shared_preload_libraries",
        "cron.database_name",
        "cron.use_background_workers",
        "max_worker_processes",
        "wal_level",
        "max_wal_senders",
        "max_replication_slots",
        "hot_standby",
        "password_encryption",
        "archive_mode",
        "archive_command",
        "restore_command",
        "listen_addresses",
        "unix_socket_directories",
        "primary_conninfo",
        "primary_slot_name",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        # with thorbis:ha, Patroni's own: which standbys are synchronous, the cluster's name, what pg_rewind needs
        "synchronous_standby_names",
        "cluster_name",
        "wal_log_hints",
    }
)
#: With Patroni's synchronous mode a commit is acknowledged once a standby has it (RPO 0); these values
#: acknowledge it before, so a failover would lose it.
RPO_BREAKING_COMMITS = frozenset({"off", "local"})
SERVER_SAYS = ("FATAL:", "ERROR:")
BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def guc_problems(settings: StackSettings) -> list[Problem]:
    """One problem per bad entry of thorbis:postgres.settings, named by its own key."""
    problems = []
    for name, value in settings.postgres.settings.items():
        reason = owned_reason(name) or rpo_reason(settings, name, value) or server_refusal(name, value)
        if reason is not None:
            problems.append(Problem(f"{NAMESPACE}:postgres.settings.{name}", show_value(value), reason))
    return problems


def owned_reason(name: str) -> str | None:
    if name not in OWNED_GUCS:
        return None
    return "is set by the stack itself (replication, archiving, pg_cron and its own files depend on it): remove it"


def rpo_reason(settings: StackSettings, name: str, value: str) -> str | None:
    synchronous = settings.ha.mode == "patroni" and settings.ha.synchronous
    if not synchronous or name != "synchronous_commit" or str(value).lower() not in RPO_BREAKING_COMMITS:
        return None
    return (
        f"acknowledges a commit before a standby has it, which {NAMESPACE}:ha.synchronous true promises: "
        "remove it, or use on, remote_write or remote_apply"
    )


def server_refusal(name: str, value: str) -> str | None:
    """What `postgres -C NAME -c NAME=VALUE` says against an empty configuration (the server parses the value
    as at a start and exits), or None when it takes it. Skipped where this host has no server binaries."""
    try:
        postgres = process.pg_tool("postgres")
    except ProviderError:
        return None
    with tempfile.TemporaryDirectory(prefix="thorbis-guc-") as scratch:
        (Path(scratch) / "postgresql.conf").touch()
        Path(scratch).chmod(0o755)
        argv = process.as_service_user([postgres, "-D", scratch, "-C", name, "-c", f"{name}={value}"])
        # nothing of the caller's environment (PG* variables, secrets); messages in English
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=BARE_ENV)
    said = [text for tag in (*SERVER_SAYS, "HINT:") for text in after(tag, done.stderr)]
    if said:
        return f"PostgreSQL refuses it: {' '.join(said)}"
    if done.returncode != 0:
        return f"PostgreSQL refuses it: {done.stderr.strip()[-300:] or f'exit {done.returncode}'}"
    return None


def after(tag: str, output: str) -> list[str]:
    return [line.split(tag, 1)[1].strip() for line in output.splitlines() if tag in line]
