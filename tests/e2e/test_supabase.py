"""The `external` platform on a Supabase-shaped PostgreSQL (tests/fixtures/supabase), as a Supabase customer:
`up` as the project's `postgres` (NOSUPERUSER CREATEROLE BYPASSRLS) over the review's populated database
with the dashboard's leaky policies; then the tenant isolation tests, as anon and authenticated with the
claims GoTrue puts in a token; no privilege on any managed relation beyond the declaration (the whole
catalog); Supabase's own schemas and roles as they were after `up` and after `destroy`, which removes
exactly what the stack created.

One stack for the module (the fixture brings it up; `up` takes about a minute), destroyed by its last tests.
The isolation tests are tests/e2e/test_tenant_isolation.py's own, run here against this stack.
"""

from __future__ import annotations

import itertools
import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
import pytest
from psycopg import sql

from components.database.declared.access import load_access
from components.database.declared.model import TABLE_SCHEMA, load_schema
from components.database.declared.reporting import load_reporting
from components.outputs import CONNECTION, connection_of
from ops.preview import render_markdown, run_preview
from testbed.before_state import BeforeTable, build_before_state, fingerprint
from tests.conftest import ROOT
from tests.e2e.test_tenant_isolation import (  # run against this stack by the fixtures below
    SYNTHESIZER,
    Tenants,
    test_every_foreign_key_has_an_index_led_by_its_columns,
    test_every_table_and_partition_has_row_level_security_enabled_and_forced,
    test_every_table_has_exactly_its_declared_policies,
    test_insert_for_the_other_company_is_refused,
    test_no_policy_widens_access,
    test_partitions_have_no_policy_and_read_directly_show_no_row,
    test_select_sees_the_own_row_and_none_of_the_other_company,
    test_the_same_statements_on_the_own_rows_work,
    test_update_and_delete_of_the_other_company_touch_nothing,
    test_without_claims_no_row_is_visible,
)
from tests.fixtures.supabase.shape import Snapshot, SupabaseServer, snapshot, supabase_roles, supabase_shaped_server

__all__ = [
    "test_every_foreign_key_has_an_index_led_by_its_columns",
    "test_every_table_and_partition_has_row_level_security_enabled_and_forced",
    "test_every_table_has_exactly_its_declared_policies",
    "test_insert_for_the_other_company_is_refused",
    "test_no_policy_widens_access",
    "test_partitions_have_no_policy_and_read_directly_show_no_row",
    "test_select_sees_the_own_row_and_none_of_the_other_company",
    "test_the_same_statements_on_the_own_rows_work",
    "test_update_and_delete_of_the_other_company_touch_nothing",
    "test_without_claims_no_row_is_visible",
]
pytestmark = pytest.mark.e2e
Conn = psycopg.Connection[Any]
#: Supabase's custom claims: in app_metadata, or wherever a custom access-token hook writes them.
COMPANY_CLAIM = "app_metadata.company_id"
#: The dashboard's policy templates a project typically has on a table before it knows better.
LEAKY_POLICIES = [
    'CREATE POLICY "Enable read access for all users" ON public.customers FOR SELECT USING (true)',
    'CREATE POLICY "Enable insert for authenticated users only" ON public.customers FOR INSERT TO authenticated '
    "WITH CHECK (true)",
]
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
ATTACKS = (
    "TRUNCATE {} CASCADE",
    "CREATE TRIGGER t BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
)


@dataclass
class SupabaseStack:
    server: SupabaseServer
    stack: auto.Stack
    roles: list[str]  # Supabase's, before the stack
    before: Snapshot
    tables: list[BeforeTable]
    fingerprints: dict[str, tuple[int, str]]
    up: auto.UpResult
    after_up: dict[str, tuple[int, str]]  # the tables' fingerprints right after `up` (tests add rows later)
    backend: Path
    destroyed: list[bool] = field(default_factory=lambda: [False])  # shared with the fixture's clean-up

    def supabase_admin(self) -> Conn:
        return self.server.connect("supabase_admin")

    def snapshot(self) -> Snapshot:
        with self.supabase_admin() as conn:
            return snapshot(conn, self.roles)


