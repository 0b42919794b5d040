"""The external platform against a local server standing in for Supabase: checked, used, never touched."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pulumi.automation as auto
import pytest
from psycopg import sql

from components.connection import LOOPBACK
from components.outputs import CONNECTION, connection_of
from components.platform.local.postgres import PostgresServerKind, PostgresServerSpec
from testbed.support import free_port, reachable_state_dir
from tests.conftest import ROOT

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
    return f"postgresql://postgres:{spec.superuser_password}@{LOOPBACK}:{spec.port}/{spec.database}"


SUPABASE_ROLES = ["anon", "authenticated", "authenticator", "service_role"]
SUPABASE_OBJECTS: dict[str, object] = {
    "roles": SUPABASE_ROLES,
    "auth": [("users", "supabase_admin_like")],
    "storage": [("objects", "supabase_admin_like")],
}


def make_it_look_like_supabase(spec: PostgresServerSpec) -> None:
    """Supabase's own roles and its reserved schemas, which the stack must adopt or leave alone."""
    with psycopg.connect(dsn(spec), autocommit=True) as conn:
        conn.execute("CREATE ROLE supabase_admin_like NOLOGIN")
        for role in SUPABASE_ROLES:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        for schema in ("auth", "storage"):
            conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION supabase_admin_like").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE auth.users (id uuid PRIMARY KEY)")
        conn.execute("CREATE TABLE storage.objects (id uuid PRIMARY KEY)")
        conn.execute("ALTER TABLE auth.users OWNER TO supabase_admin_like")
        conn.execute("ALTER TABLE storage.objects OWNER TO supabase_admin_like")


def supabase_objects(spec: PostgresServerSpec) -> dict[str, object]:
    with psycopg.connect(dsn(spec)) as conn:
        roles = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1", (SUPABASE_ROLES,)
        ).fetchall()
        found: dict[str, object] = {"roles": [row[0] for row in roles]}
        for schema in ("auth", "storage"):
            found[schema] = conn.execute(
                "SELECT c.relname, c.relowner::regrole::text FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
                (schema,),
            ).fetchall()
    return found


def test_up_checks_the_server_and_exports_where_it_is(existing_server: PostgresServerSpec, tmp_path: Path) -> None:
    stack = auto.create_stack(
        f"external-{secrets.token_hex(3)}",
        work_dir=str(ROOT),
        opts=auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{tmp_path}"}),
    )
    try:
        stack.set_config("thorbis:platform", auto.ConfigValue("external"))
        stack.set_config("thorbis:allowDataLoss", auto.ConfigValue("true"))  # so that destroy may drop tables
        stack.set_config("thorbis:externalDsn", auto.ConfigValue(dsn(existing_server), secret=True))
        for key in ("authenticatorPassword", "reportingPassword"):
            stack.set_config(f"thorbis:{key}", auto.ConfigValue(secrets.token_urlsafe(16), secret=True))
        make_it_look_like_supabase(existing_server)
        result = stack.up()
        exported = connection_of(result.outputs)
        assert exported is not None and result.outputs[CONNECTION].secret
        assert (exported.platform, exported.primary.port) == ("external", existing_server.port)
        assert (exported.database, exported.platform_owns_roles) == ("supabase_like", True)
        assert existing_server.superuser_password not in "".join(p.read_text() for p in tmp_path.rglob("*.json"))
        created = (result.summary.resource_changes or {}).get(auto.OpType.CREATE, 0)
        assert created > 500  # the platform check plus the whole database layer
        assert stack.up().summary.resource_changes == {"same": created}
        assert supabase_objects(existing_server) == SUPABASE_OBJECTS

        stack.destroy()
        with psycopg.connect(dsn(existing_server)) as still_there:
            assert still_there.execute("SELECT 1").fetchone() == (1,)
        assert supabase_objects(existing_server) == SUPABASE_OBJECTS  # adopted roles and auth/storage untouched
    finally:
        stack.workspace.remove_stack(stack.name, force=True)
        (ROOT / f"Pulumi.{stack.name}.yaml").unlink(missing_ok=True)
