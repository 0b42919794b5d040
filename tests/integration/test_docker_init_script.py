"""The docker primary's first-start script (generated from the local platform's statements), run for real with
bash and psql against a local server, as docker-entrypoint-initdb.d would run it in the container."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from components import scram
from components.connection import LOOPBACK
from components.platform.docker.platform import init_script
from components.platform.local import process
from components.platform.local.pgbouncer import AUTH_ROLE, AUTH_SCHEMA
from components.platform.local.postgres_files import REPLICATION_ROLE
from tests.integration.conftest import DATABASE, SUPERUSER_PASSWORD, Primary, running_primary

REPLICATION_PASSWORD = "it-docker-Replica:0123"
AUTH_PASSWORD = "it-docker-'Bouncer'-0123"  # quotes: psql's :'variable' must quote them


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Primary, Path]]:
    """A primary without the roles the script makes, after the script ran; and its PGDATA stand-in."""
    pgdata = tmp_path_factory.mktemp("pgdata")
    (pgdata / "pg_hba.conf").write_text("# the image's own lines\n")
    with running_primary() as primary:
        with primary.connect() as conn:
            # the local bootstrap made it; the official image has none
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(REPLICATION_ROLE)))
        environment = {
            **os.environ,
            "PATH": f"{Path(process.pg_tool('psql')).parent}:{os.environ['PATH']}",
            "PGHOST": LOOPBACK,
            "PGPORT": str(primary.port),
            "PGPASSWORD": SUPERUSER_PASSWORD,
            "POSTGRES_DB": DATABASE,
            "PGDATA": str(pgdata),
            "REPLICATION_PASSWORD": REPLICATION_PASSWORD,
            "PGBOUNCER_AUTH_PASSWORD": AUTH_PASSWORD,
            "SCRAM_PROGRAM": scram.__file__,  # uploaded to the container beside the script
        }
        ran = subprocess.run(
            ["bash", "-s"], input=init_script(), env=environment, capture_output=True, text=True, check=False
        )
        assert ran.returncode == 0, ran.stderr
        yield primary, pgdata


def login(primary: Primary, user: str, password: str, dbname: str = DATABASE) -> psycopg.Connection:
    return psycopg.connect(
        host=LOOPBACK, port=primary.port, user=user, password=password, dbname=dbname, autocommit=True
    )


def test_the_roles_passwords_reached_the_server_as_verifiers_only(initialised: tuple[Primary, Path]) -> None:
    """The statements pg_stat_statements kept (the server preloads it) hold the verifiers, never a password."""
    primary, _ = initialised
    with primary.connect() as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        statements = [text for (text,) in admin.execute("SELECT query FROM pg_stat_statements")]
    made = [text for text in statements if "CREATE ROLE" in text]
    # the script's two roles (the local bootstrap of the server under test made its own before)
    assert all(any(role in text for text in made) for role in (REPLICATION_ROLE, AUTH_ROLE))
    assert all("SCRAM-SHA-256$" in text for text in made)
    assert not any(password in text for text in statements for password in (REPLICATION_PASSWORD, AUTH_PASSWORD))
    for role, password in ((REPLICATION_ROLE, REPLICATION_PASSWORD), (AUTH_ROLE, AUTH_PASSWORD)):
        assert scram.is_verifier_of(
            primary.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)), password
        )


def test_the_replication_role_logs_in_with_its_password_and_may_replicate(initialised: tuple[Primary, Path]) -> None:
    primary, pgdata = initialised
    assert primary.scalar("SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = %s", (REPLICATION_ROLE,))
    with login(primary, REPLICATION_ROLE, REPLICATION_PASSWORD, dbname="postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (REPLICATION_ROLE,)
    assert f"host replication {REPLICATION_ROLE} all scram-sha-256" in (pgdata / "pg_hba.conf").read_text()


def test_pgbouncer_looks_up_application_users_but_never_a_superuser(initialised: tuple[Primary, Path]) -> None:
    primary, _ = initialised
    with primary.connect() as admin:
        admin.execute("CREATE ROLE it_app_user LOGIN PASSWORD 'it-app-Password-0123'")
    with login(primary, AUTH_ROLE, AUTH_PASSWORD) as bouncer:
        lookup = sql.SQL("SELECT usename, passwd FROM {}.get_auth(%s)").format(sql.Identifier(AUTH_SCHEMA))
        [(name, verifier)] = bouncer.execute(lookup, ("it_app_user",)).fetchall()
        assert name == "it_app_user" and verifier.startswith("SCRAM-SHA-256$")
        assert bouncer.execute(lookup, ("postgres",)).fetchall() == []


def test_nobody_else_may_call_the_lookup(initialised: tuple[Primary, Path]) -> None:
    primary, _ = initialised
    with primary.connect() as admin:
        admin.execute("CREATE ROLE it_curious LOGIN PASSWORD 'it-curious-Password-0123'")
    lookup = sql.SQL("SELECT * FROM {}.get_auth('it_app_user')").format(sql.Identifier(AUTH_SCHEMA))
    with (
        login(primary, "it_curious", "it-curious-Password-0123") as curious,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        curious.execute(lookup)