def configure(stack: auto.Stack, server: SupabaseServer) -> None:
    """What a Supabase customer sets: the project's connection string (as postgres), the reporting role's
    password, where the company is in the token. No authenticatorPassword: Supabase's authenticator stays."""
    stack.set_config("thorbis:platform", auto.ConfigValue("external"))
    stack.set_config("thorbis:externalDsn", auto.ConfigValue(server.dsn(), secret=True))
    stack.set_config("thorbis:reportingPassword", auto.ConfigValue(secrets.token_urlsafe(18), secret=True))
    stack.set_config("thorbis:companyClaim", auto.ConfigValue(COMPANY_CLAIM))
    stack.set_config("thorbis:allowDataLoss", auto.ConfigValue("false"))


@pytest.fixture(scope="module")
def supabase(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupabaseStack]:
    backend = tmp_path_factory.mktemp("supabase-backend")
    with supabase_shaped_server() as server:
        with server.connect("supabase_admin") as conn:
            roles = supabase_roles(conn)
            before = snapshot(conn, roles)
        with server.connect() as conn:  # the project's data, made by its owner before the stack
            tables = build_before_state(conn)
            for statement in ["ALTER TABLE public.customers ENABLE ROW LEVEL SECURITY", *LEAKY_POLICIES]:
                conn.execute(statement)
            fingerprints = {table.name: fingerprint(conn, table) for table in tables}
        stack = auto.create_stack(
            f"supabase-{secrets.token_hex(3)}",
            work_dir=str(ROOT),
            opts=auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{backend}"}),
        )
        destroyed = [False]
        try:
            configure(stack, server)
            result = stack.up()
            with server.connect() as conn:
                after_up = {table.name: fingerprint(conn, table) for table in tables}
            yield SupabaseStack(
                server, stack, roles, before, tables, fingerprints, result, after_up, backend, destroyed
            )
        finally:
            try:
                if not destroyed[0]:
                    stack.set_config("thorbis:allowDataLoss", auto.ConfigValue("true"))
                    stack.up()
                    stack.destroy()
            finally:
                stack.workspace.remove_stack(stack.name, force=True)
                (ROOT / f"Pulumi.{stack.name}.yaml").unlink(missing_ok=True)


# --- the fixtures the isolation tests of test_tenant_isolation.py take, on this stack ----------------------


@pytest.fixture(scope="module")
def admin(supabase: SupabaseStack) -> Iterator[Conn]:
    """The project's postgres: no superuser, BYPASSRLS."""
    with supabase.server.connect() as conn:
        yield conn


@pytest.fixture(scope="module")
def tenants(admin: Conn) -> Tenants:
    with admin.transaction():
        return Tenants(a=SYNTHESIZER.world(admin), b=SYNTHESIZER.world(admin))


@pytest.fixture(scope="module")
def app(supabase: SupabaseStack, tenants: Tenants) -> Iterator[Conn]:
    """What PostgREST logs in as: Supabase's authenticator, its password the project's own."""
    with supabase.server.connect("authenticator", prepare_threshold=None) as conn:
        yield conn


# --- up -----------------------------------------------------------------------------------------------


@contextmanager
def as_role(conn: Conn, role: str, claims: dict[str, Any]) -> Iterator[Conn]:
    """A rolled-back transaction as `role`, with claims as PostgREST sets them."""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        yield conn


def test_up_ran_as_the_projects_postgres_which_is_no_superuser_and_adopted_the_data(supabase: SupabaseStack) -> None:
    assert supabase.up.summary.result == "succeeded"
    exported = connection_of(supabase.up.outputs)
    assert exported is not None and supabase.up.outputs[CONNECTION].secret
    assert (exported.platform, exported.primary.port, exported.database) == (
        "external",
        supabase.server.port,
        "postgres",
    )
    assert supabase.server.passwords["postgres"] not in "".join(p.read_text() for p in supabase.backend.rglob("*.json"))
    with supabase.server.connect() as conn:
        assert conn.execute("SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = 'postgres'")\
            .fetchone() == (False, True, True)  # fmt: skip
        owners = dict(conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        ).fetchall())  # fmt: skip
        policies = [
            name for (name,) in conn.execute("SELECT policyname FROM pg_policies WHERE tablename = 'customers'")
        ]
    assert {name: found for name, found in supabase.after_up.items() if found != supabase.fingerprints[name]} == {}
    adopted = {table.name for table in supabase.tables}
    assert {name: owner for name, owner in owners.items() if name in adopted and owner != "postgres"} == {}, (
        "an adopted table changed owner: the dashboard's postgres could no longer alter it"
    )
    assert {name: owner for name, owner in owners.items() if name not in adopted and owner != "thorbis_owner"} == {}
    assert not [name for name in policies if name.startswith("Enable")], "the dashboard's leaky policies survived"


