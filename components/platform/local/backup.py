"""thorbisdb:local:BackupRepository — the primary's pgBackRest stanza: WAL archive and base backups.

Create and update write pgBackRest's config, create the stanza (idempotent) and run `check`, which
switches WAL and waits until the segment is in the repository. `observe` reports the stanza, the last
backup and whether archiving works, so `refresh` shows a broken archive as drift. Delete keeps every
backup unless the stack allows data loss. Backups themselves are taken by `scripts/backup`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psycopg
from pydantic import Field

from components.kind import Expect, Kind, Observed, ProviderError, Replace, Secret, Spec, Status
from components.platform.local import pgbackrest, process
from components.platform.local import postgres_files as pg
from components.platform.local.pgbackrest import Repository

TOKEN = "thorbisdb:local:BackupRepository"


class NodeHost(Spec):
    state_dir: str = Field(description="State directory of the node (its data/ and run/).")
    port: int = Field(ge=1024, le=65535, description="Port of its PostgreSQL on 127.0.0.1.")


class BackupRepositorySpec(Spec):
    repository: Repository = Field(description="The pgBackRest repository and stanza of the stack.")
    primary_state_dir: Replace[str] = Field(description="State directory of the primary (its data/ and run/).")
    port: int = Field(ge=1024, le=65535, description="Port of the primary on 127.0.0.1 (with ha: the write endpoint).")
    nodes: list[NodeHost] = Field(
        default_factory=list,
        description="With ha: every Patroni node, all in the stanza (pgBackRest backs up whichever is the "
        "primary), in place of primary_state_dir.",
    )
    superuser_password: Secret[str] = Field(min_length=1, description="Password of `postgres` (secret).")
    allow_data_loss: bool = Field(default=False, description="Whether delete may remove the backups.")


class BackupStatus(Status):
    stanza_ok: Annotated[bool | None, Expect(True)] = Field(default=None, description="pgBackRest's stanza is ok.")
    config_written: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="pgBackRest's config file exists."
    )
    archive_ok: Annotated[bool | None, Expect(True)] = Field(
        default=None,
        description="archive_mode is on and no archiving failed after the last success; None while the primary "
        "is down (unknown, not drift).",
    )
    last_archived_wal: str | None = Field(default=None, description="The last WAL segment archived.")
    last_backup: str | None = Field(default=None, description="Label of the newest backup.")
    last_backup_at: str | None = Field(default=None, description="When the newest backup stopped (ISO 8601).")
    backups: int | None = Field(default=None, description="How many backups the repository holds.")


def hosts(spec: BackupRepositorySpec) -> list[pgbackrest.PgHost]:
    if spec.nodes:
        return [(pg.ServerDir(Path(node.state_dir)), node.port) for node in spec.nodes]
    return [(pg.ServerDir(Path(spec.primary_state_dir)), spec.port)]


def archiver_status(spec: BackupRepositorySpec) -> BackupStatus:
    """pg_stat_archiver of a running primary: archiving works when no failure came after the last success."""
    if not pg.answering(spec.port, spec.superuser_password):
        return BackupStatus(archive_ok=None, last_archived_wal=None)  # unknown while the primary is down: not drift
    with pg.connect(spec.port, spec.superuser_password) as conn:
        row = conn.execute(
            "SELECT last_archived_wal, last_archived_time, last_failed_time FROM pg_stat_archiver"
        ).fetchone()
        mode = conn.execute("SHOW archive_mode").fetchone()
    archived_wal, archived_at, failed_at = row if row else (None, None, None)
    on = bool(mode and mode[0] != "off")
    return BackupStatus(archive_ok=on and not archive_failing(archived_at, failed_at), last_archived_wal=archived_wal)


def archive_failing(archived_at: datetime | None, failed_at: datetime | None) -> bool:
    """pg_stat_archiver's times: an attempt failed and none has succeeded since."""
    return failed_at is not None and (archived_at is None or failed_at > archived_at)


def backup_status(repo: Repository) -> BackupStatus:
    stanza = pgbackrest.info(repo)
    taken = pgbackrest.backups(stanza)
    last = taken[-1] if taken else None
    stopped = (last or {}).get("timestamp", {}).get("stop")
    return BackupStatus(
        stanza_ok=pgbackrest.stanza_ok(stanza),
        config_written=repo.config_file.exists(),
        last_backup=last["label"] if last else None,
        last_backup_at=datetime.fromtimestamp(stopped, UTC).isoformat() if stopped else None,
        backups=len(taken),
    )


def combined(*parts: BackupStatus) -> BackupStatus:
    """The fields each part set, merged."""
    return BackupStatus.model_validate({key: value for part in parts for key, value in part.wire().items()})


class BackupRepositoryKind(Kind[BackupRepositorySpec, BackupStatus]):
    token = TOKEN
    spec_type = BackupRepositorySpec
    status_type = BackupStatus
    delete_before_replace = False  # a new repository beside the old one: the old backups stay until it works

    def create(self, spec: BackupRepositorySpec) -> tuple[str, BackupStatus]:
        return f"{spec.repository.path}#{spec.repository.stanza}", self.apply(spec)

    def apply(self, spec: BackupRepositorySpec) -> BackupStatus:
        repo = spec.repository
        pgbackrest.prepare_directory(repo)  # before anything is written: the error names the config key
        pgbackrest.write_files(repo, hosts(spec), spec.superuser_password, also_ports=[spec.port])
        pgbackrest.run(repo, "start")  # undo a `stop` left by an earlier delete of the stanza
        try:
            pgbackrest.run(repo, "stanza-create")
            pgbackrest.run(repo, "check", timeout=180)
        except ProviderError as error:
            problem = pgbackrest.directory_problem(repo)
            raise ProviderError(problem or f"{error}; see {Path(repo.config_dir) / 'log'}") from error
        return self.observed(spec)

    def observed(self, spec: BackupRepositorySpec) -> BackupStatus:
        return combined(backup_status(spec.repository), archiver_status(spec))

    def observe(
        self, resource_id: str, spec: BackupRepositorySpec, recorded: BackupStatus | None = None
    ) -> Observed[BackupStatus] | None:
        try:
            return Observed({}, self.observed(spec))
        except (ProviderError, psycopg.Error):
            unknown = BackupStatus(archive_ok=None, last_archived_wal=None)
            return Observed({}, combined(backup_status(spec.repository), unknown))

    def update(self, resource_id: str, old: dict[str, Any], spec: BackupRepositorySpec) -> BackupStatus:
        return self.apply(spec)

    def delete(self, resource_id: str, spec: BackupRepositorySpec, recorded: BackupStatus | None = None) -> None:
        """Backups outlive the stack unless it allows data loss; then this stanza's (only) are deleted."""
        repo = spec.repository
        if not spec.allow_data_loss or not repo.config_file.exists() or not Path(repo.path).is_dir():
            return
        pgbackrest.run(repo, "stop")
        pgbackrest.run(repo, "stanza-delete", "--force")
        process.remove_tree(repo.schema_dumps)
        process.remove_tree(Path(repo.config_dir))  # its password file with it
