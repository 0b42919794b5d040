"""pgBackRest on this host: one repository per stack, its config file, and its commands run as `postgres`.

pgBackRest does the work no library does for us (parallel, checksummed base backups, WAL archive with
retention, restore to a point in time); here we only write its config and run it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from pydantic import Field

from components.kind import ProviderError, Spec, Status
from components.platform.local import postgres_files as pg
from components.platform.local import process

DIRECTORY_KEY = "thorbis:backup.directory"
PGBACKREST = "pgbackrest"
SCHEMA_DUMPS = "logical"  # <repository>/logical/<stanza>/: the schema-only pg_dumps of scripts/backup


class Repository(Spec):
    """Where one stack's backups and WAL archive go, and how pgBackRest is set up to reach its primary."""

    path: str = Field(description="repo1-path: the repository directory (thorbis:backup.directory).")
    stanza: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The stanza: the stack's name.")
    config_dir: str = Field(description="pgbackrest.conf, the password file, logs, locks and the spool.")
    retention_full: int = Field(default=2, ge=1, description="Full backups kept.")
    process_max: int = Field(default=2, ge=1, le=16, description="Parallel processes of backup and restore.")
    create_path: bool = Field(default=True, description="Make the repository directory when it is missing.")
    restore_on_provision: bool = Field(
        default=True, description="Restore the latest backup when the primary's data directory is missing."
    )

    @property
    def config_file(self) -> Path:
        return Path(self.config_dir) / "pgbackrest.conf"

    @property
    def schema_dumps(self) -> Path:
        return Path(self.path) / SCHEMA_DUMPS / self.stanza

    @property
    def passfile(self) -> Path:
        return Path(self.config_dir) / "pgpass"


def archive_command(repo: Repository) -> str:
    """The primary's archive_command: push each finished WAL segment into the repository."""
    return f"{PGBACKREST} --config-path={shlex.quote(repo.config_dir)} --stanza={repo.stanza} archive-push %p"


def config_text(repo: Repository, server: pg.ServerDir, port: int) -> str:
    config_dir = Path(repo.config_dir)
    lines = [
        "# Managed by thorbis-db: edits are overwritten by the next `pulumi up`.",
        "[global]",
        f"repo1-path={repo.path}",
        f"repo1-retention-full={repo.retention_full}",
        f"process-max={repo.process_max}",
        "compress-type=lz4",
        "start-fast=y",
        "archive-timeout=60",
        "log-level-console=warn",
        "log-level-file=info",
        f"log-path={config_dir / 'log'}",
        f"lock-path={config_dir / 'lock'}",
        f"spool-path={config_dir / 'spool'}",
        "",
        f"[{repo.stanza}]",
        f"pg1-path={server.data}",
        f"pg1-port={port}",
        f"pg1-socket-path={server.socket_dir}",
        "pg1-user=postgres",
    ]
    return "\n".join(lines) + "\n"


def write_files(repo: Repository, server: pg.ServerDir, port: int, superuser_password: str) -> bool:
    """pgbackrest.conf and the password file its connections use (pg_hba.conf takes passwords only)."""
    for directory in ("", "log", "lock", "spool"):
        process.make_private_dir(Path(repo.config_dir) / directory)
    changed = process.write_private_file(repo.config_file, config_text(repo, server, port))
    escaped = superuser_password.replace("\\", "\\\\").replace(":", "\\:")
    # host `*`: pgBackRest connects through the socket directory, which a host field would have to spell out
    changed |= process.write_private_file(repo.passfile, f"*:{port}:*:postgres:{escaped}\n")
    return changed


def directory_problem(repo: Repository) -> str | None:
    """What is wrong with the repository directory for the postgres OS user, or None."""
    path = Path(repo.path)
    if not path.is_absolute():
        return f"{path} is not an absolute path; set {DIRECTORY_KEY} to an absolute directory"
    if not path.exists():
        if repo.create_path:
            return None
        return (
            f"the backup directory {path} does not exist (a backup volume not mounted?); create it, owned by the "
            f"postgres OS user, or set {DIRECTORY_KEY} to an existing directory"
        )
    if not path.is_dir():
        return f"{path} is not a directory; set {DIRECTORY_KEY} to a directory"
    if not writable_by_service_user(path):
        return (
            f"the backup directory {path} is not writable by the {process.SERVICE_USER} OS user; "
            f"`chown {process.SERVICE_USER} {path}` or set {DIRECTORY_KEY} to a directory it can write"
        )
    return None


def writable_by_service_user(path: Path) -> bool:
    if not process.running_as_root():
        return os.access(path, os.W_OK | os.X_OK)
    result = subprocess.run(
        process.as_service_user(["test", "-w", str(path), "-a", "-x", str(path)]), check=False, capture_output=True
    )
    return result.returncode == 0


def prepare_directory(repo: Repository) -> None:
    """Check the repository directory (making the stack's default one); raise naming thorbis:backup.directory."""
    if repo.create_path:
        process.make_private_dir(Path(repo.path))
    problem = directory_problem(repo)
    if problem:
        raise ProviderError(problem)


def command(repo: Repository, *args: str) -> list[str]:
    """A pgbackrest command line, as the postgres OS user, with our config and password file."""
    return process.as_service_user(
        [
            "env",
            f"PGPASSFILE={repo.passfile}",
            PGBACKREST,
            f"--config-path={repo.config_dir}",
            f"--stanza={repo.stanza}",
            *args,
        ]
    )


def run(repo: Repository, *args: str, timeout: float = 600) -> str:
    what = f"pgbackrest {args[0] if args else ''} of stanza {repo.stanza} (repository {repo.path})"
    return process.run(command(repo, *args), what, timeout=timeout).stdout