def test_supabase_is_left_as_it_was_but_for_the_admins_default_privileges(supabase: SupabaseStack) -> None:
    """Its roles (authenticator's password first), schemas and their owners, its services' objects, its event
    triggers; the extensions the stack adds are beside Supabase's; the only change is that postgres's default
    privileges in public no longer give anon, authenticated and service_role everything on new tables."""
    differences = supabase.before.differences(supabase.snapshot())
    added = differences.pop("extensions", ([], []))
    declared = {extension.name for extension in load_access().extensions}  # pg_trgm, btree_gin: not Supabase's
    assert added[0] == [] and {"pg_trgm"} <= {name for name, *_ in added[1]} <= declared
    defaults = differences.pop("default_privileges", ([], []))
    assert {(role, schema) for role, schema, *_ in [*defaults[0], *defaults[1]]} == {("postgres", "public")}
    assert [grant for *_, acl in defaults[1] for grant in acl if not grant.startswith("postgres=")] == []
    assert differences == {}


RELATION_KINDS = ("r", "p", "v", "m", "f")
TABLE_KINDS = ("r", "p")  # partitions included: each can be truncated or given a trigger on its own


def managed_relations(conn: Conn, kinds: tuple[str, ...] = RELATION_KINDS) -> list[tuple[int, str, str]]:
    """Every relation of the schemas the stack declares, and public's (all its tables are the stack's)."""
    schemas = [TABLE_SCHEMA, *(schema.name for schema in load_access().schemas if schema.name != "extensions")]
    return conn.execute(
        "SELECT c.oid::int, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        'WHERE n.nspname = ANY(%s) AND c.relkind = ANY(%s::"char"[]) ORDER BY 2, 3',
        (schemas, list(kinds)),
    ).fetchall()


def declared_privileges(role: str) -> dict[tuple[str, str], set[str]]:
    """(schema, relation) -> what the declaration gives `role` (sql/access.yaml, sql/reporting.yaml)."""
    covered = [*(table.name for table in load_schema().tables), *(v.name for v in load_reporting().tenant_view_specs())]
    granted = set(load_access().table_privileges.get(role, []))
    return {(TABLE_SCHEMA, name): granted for name in covered}


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_no_privilege_beyond_the_declaration_on_any_managed_relation(supabase: SupabaseStack, role: str) -> None:
    """Over the whole catalog, privileges held directly, through PUBLIC or through a role it belongs to."""
    with supabase.server.connect() as conn:
        relations = managed_relations(conn)
        held = {
            (schema, name): {p for p in TABLE_PRIVILEGES if conn.execute(
                "SELECT has_table_privilege(%s, %s::oid, %s)", (role, oid, p)).fetchone()[0]}  # type: ignore[index]
            for oid, schema, name in relations
        }  # fmt: skip
    declared = declared_privileges(role)
    beyond = {relation: sorted(privileges - declared.get(relation, set())) for relation, privileges in held.items()}
    assert len(relations) > 100
    assert {relation: extra for relation, extra in beyond.items() if extra} == {}


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_truncate_and_trigger_are_refused_on_every_table(supabase: SupabaseStack, role: str) -> None:
    """As an attacker with the API's roles: TRUNCATE ignores RLS (it would empty every company's rows), a
    trigger would run for every company's writes."""
    claims = {"sub": str(uuid.uuid4()), "role": role, "app_metadata": {"company_id": str(uuid.uuid4())}}
    allowed = []
    with supabase.server.connect("authenticator") as conn:
        tables = [name for _, schema, name in managed_relations(conn, TABLE_KINDS) if schema == TABLE_SCHEMA]
        for name, attack in itertools.product(tables, ATTACKS):
            try:
                with as_role(conn, role, claims):
                    conn.execute(sql.SQL(attack).format(sql.Identifier(TABLE_SCHEMA, name)))
                allowed.append(f"{attack.split()[0]} {name}")
            except psycopg.errors.InsufficientPrivilege:
                pass
    assert tables and allowed == []


