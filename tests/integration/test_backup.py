"""pgBackRest against a real primary: stanza, WAL archive, a base backup, restores to a time and to the
latest point (the restore-on-provision path of PostgresServer), drift of a broken archive, and a backup
directory that is missing or not writable (a clear error naming thorbis:backup.directory, nothing deleted)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from components.connection import LOOPBACK
from components.kind import ProviderError, reported
from components.platform.local import pgbackrest
from components.platform.local import postgres_files as pg
from components.platform.local.backup import BackupRepositoryKind, BackupRepositorySpec, BackupStatus
from components.platform.local.pgbackrest import Repository
from components.platform.local.postgres import PostgresServerKind, wait_for_promotion
from testbed.support import free_port, reachable_state_dir
from tests.integration.conftest import SETTINGS, SUPERUSER_PASSWORD, Primary, eventually, primary_spec

STANZA = "it-backup"


@dataclass(frozen=True)
class Archived:
    """A primary archiving into a repository made by BackupRepositoryKind."""

    primary: Primary
    kind: BackupRepositoryKind
    spec: BackupRepositorySpec
    base: Path

    @property
    def repo(self) -> Repository:
        return self.spec.repository

    def observe(self) -> BackupStatus:
        observed = self.kind.observe("", self.spec)
        assert observed is not None
        return observed.status


def repository(base: Path, **changes: Any) -> Repository:
    repo = Repository(path=str(base / "backups"), stanza=STANZA, config_dir=str(base / "pgbackrest"))
    return repo.model_copy(update=changes)


def archiving_settings(repo: Repository) -> dict[str, str]:
    return {**SETTINGS, "archive_mode": "on", "archive_command": pgbackrest.archive_command(repo)}


def switch_and_wait_archived(conn: psycopg.Connection[Any]) -> None:
    """Close the current WAL segment and wait until pgBackRest has it (what makes RPO zero)."""
    row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    segment = row[0]

    def archived() -> bool:
        last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
        return last is not None and last[0] is not None and last[0] >= segment

    eventually(archived, 60, f"WAL segment {segment} to be archived")


@pytest.fixture(scope="module")
def archived() -> Iterator[Archived]:
    with reachable_state_dir() as base:
        repo = repository(base)
        spec = primary_spec(base / "postgres-primary", free_port(), settings=archiving_settings(repo), backup=repo)
        server_kind = PostgresServerKind()
        resource_id, outputs = server_kind.create(spec)
        primary = Primary(server_kind, spec, resource_id, reported(outputs))
        backup_spec = BackupRepositorySpec(
            repository=repo,
            primary_state_dir=spec.state_dir,
            port=spec.port,
            superuser_password=SUPERUSER_PASSWORD,
        )
        kind = BackupRepositoryKind()
        try:
            kind.create(backup_spec)
            yield Archived(primary, kind, backup_spec, base)
        finally:
            try:
                kind.delete("", backup_spec.model_copy(update={"allow_data_loss": True}))
            finally:
                server_kind.delete(resource_id, spec.model_copy(update={"allow_data_loss": True}))


def test_stanza_is_created_and_wal_is_archived(archived: Archived) -> None:
    observed = archived.observe()
    assert observed.stanza_ok is True
    assert observed.config_written is True
    assert observed.archive_ok is True
    assert observed.last_archived_wal
    assert archived.primary.scalar("SHOW archive_mode") == "on"
    assert (Path(archived.repo.path) / "archive" / STANZA).is_dir()
    assert archived.kind.drifted(observed, archived.spec) == []
    text = archived.repo.config_file.read_text()
    assert f"pg1-path={archived.primary.server.data}" in text
    assert f"pg1-port={archived.primary.port}" in text
    assert "repo1-retention-full=2" in text


def test_a_backup_restores_to_a_point_in_time_and_to_the_latest_point(archived: Archived) -> None:
    with archived.primary.connect() as conn:
        conn.execute("CREATE TABLE pitr_probe (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO pitr_probe SELECT g, 'before the backup' FROM generate_series(1, 100) g")
    started = time.monotonic()
    pgbackrest.run(archived.repo, "backup", "--type=full")
    backup_seconds = time.monotonic() - started
    observed = archived.observe()
    assert observed.backups == 1 and str(observed.last_backup).endswith("F"), observed
    assert observed.last_backup_at

    time.sleep(1.1)  # pgBackRest records the backup's stop time in whole seconds
    with archived.primary.connect() as conn:
        conn.execute("INSERT INTO pitr_probe VALUES (101, 'after the backup, before the target')")
        time.sleep(0.05)  # pgBackRest takes targets to the millisecond: keep the commit out of the target's
        target_row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert target_row is not None
        target = target_row[0]
        time.sleep(1.1)
        conn.execute("INSERT INTO pitr_probe VALUES (102, 'after the target')")
        switch_and_wait_archived(conn)

    # to a time: a copy beside the primary, not archiving into the stack's repository
    to_time = pg.ServerDir(archived.base / "restore-time")
    copy_port = free_port()
    copy_repo = archived.repo.model_copy(update={"config_dir": str(archived.base / "pgbackrest-copy")})
    pgbackrest.write_files(copy_repo, to_time, copy_port, SUPERUSER_PASSWORD)
    pgbackrest.restore(copy_repo, to_time, target_time=target, archive=False)
    pg.write_config(
        to_time,
        {
            **SETTINGS,
            "port": str(copy_port),
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": str(to_time.socket_dir),
        },
    )
    pg.start(to_time)
    try:
        copy = primary_spec(to_time.base, copy_port)
        wait_for_promotion(copy, timeout=120)
        with psycopg.connect(**connection(copy_port)) as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM pitr_probe ORDER BY id")]
            assert conn.execute("SHOW archive_mode").fetchone() == ("off",)
        assert ids == list(range(1, 102)), "to the target time: the row after it is not there"
    finally:
        pg.stop(to_time)

    # to the latest point: what PostgresServer does when its data directory is missing
    restored_spec = primary_spec(
        archived.base / "restored",
        free_port(),
        backup=copy_repo.model_copy(update={"config_dir": str(archived.base / "pgbackrest-latest")}),
    )
    kind = PostgresServerKind()
    started = time.monotonic()
    resource_id, outputs = kind.create(restored_spec)
    restore_seconds = time.monotonic() - started
    try:
        assert outputs.status.running is True and outputs.status.data_checksums is True
        with psycopg.connect(**connection(restored_spec.port)) as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM pitr_probe ORDER BY id")]
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert ids == list(range(1, 103)), "to the latest point: every committed row, archived WAL replayed"
    finally:
        kind.delete(resource_id, restored_spec.model_copy(update={"allow_data_loss": True}))
    print(f"\nfull backup {backup_seconds:.1f} s, restore to the latest point and start {restore_seconds:.1f} s")


def connection(port: int) -> dict[str, Any]:
    return {
        "host": LOOPBACK,
        "port": port,
        "user": "postgres",
        "password": SUPERUSER_PASSWORD,
        "dbname": "thorbis_it",
        "autocommit": True,
        "connect_timeout": 5,
    }


def test_a_failing_archive_is_drift_that_update_repairs(archived: Archived) -> None:
    archive_dir = Path(archived.repo.path) / "archive"
    archive_dir.chmod(0o000)  # behind the stack's back: the repository cannot be written
    try:
        with archived.primary.connect() as conn:
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CREATE TABLE IF NOT EXISTS drift_probe (id int)")
            conn.execute("SELECT pg_switch_wal()")
        eventually(lambda: archived.observe().archive_ok is False, 30, "the archiver to fail")
        assert "archiveOk" in archived.kind.drifted(archived.observe(), archived.spec)
    finally:
        archive_dir.chmod(0o750)
    repaired = archived.kind.update("", archived.observe().wire(), archived.spec)
    assert repaired.archive_ok is True and repaired.stanza_ok is True


def test_a_missing_backup_directory_is_named_by_its_key_and_nothing_is_deleted(archived: Archived) -> None:
    missing = archived.repo.model_copy(update={"path": str(archived.base / "not-mounted"), "create_path": False})
    spec = archived.spec.model_copy(update={"repository": missing})
    config_before = archived.repo.config_file.read_text()
    with pytest.raises(ProviderError) as caught:
        archived.kind.create(spec)
    message = str(caught.value)
    assert "thorbis:backup.directory" in message and "does not exist" in message
    assert not Path(missing.path).exists(), "a missing backup volume is never replaced by a local directory"
    assert archived.repo.config_file.read_text() == config_before, "nothing was changed"
    assert (archived.observe().backups or 0) >= 1, "the existing backups are untouched"
    assert archived.primary.scalar("SELECT count(*) FROM pitr_probe") == 102


def test_an_unwritable_backup_directory_is_named_by_its_key_and_nothing_is_deleted(archived: Archived) -> None:
    root_only = archived.base / "root-only"
    root_only.mkdir(mode=0o755)
    (root_only / "keep.txt").write_text("someone else's file\n")
    unwritable = archived.repo.model_copy(update={"path": str(root_only), "create_path": False})
    spec = archived.spec.model_copy(update={"repository": unwritable})
    with pytest.raises(ProviderError) as caught:
        archived.kind.create(spec)
    message = str(caught.value)
    assert "thorbis:backup.directory" in message and "not writable by the postgres OS user" in message
    assert [p.name for p in root_only.iterdir()] == ["keep.txt"]
    assert os.stat(root_only).st_uid == 0, "ownership is not changed behind the user's back"


def test_delete_keeps_the_backups_unless_data_loss_is_allowed(archived: Archived) -> None:
    archived.kind.delete("", archived.spec)  # allow_data_loss false
    assert (archived.observe().backups or 0) >= 1
    assert archived.observe().stanza_ok is True
    assert archived.repo.config_file.exists()


def test_delete_with_data_loss_allowed_removes_this_stanza_only(archived: Archived) -> None:
    other = Path(archived.repo.path) / "backup" / "another-stack"
    other.mkdir(parents=True)
    (other / "backup.info").write_text("another stack's backups\n")
    archived.kind.delete("", archived.spec.model_copy(update={"allow_data_loss": True}))
    assert not (Path(archived.repo.path) / "backup" / STANZA).exists()
    assert not (Path(archived.repo.path) / "archive" / STANZA).exists()
    assert not archived.repo.passfile.exists(), "no password file is left behind"
    assert (other / "backup.info").exists(), "a repository shared by stacks keeps theirs"
    archived.kind.create(archived.spec)  # the fixture's teardown deletes it again
    assert archived.observe().stanza_ok is True
