"""What an interrupted build leaves, met by the next create of a real server (the kills themselves, through
the engine and the recovery command, are in tests/e2e/test_interrupted_up.py): the remains of a build and
the processes still working in it go, a data directory that is not a whole cluster is set aside and kept,
and while initdb runs no file holds the superuser password and no secret is in its environment."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.platform.local import postgres_files as pg
from components.platform.local import process
from components.platform.local.postgres import PostgresServerKind
from testbed.support import free_port, live_processes_under, reachable_state_dir
from tests.integration.conftest import SUPERUSER_PASSWORD, primary_spec


@pytest.fixture
def base() -> Iterator[Path]:
    with reachable_state_dir() as directory:
        yield directory


def create_and_remove(base: Path) -> pg.ServerDir:
    """Create the primary in `base`, check it answers, then stop it."""
    spec = primary_spec(base / "postgres-primary", free_port())
    kind = PostgresServerKind()
    kind.create(spec)
    try:
        assert pg.answering(spec.port, SUPERUSER_PASSWORD)
    finally:
        pg.stop(pg.ServerDir(Path(spec.state_dir)))
    return pg.ServerDir(Path(spec.state_dir))


def half_made(server: pg.ServerDir) -> None:
    """What a kill inside pg_basebackup or pgbackrest restore left before builds were made aside: a data
    directory with PG_VERSION and some of the files, but no global/pg_control."""
    process.make_private_dir(server.base)
    (server.data / "base").mkdir(parents=True)
    (server.data / "PG_VERSION").write_text("15\n")
    (server.data / "base" / "copied-so-far").write_text("a page\n")


def test_a_data_directory_without_pg_control_is_set_aside_kept_and_a_new_cluster_made(base: Path) -> None:
    server = pg.ServerDir(base / "postgres-primary")
    half_made(server)
    create_and_remove(base)
    aside = list(server.base.glob("data.incomplete-*"))
    assert len(aside) == 1 and (aside[0] / "base" / "copied-so-far").read_text() == "a page\n"
    assert pg.whole_cluster(server.data)


def test_the_password_file_of_an_interrupted_initdb_marks_its_cluster_half_made(base: Path) -> None:
    """The code before built-aside directories wrote the password beside the cluster during initdb and
    removed it afterwards: found, initdb was killed (here its cluster is whole, yet it is not trusted)."""
    server = pg.ServerDir(base / "postgres-primary")
    pg.initdb(server, SUPERUSER_PASSWORD)
    (server.base / pg.LEGACY_PASSWORD_FILE).write_text(SUPERUSER_PASSWORD + "\n")
    create_and_remove(base)
    assert not (server.base / pg.LEGACY_PASSWORD_FILE).exists()
    assert len(list(server.base.glob("data.incomplete-*"))) == 1


def test_the_remains_of_a_build_go_with_the_processes_still_working_in_them(base: Path) -> None:
    server = pg.ServerDir(base / "postgres-primary")
    remains = server.base / f"data{pg.BUILDING}{2**22 + 7}"
    process.make_private_dir(remains)
    (remains / "PG_VERSION").write_text("15\n")
    worker = subprocess.Popen(["sleep", "600"], cwd=remains, start_new_session=True)
    try:
        create_and_remove(base)
        assert worker.wait(timeout=30) == -9
    finally:
        worker.kill()
    assert not remains.exists()
    assert live_processes_under(remains) == []


@pytest.fixture
def watched_initdb(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The server binaries, but initdb first records which files under the server's directory hold the
    superuser password and which environment it was given, then runs the real initdb."""
    bindir, seen = base / "bin", base / "seen"
    bindir.mkdir()
    seen.mkdir(mode=0o777)
    seen.chmod(0o777)
    real = process.postgres_bindir()
    for tool in real.iterdir():
        (bindir / tool.name).symlink_to(tool)
    (bindir / "initdb").unlink()
    server_dir, files, environment = (
        shlex.quote(str(path)) for path in (base / "postgres-primary", seen / "files", seen / "environment")
    )
    (bindir / "initdb").write_text(
        "#!/bin/sh\n"
        f"grep -rlF -- {shlex.quote(SUPERUSER_PASSWORD)} {server_dir} > {files}\n"
        f"env > {environment}\n"
        f'exec {shlex.quote(str(real / "initdb"))} "$@"\n'
    )
    (bindir / "initdb").chmod(0o755)
    monkeypatch.setenv("THORBIS_PG_BINDIR", str(bindir))
    monkeypatch.setenv("PGPASSWORD", "the-callers-own-password")
    process.postgres_bindir.cache_clear()
    try:
        yield seen
    finally:
        process.postgres_bindir.cache_clear()


def test_while_initdb_runs_no_file_holds_the_password_and_no_secret_is_in_its_environment(
    base: Path, watched_initdb: Path
) -> None:
    create_and_remove(base)
    assert (watched_initdb / "files").read_text() == ""
    environment = (watched_initdb / "environment").read_text()
    assert "PGPASSWORD" not in environment and "PULUMI_CONFIG_PASSPHRASE" not in environment
    assert "PATH=" in environment and os.environ["PULUMI_CONFIG_PASSPHRASE"]