def test_the_company_is_read_where_supabase_puts_custom_claims(supabase: SupabaseStack, tenants: Tenants) -> None:
    """A token's app_metadata.company_id names the company; a top-level company_id (which a user could put
    in user_metadata-shaped places) is ignored."""
    claims = {"sub": str(uuid.uuid4()), "role": "authenticated", "app_metadata": {"company_id": tenants.a_id},
              "company_id": tenants.b_id}  # fmt: skip
    with supabase.server.connect("authenticator") as conn, as_role(conn, "authenticated", claims):
        companies = {str(c) for (c,) in conn.execute("SELECT DISTINCT company_id FROM public.customers")}
    assert companies == {tenants.a_id}


def test_a_second_up_changes_nothing(supabase: SupabaseStack) -> None:
    assert list(supabase.stack.up(refresh=True).summary.resource_changes or {}) == ["same"]


def test_access_granted_by_hand_is_a_risk_in_the_preview_and_removed_by_up(supabase: SupabaseStack) -> None:
    with supabase.server.connect() as conn:
        conn.execute("GRANT TRUNCATE ON public.jobs TO anon")
        conn.execute("CREATE POLICY backdoor ON public.estimates FOR ALL TO authenticated USING (true)")
        conn.execute("GRANT reporting TO anon")
    outcome = run_preview(supabase.stack)
    summary = render_markdown(outcome)
    assert "**Access beyond the declaration**" in summary
    risks = summary[summary.index("**Access beyond the declaration**") :]
    assert "anon: TRUNCATE on table public.jobs" in risks.splitlines()[1]  # the worst first
    assert "backdoor: PERMISSIVE FOR ALL TO authenticated USING (true)" in risks
    assert "`role-reporting`: members" in summary
    supabase.stack.up(refresh=True)
    with supabase.server.connect() as conn:
        assert conn.execute("SELECT has_table_privilege('anon', 'public.jobs', 'TRUNCATE')").fetchone() == (False,)
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE policyname = 'backdoor'").fetchone() == (0,)
        assert conn.execute("SELECT pg_has_role('anon', 'reporting', 'MEMBER')").fetchone() == (False,)
    supabase.stack.preview(refresh=True, expect_no_changes=True)


# --- destroy ------------------------------------------------------------------------------------------


def fingerprints(supabase: SupabaseStack) -> dict[str, tuple[int, str]]:
    with supabase.server.connect() as conn:
        return {table.name: fingerprint(conn, table) for table in supabase.tables}


def test_destroy_without_allow_data_loss_drops_nothing(supabase: SupabaseStack) -> None:
    """As the Automation API runs it (`destroy --skip-preview`): refused before anything is deleted, not after
    the tables' policies, grants and row level security, naming the key and the commands."""
    before = fingerprints(supabase)
    with pytest.raises(auto.CommandError) as refused:
        supabase.stack.destroy()
    message = str(refused.value)
    assert "thorbis:allowDataLoss is false" in message and "Nothing was deleted" in message
    assert f"pulumi config set thorbis:allowDataLoss true --stack {supabase.stack.name}" in message
    assert "unprotect" not in message
    with supabase.server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'thorbis_owner'").fetchone() == (1,)
    assert fingerprints(supabase) == before
    supabase.stack.preview(expect_no_changes=True)  # every resource is still there


def test_destroy_removes_exactly_what_the_stack_created(supabase: SupabaseStack) -> None:
    supabase.stack.set_config("thorbis:allowDataLoss", auto.ConfigValue("true"))
    supabase.stack.up()  # the provider learns it
    kept = fingerprints(supabase)
    supabase.stack.destroy()
    supabase.destroyed[0] = True
    assert supabase.before.differences(supabase.snapshot()) == {}, "Supabase is not as the stack found it"
    created_roles = [role.name for role in load_access().roles if role.name not in supabase.roles]
    created_schemas = [schema.name for schema in load_access().schemas]
    with supabase.server.connect() as conn:
        assert conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (created_roles,)).fetchall() == []
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY 1", (created_schemas,))
        assert [name for (name,) in left] == ["extensions", "partman"]  # Supabase's and the customer's: adopted
        new = [table.name for table in load_schema().tables if table.name not in {t.name for t in supabase.tables}]
        assert conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                            "AND relname = ANY(%s)", (new,)).fetchall() == []  # fmt: skip
        for role, schema in (("anon", "public"), ("authenticated", "public"), ("anon", "extensions")):
            assert conn.execute("SELECT has_schema_privilege(%s, %s, 'USAGE')", (role, schema)).fetchone() == (True,)
    assert fingerprints(supabase) == kept  # the project's own tables, adopted, stay with their rows
