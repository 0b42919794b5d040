"""`scripts/backup STACK [--type full|incr|diff]`: a pgBackRest base backup of the stack's primary, then a
schema-only `pg_dump` beside it as a second line of defence (readable without pgBackRest).

Meant to run from the OS's cron or a systemd timer at thorbis:backup.schedule, as root (pgBackRest and
pg_dump run as the postgres OS user). Exit 0 when both were written, 2 when the stack's setup stops it
(backups off, directory missing or not writable, the stack never brought up), 1 when a command failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from components.kind import ProviderError
from components.platform.local import pgbackrest, process
from config import ConfigError
from recovery.stack import OpenStack, OperationError, open_stack


@dataclass(frozen=True)
class BackupResult:
    stack: str
    label: str
    type: str
    seconds: float
    repository: str
    schema_dump: str
    backups_kept: int


def schema_dump_dir(opened: OpenStack) -> Path:
    return opened.repository.schema_dumps


def take_backup(opened: OpenStack, backup_type: str = "full") -> BackupResult:
    """A base backup (WAL archiving must already work: pgBackRest checks it) and a schema-only dump."""
    repo = opened.repository
    pgbackrest.prepare_directory(repo)
    if not repo.config_file.exists():
        raise OperationError(
            f"stack '{opened.settings.stack}': {repo.config_file} is missing; "
            f"run `pulumi up -s {opened.settings.stack}` first (it sets up the repository)"
        )
    started = time.monotonic()
    pgbackrest.run(repo, "backup", f"--type={backup_type}", timeout=6 * 3600)
    taken = pgbackrest.backups(pgbackrest.info(repo))
    if not taken:
        raise OperationError(f"pgbackrest reported no backup of stanza {repo.stanza} after `backup`")
    dump = dump_schema(opened)
    prune_schema_dumps(opened, oldest_kept=int(taken[0]["timestamp"]["start"]))
    return BackupResult(
        stack=opened.settings.stack,
        label=str(taken[-1]["label"]),
        type=str(taken[-1]["type"]),
        seconds=round(time.monotonic() - started, 1),
        repository=repo.path,
        schema_dump=str(dump),
        backups_kept=len(taken),
    )


def dump_schema(opened: OpenStack) -> Path:
    """pg_dump --schema-only of the application database, named by the time it was taken."""
    directory = schema_dump_dir(opened)
    process.make_private_dir(directory)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"{opened.connection.database}-schema-{stamp}.sql"
    primary = opened.connection.primary
    process.run(
        process.as_service_user(
            [
                "env",
                f"PGPASSFILE={opened.repository.passfile}",
                process.pg_tool("pg_dump"),
                f"--host={primary.host}",
                f"--port={primary.port}",
                f"--username={opened.connection.admin_user}",
                f"--dbname={opened.connection.database}",
                "--schema-only",
                "--no-password",
                f"--file={target}",
            ]
        ),
        f"pg_dump --schema-only of {opened.connection.database}",
        timeout=600,
    )
    return target


def prune_schema_dumps(opened: OpenStack, oldest_kept: int) -> None:
    """Schema dumps older than the oldest base backup pgBackRest keeps go with it (same retention)."""
    for dump in schema_dump_dir(opened).glob("*-schema-*.sql"):
        if dump.stat().st_mtime < oldest_kept:
            dump.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/backup", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("stack", help="the Pulumi stack, e.g. dev")
    parser.add_argument("--type", choices=("full", "incr", "diff"), default="full", help="default: full")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--work-dir", type=Path, help="the project directory (default: this clone)")
    args = parser.parse_args(argv)
    try:
        opened = open_stack(args.stack, args.work_dir)
        result = take_backup(opened, args.type)
    except (OperationError, ConfigError) as error:
        print(f"backup: {error}", file=sys.stderr)
        return 2
    except ProviderError as error:
        print(f"backup: {error}", file=sys.stderr)
        return 2 if pgbackrest.DIRECTORY_KEY in str(error) else 1
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(
            f"stack '{result.stack}': {result.type} backup {result.label} in {result.seconds} s "
            f"({result.backups_kept} kept in {result.repository})\n  schema dump: {result.schema_dump}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