def info(repo: Repository) -> dict[str, Any] | None:
    """`pgbackrest info` of the stanza, or None when the repository or its config does not exist."""
    if not repo.config_file.exists() or not Path(repo.path).is_dir():
        return None
    result = subprocess.run(
        command(repo, "info", "--output=json"), check=False, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        return None
    stanzas = json.loads(result.stdout or "[]")
    return next((stanza for stanza in stanzas if stanza.get("name") == repo.stanza), None)


def stanza_ok(stanza_info: dict[str, Any] | None) -> bool:
    return bool(stanza_info) and (stanza_info or {}).get("status", {}).get("code") in (0, 2)  # 2: no backup yet


def backups(stanza_info: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((stanza_info or {}).get("backup") or [])


def has_backup(repo: Repository) -> bool:
    return bool(backups(info(repo)))


def pitr_time(moment: datetime) -> str:
    """A recovery target as pgBackRest takes it: YYYY-MM-DD HH:MM:SS.mmm+00 (in UTC, truncated to the
    millisecond: a commit in the same millisecond before `moment` may be left out)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+00"


def archive_get_command(repo: Repository, server: pg.ServerDir) -> str:
    """The restore_command of a server restored into `server`: its WAL from the repository. pgBackRest would
    name the directory it restored into, which is the temporary one the build was made in."""
    return (
        f"{PGBACKREST} --config-path={shlex.quote(repo.config_dir)} --pg1-path={shlex.quote(str(server.data))} "
        f'--stanza={repo.stanza} archive-get %f "%p"'
    )


def restore(
    repo: Repository,
    server: pg.ServerDir,
    *,
    target_time: datetime | None = None,
    archive: bool = True,
) -> None:
    """Restore the latest backup into `server` (which must not be initialised) and leave recovery set up:
    to the end of the archived WAL, or to `target_time` and then promote. `archive=False` keeps a copy
    from archiving into the stack's repository (a restore made beside the primary, for inspection). The
    restore is built aside and moved into place when pgBackRest has finished."""
    if server.initialised():
        raise ProviderError(f"refusing to restore into {server.data}: it already holds a data directory")
    process.make_private_dir(server.socket_dir)
    options = ["--type=default", f"--recovery-option=restore_command={archive_get_command(repo, server)}"]
    if target_time is not None:
        options[:1] = ["--type=time", f"--target={pitr_time(target_time)}", "--target-action=promote"]
    if not archive:
        options.append("--archive-mode=off")
    with pg.built_aside(server) as target:
        run(repo, "restore", f"--pg1-path={target}", *options, timeout=3600)


def archive_end(repo: Repository) -> str | None:
    """The newest WAL segment in the repository's archive (any timeline), or None when it holds none."""
    archives = (info(repo) or {}).get("archive") or []
    ends = [str(archive["max"]) for archive in archives if archive.get("max")]
    return max(ends) if ends else None


def segment_number(segment: str, segment_size: int) -> int:
    """The position of a WAL segment file (TTTTTTTTXXXXXXXXYYYYYYYY) in the WAL, whatever its timeline."""
    return int(segment[8:16], 16) * (0x1_0000_0000 // segment_size) + int(segment[16:24], 16)


def lsn_number(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class Replayed(Status):
    """Where a restored server's recovery ended, against the WAL the repository held when it began."""

    backup: str = Field(description="Label of the backup restored.")
    lsn: str = Field(description="The last WAL position replayed (pg_last_wal_replay_lsn).")
    last_commit: str | None = Field(default=None, description="Commit time of the last transaction replayed.")
    archive_end: str | None = Field(default=None, description="The newest WAL segment in the repository.")
    segments_not_replayed: int = Field(default=0, description="Archived segments after the replayed point.")

    def describe(self, data: Path, archive_timeout: str | None) -> str:
        missing = (
            f"{self.segments_not_replayed} archived segment(s) after it could not be replayed (a gap in the "
            "archive: see pgbackrest's log)"
            if self.segments_not_replayed
            else "every archived segment was replayed"
        )
        unarchived = (
            f"at most the last {archive_timeout} before the disaster (archive_timeout)"
            if archive_timeout
            else "unbounded: archive_timeout is off"
        )
        return (
            f"restored {data} from backup {self.backup} and replayed the archived WAL to {self.lsn} (last "
            f"transaction committed {self.last_commit or 'before the backup'}); the archive ends in segment "
            f"{self.archive_end}: {missing}. What the lost primary wrote after its last archived segment was "
            f"never in the repository and is lost: {unarchived}"
        )


def replayed(conn: psycopg.Connection[Any], backup: str, end: str | None) -> Replayed:
    """What a promoted server replayed (pg_last_wal_replay_lsn stays at the end of its recovery)."""
    row = conn.execute(
        "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
        "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
    ).fetchone()
    lsn, last_commit, segment_size = row if row else (None, None, 16 * 1024 * 1024)
    return Replayed(
        backup=backup,
        lsn=str(lsn),
        last_commit=last_commit.isoformat() if last_commit else None,
        archive_end=end,
        segments_not_replayed=segments_after(end, lsn, segment_size),
    )


def segments_after(end: str | None, lsn: str | None, segment_size: int) -> int:
    """How many archived segments lie wholly after the WAL position `lsn`: none when replay reached the
    archive's end (it stops inside the last segment, or at the start of the one after it)."""
    if end is None or lsn is None:
        return 0
    return max(0, segment_number(end, segment_size) - lsn_number(lsn) // segment_size)
