"""thorbis:backup: defaults, where the repository goes, and the primary's archiving settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.platform.local.pgbackrest import segment_number, segments_after
from components.platform.local.platform import (
    archive_settings,
    backup_repository,
    check_backup_directory,
    postgres_settings,
)
from config import ConfigError
from tests.conftest import ROOT
from tests.unit.test_config import Stack, the_line


def test_backups_are_on_by_default_under_the_state_dir() -> None:
    settings = Stack().parse()
    assert settings.backup.enabled is True
    assert settings.backup.directory is None
    assert (settings.backup.retention, settings.backup.schedule) == (2, "30 2 * * *")
    assert settings.backup.restore_on_provision is True
    repo = backup_repository(settings)
    assert repo is not None
    assert Path(repo.path) == ROOT / ".state" / "stacks" / "dev" / "backups"
    assert (repo.stanza, repo.retention_full, repo.create_path) == ("dev", 2, True)
    assert Path(repo.config_dir) == settings.state_dir / "pgbackrest"


def test_a_relative_directory_is_taken_from_the_project_root(tmp_path: Path) -> None:
    settings = Stack().with_values(backup={"directory": "vault/dev", "retention": 5}).parse(project_root=tmp_path)
    assert settings.backup.directory == tmp_path.resolve() / "vault" / "dev"
    repo = backup_repository(settings)
    assert repo is not None and repo.create_path is False and repo.retention_full == 5


def test_the_primary_archives_with_pgbackrest_only_when_backups_are_on() -> None:
    settings = Stack().parse()
    gucs = postgres_settings(settings)
    assert gucs["archive_mode"] == "on"
    assert gucs["archive_command"] == (
        f"pgbackrest --config-path={settings.state_dir / 'pgbackrest'} --stanza=dev archive-push %p"
    )
    off = Stack().with_values(backup={"enabled": False}).parse()
    assert "archive_mode" not in postgres_settings(off) and backup_repository(off) is None


def test_other_platforms_do_not_archive_with_the_local_repository() -> None:
    settings = Stack().with_values(platform="docker").parse()
    assert archive_settings(settings) == {}


def test_a_configured_directory_that_is_missing_stops_the_program_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    settings = Stack().with_values(backup={"directory": str(missing)}).parse()
    with pytest.raises(ConfigError) as caught:
        check_backup_directory(settings)
    line = str(caught.value)
    assert line.startswith(f"stack 'dev': thorbis:backup.directory = \"{missing}\": ")
    assert "does not exist" in line
    assert not missing.exists()


def test_the_default_directory_need_not_exist_yet() -> None:
    check_backup_directory(Stack().with_values(stateDir="/nonexistent/thorbis/dev").parse())


def test_the_primary_archives_at_least_every_archive_timeout_by_default() -> None:
    settings = Stack().parse()
    assert settings.backup.archive_timeout == "30s" and settings.backup.archive_timeout_seconds == 30
    assert postgres_settings(settings)["archive_timeout"] == "30s"
    minutes = Stack().with_values(backup={"archiveTimeout": "2min"}).parse()
    assert postgres_settings(minutes)["archive_timeout"] == "120s"  # as the server reports it: no drift
    assert "archive_timeout" not in postgres_settings(Stack().with_values(backup={"enabled": False}).parse())


@pytest.mark.parametrize("value", ["0", "0s", "2h", "500ms", "soon", True])
def test_an_unbounded_or_malformed_archive_timeout_is_refused_naming_the_key(value: object) -> None:
    line = the_line(Stack().with_values(backup={"archiveTimeout": value}).error(), "thorbis:backup.archiveTimeout")
    assert "1 s" in line


def test_archive_timeout_is_not_taken_from_the_postgres_settings() -> None:
    error = Stack().with_values(postgres={"settings": {"archive_timeout": "5s"}}).error()
    assert "set thorbis:backup.archiveTimeout instead" in str(error)


def test_a_restore_counts_the_archived_segments_it_could_not_replay() -> None:
    mib16 = 16 * 1024 * 1024
    assert segment_number("00000001000000000000002F", mib16) == 0x2F
    assert segment_number("000000020000000100000003", mib16) == 0x100 + 3  # 256 segments of 16 MB per 4 GB
    assert segments_after("00000001000000000000002F", "0/30000000", mib16) == 0  # replay ended at its end
    assert segments_after("00000001000000000000002F", "0/2F00A1B8", mib16) == 0  # inside the last segment
    assert segments_after("000000010000000000000031", "0/2F00A1B8", mib16) == 2  # 30 was missing: 30, 31 lost
    assert segments_after(None, "0/2F00A1B8", mib16) == 0
