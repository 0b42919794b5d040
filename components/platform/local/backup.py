"""thorbisdb:local:BackupRepository — the primary's pgBackRest stanza: WAL archive and base backups.

Create and update write pgBackRest's config, create the stanza (idempotent) and run `check`, which
switches WAL and waits until the segment is in the repository. `observe` reports the stanza, the last
backup and whether archiving works, so `refresh` shows a broken archive as drift. Delete keeps every
backup unless the stack allows data loss. Backups themselves are taken by `scripts/backup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pulumi
from pydantic import Field

from components.kind import Kind, ProviderError, Spec
from components.platform.local import pgbackrest, process
from components.platform.local import postgres_files as pg
from components.platform.local.pgbackrest import Repository
from components.resource import declared_outputs, provider_inputs

TOKEN = "thorbisdb:local:BackupRepository"
SECRETS = frozenset({"superuserPassword"})
OUTPUTS = ("stanzaOk", "configWritten", "archiveOk", "lastArchivedWal", "lastBackup", "lastBackupAt", "backups")


class BackupRepositorySpec(Spec):
    repository: Repository = Field(description="The pgBackRest repository and stanza of the stack.")
    primary_state_dir: str = Field(description="State directory of the primary (its data/ and run/).")
    port: int = Field(ge=1024, le=65535, description="Port of the primary on 127.0.0.1.")
    superuser_password: str = Field(min_length=1, description="Password of `postgres` (secret).")
    allow_data_loss: bool = Field(default=False, description="Whether delete may remove the backups.")


def primary_of(spec: BackupRepositorySpec) -> pg.ServerDir:
    return pg.ServerDir(Path(spec.primary_state_dir))


def archiver_status(spec: BackupRepositorySpec) -> dict[str, Any]:
    """pg_stat_archiver of a running primary: archiving works when no failure came after the last success."""
    if not pg.answering(spec.port, spec.superuser_password):
        return {"archiveOk": None, "lastArchivedWal": None}  # unknown while the primary is down: not drift
    with pg.connect(spec.port, spec.superuser_password) as conn:
        row = conn.execute(
            "SELECT last_archived_wal, last_archived_time, last_failed_time FROM pg_stat_archiver"
        ).fetchone()
        mode = conn.execute("SHOW archive_mode").fetchone()
    archived_wal, archived_at, failed_at = row if row else (None, None, None)
    failing = failed_at is not None and (archived_at is None or failed_at > archived_at)
    return {"archiveOk": bool(mode and mode[0] != "off") and not failing, "lastArchivedWal": archived_wal}


def backup_status(repo: Repository) -> dict[str, Any]:
    stanza = pgbackrest.info(repo)
    taken = pgbackrest.backups(stanza)
    last = taken[-1] if taken else None
    stopped = (last or {}).get("timestamp", {}).get("stop")
    return {
        "stanzaOk": pgbackrest.stanza_ok(stanza),
        "configWritten": repo.config_file.exists(),
        "lastBackup": last["label"] if last else None,
        "lastBackupAt": datetime.fromtimestamp(stopped, UTC).isoformat() if stopped else None,
        "backups": len(taken),
    }


class BackupRepositoryKind(Kind[BackupRepositorySpec]):
    token = TOKEN
    spec_type = BackupRepositorySpec
    replace_on = frozenset({"primaryStateDir"})
    secret_properties = SECRETS
    delete_before_replace = False  # a new repository beside the old one: the old backups stay until it works

    def create(self, spec: BackupRepositorySpec) -> tuple[str, dict[str, Any]]:
        return f"{spec.repository.path}#{spec.repository.stanza}", self.apply(spec)

    def apply(self, spec: BackupRepositorySpec) -> dict[str, Any]:
        repo = spec.repository
        pgbackrest.prepare_directory(repo)  # before anything is written: the error names the config key
        pgbackrest.write_files(repo, primary_of(spec), spec.port, spec.superuser_password)
        pgbackrest.run(repo, "start")  # undo a `stop` left by an earlier delete of the stanza
        try:
            pgbackrest.run(repo, "stanza-create")
            pgbackrest.run(repo, "check", timeout=180)
        except ProviderError as error:
            problem = pgbackrest.directory_problem(repo)
            raise ProviderError(problem or f"{error}; see {Path(repo.config_dir) / 'log'}") from error
        return self.observed(spec)

    def observed(self, spec: BackupRepositorySpec) -> dict[str, Any]:
        return {**backup_status(spec.repository), **archiver_status(spec)}

    def observe(self, resource_id: str, spec: BackupRepositorySpec) -> dict[str, Any] | None:
        try:
            return self.observed(spec)
        except (ProviderError, psycopg.Error):
            return {**backup_status(spec.repository), "archiveOk": None, "lastArchivedWal": None}

    def drifted(self, old_state: dict[str, Any], spec: BackupRepositorySpec) -> list[str]:
        return [key for key in ("stanzaOk", "configWritten", "archiveOk") if old_state.get(key) is False]

    def update(self, resource_id: str, old: dict[str, Any], spec: BackupRepositorySpec) -> dict[str, Any]:
        return self.apply(spec)

    def delete(self, resource_id: str, spec: BackupRepositorySpec) -> None:
        """Backups outlive the stack unless it allows data loss; then this stanza's (only) are deleted."""
        repo = spec.repository
        if not spec.allow_data_loss or not repo.config_file.exists() or not Path(repo.path).is_dir():
            return
        pgbackrest.run(repo, "stop")
        pgbackrest.run(repo, "stanza-delete", "--force")
        process.remove_tree(repo.schema_dumps)
        process.remove_tree(Path(repo.config_dir))  # its password file with it


@dataclass
class BackupRepositoryArgs:
    repository: pulumi.Input[dict[str, Any]]
    primary_state_dir: pulumi.Input[str]
    port: pulumi.Input[int]
    superuser_password: pulumi.Input[str]
    allow_data_loss: pulumi.Input[bool] = False


class BackupRepository(pulumi.CustomResource):
    """The pgBackRest stanza of a local stack's primary: WAL archive and base backups."""

    stanza_ok: pulumi.Output[bool]
    archive_ok: pulumi.Output[bool]
    last_backup: pulumi.Output[str]

    def __init__(self, name: str, args: BackupRepositoryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, {**provider_inputs(args, SECRETS), **declared_outputs(*OUTPUTS)}, opts)
