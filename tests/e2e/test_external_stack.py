"""The external platform against a local server standing in for Supabase: checked, used, never touched."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pulumi.automation as auto
import pytest

from components.platform.local.postgres import PostgresServerKind, PostgresServerSpec
from tests.conftest import ROOT
from tests.support import free_port, reachable_state_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def existing_server() -> Iterator[PostgresServerSpec]:
    with reachable_state_dir() as base:
        spec = PostgresServerSpec(
            state_dir=str(base / "external"),
            port=free_port(),
            database="supabase_like",
            superuser_password=secrets.token_urlsafe(16),
            replication_password=secrets.token_urlsafe(16),
            settings={"shared_preload_libraries": "pg_cron,pg_stat_statements", "cron.database_name": "supabase_like"},
            allow_data_loss=True,
        )
        kind = PostgresServerKind()
        resource_id, _ = kind.create(spec)
        try:
            yield spec
        finally:
            kind.delete(resource_id, spec)


def dsn(spec: PostgresServerSpec) -> str:
    return f"postgresql://postgres:{spec.superuser_password}@127.0.0.1:{spec.port}/{spec.database}"


def test_up_checks_the_server_and_exports_where_it_is(existing_server: PostgresServerSpec, tmp_path: Path) -> None:
    stack = auto.create_stack(
        f"external-{secrets.token_hex(3)}",
        work_dir=str(ROOT),
        opts=auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{tmp_path}"}),
    )
    try:
        stack.set_config("thorbis:platform", auto.ConfigValue("external"))
        stack.set_config("thorbis:externalDsn", auto.ConfigValue(dsn(existing_server), secret=True))
        for key in ("authenticatorPassword", "reportingPassword"):
            stack.set_config(f"thorbis:{key}", auto.ConfigValue(secrets.token_urlsafe(16), secret=True))
        result = stack.up()
        assert result.outputs["platform"].value == "external"
        assert result.outputs["port"].value == existing_server.port
        assert result.outputs["database"].value == "supabase_like"
        assert result.outputs["adminDsn"].secret
        assert existing_server.superuser_password not in "".join(p.read_text() for p in tmp_path.rglob("*.json"))
        assert stack.up().summary.resource_changes == {"same": 3}

        stack.destroy()
        with psycopg.connect(dsn(existing_server)) as still_there:
            assert still_there.execute("SELECT 1").fetchone() == (1,)
    finally:
        stack.workspace.remove_stack(stack.name, force=True)
        (ROOT / f"Pulumi.{stack.name}.yaml").unlink(missing_ok=True)
