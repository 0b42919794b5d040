"""Functions, triggers, views and policies against a real PostgreSQL: create -> observe (exactly the
declared inputs, so a second `up` changes nothing) -> drift by hand -> repair -> delete; and the RLS
helper pattern isolating companies (review defects 1-7)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from components.database.kinds.function import FunctionKind, FunctionSpec, FunctionStatus
from components.database.kinds.policy import PolicyKind, PolicySpec, PolicyStatus
from components.database.kinds.row_security import RowSecurityKind, RowSecuritySpec, RowSecurityStatus
from components.database.kinds.trigger import TriggerKind, TriggerSpec, TriggerStatus
from components.database.kinds.view import ViewKind, ViewSpec, ViewStatus
from components.database.session import DatabaseTarget, connect, scalar
from components.kind import Observed, ProviderError
from tests.integration.databases import Database, changes, database_server, declared, recorded

PASSWORD = "it-Logic'pass:0123"
DATABASE = "thorbis_logic"
TENANT_CLAUSE = "company_id = (select app.current_company_id())"
SCHEMA_SQL = """
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
CREATE ROLE anon NOLOGIN;
CREATE SCHEMA app AUTHORIZATION app_owner;
GRANT USAGE ON SCHEMA app TO authenticated, anon;
CREATE TABLE app.jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id uuid NOT NULL,
    title text NOT NULL,
    updated_at timestamptz
);
ALTER TABLE app.jobs OWNER TO app_owner;
ALTER TABLE app.jobs ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, UPDATE, DELETE ON app.jobs TO authenticated;
CREATE TABLE app.notes (id serial PRIMARY KEY, company_id uuid, body text, updated_at timestamptz);
"""


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    with database_server(DATABASE, PASSWORD) as db:
        db.execute(SCHEMA_SQL)
        yield db


HELPER = FunctionSpec(
    schema_name="app",
    name="current_company_id",
    returns="uuid",
    language="sql",
    body="select (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'company_id')::uuid",
    volatility="stable",
    security_definer=True,
    search_path="",
    owner="app_owner",
    grant_execute_to=["authenticated"],
)


@pytest.fixture(scope="module")
def helper(database: Database) -> FunctionSpec:
    """app.current_company_id(): the company in this transaction's claims, NULL without them."""
    database.kind(FunctionKind).create(HELPER)
    return HELPER


def test_function_observes_as_declared_drifts_repairs_and_deletes(database: Database, helper: FunctionSpec) -> None:
    kind = database.kind(FunctionKind)
    spec = FunctionSpec(
        schema_name="app",
        name="note_count",
        arguments="p_company uuid",
        returns="TABLE (total int)",  # the server writes TABLE(total integer)
        body="select count(*)::int from app.notes where company_id = p_company",
        volatility="stable",
        strict=True,
        search_path="",
        owner="app_owner",
        grant_execute_to=["authenticated"],
    )
    resource_id, outputs = kind.create(spec)
    assert outputs == FunctionStatus(adopted=False)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), FunctionStatus())
    assert kind.observe("", helper) == Observed(declared(helper), FunctionStatus())
    assert not database.scalar("SELECT has_function_privilege('anon', 'app.note_count(uuid)', 'EXECUTE')")
    assert database.scalar("SELECT has_function_privilege('authenticated', 'app.note_count(uuid)', 'EXECUTE')")

    database.execute(
        "CREATE OR REPLACE FUNCTION app.note_count(p_company uuid) RETURNS TABLE (total int) LANGUAGE sql STABLE "
        "STRICT SET search_path = '' AS 'select 42'"
    )
    database.execute("ALTER FUNCTION app.note_count(uuid) VOLATILE")
    database.execute("GRANT EXECUTE ON FUNCTION app.note_count(uuid) TO PUBLIC")
    drifted = kind.observe(resource_id, spec)
    assert drifted is not None
    assert (drifted.inputs["body"], drifted.inputs["volatility"], drifted.inputs["grantExecuteTo"]) == (
        "select 42",
        "volatile",
        ["authenticated", "public"],
    )
    assert changes(kind, spec, drifted) == ["body", "volatility", "grantExecuteTo"]

    kind.update(resource_id, recorded(spec, drifted), spec)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), FunctionStatus())
    assert not database.scalar("SELECT has_function_privilege('anon', 'app.note_count(uuid)', 'EXECUTE')")

    database.execute("CREATE VIEW app.note_totals AS SELECT * FROM app.note_count(NULL)")
    with pytest.raises(ProviderError, match=r"view app\.note_totals depends on function"):
        kind.delete(resource_id, spec)
    database.execute("DROP VIEW app.note_totals")
    kind.delete(resource_id, spec)
    assert kind.observe(resource_id, spec) is None
    kind.delete(resource_id, spec)  # already gone: nothing to do


def test_a_function_whose_row_type_was_dropped_with_its_table_is_gone_not_an_error(database: Database) -> None:
    """A table dropped by hand (CASCADE) takes the functions returning its rows with it: a refresh (which a
    plain destroy runs first) reads them as gone; creating one still fails, naming the missing type."""
    database.execute("CREATE TABLE app.scratch_rows (id int); ")
    kind = database.kind(FunctionKind)
    spec = FunctionSpec(
        schema_name="app", name="scratch_all", returns="SETOF app.scratch_rows", body="select * from app.scratch_rows"
    )
    resource_id, _ = kind.create(spec)
    database.execute("DROP TABLE app.scratch_rows CASCADE")
    assert kind.observe(resource_id, spec) is None
    with pytest.raises(ProviderError, match=r'type "app.scratch_rows" does not exist'):
        kind.create(spec)


def test_function_spec_refuses_definer_without_search_path_and_defaults() -> None:
    with pytest.raises(ValidationError, match="SECURITY DEFINER"):
        FunctionSpec.model_validate({**declared(HELPER), "searchPath": None})
    with pytest.raises(ValidationError, match="defaults are not supported"):
        FunctionSpec.model_validate({**declared(HELPER), "arguments": "p int DEFAULT 1"})


def test_procedure_commits_between_batches_observes_as_declared_drifts_repairs_and_deletes(
    database: Database,
) -> None:
    kind = database.kind(FunctionKind)
    spec = FunctionSpec(
        kind="procedure",
        schema_name="app",
        name="stamp_notes",
        arguments="p_batch integer",
        language="plpgsql",
        body="""
        DECLARE stamped integer;
        BEGIN
          LOOP
            UPDATE app.notes SET updated_at = pg_catalog.now()
            WHERE id IN (SELECT id FROM app.notes WHERE updated_at IS NULL LIMIT p_batch);
            GET DIAGNOSTICS stamped = ROW_COUNT;
            EXIT WHEN stamped = 0;
            COMMIT;
          END LOOP;
        END""",
        owner="app_owner",
        grant_execute_to=[],
    )
    resource_id, outputs = kind.create(spec)
    assert outputs == FunctionStatus(adopted=False)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), FunctionStatus())
    assert database.scalar("SELECT prokind FROM pg_proc WHERE oid = 'app.stamp_notes(integer)'::regprocedure") == "p"
    assert not database.scalar("SELECT has_function_privilege('anon', 'app.stamp_notes(integer)', 'EXECUTE')")

    database.execute("INSERT INTO app.notes (body) SELECT 'n' || g FROM generate_series(1, 5) g")
    database.execute("CALL app.stamp_notes(2)")  # COMMIT inside: only outside a transaction block
    assert database.scalar("SELECT count(*) FROM app.notes WHERE updated_at IS NULL") == 0
    stamps = database.scalar("SELECT count(DISTINCT updated_at) FROM app.notes WHERE left(body, 1) = 'n'")
    assert stamps == 3  # one transaction (and now()) per batch of 2

    database.execute("CREATE OR REPLACE PROCEDURE app.stamp_notes(p_batch integer) LANGUAGE sql AS 'SELECT 1'")
    drifted = kind.observe(resource_id, spec)
    assert changes(kind, spec, drifted) == ["language", "body"]
    kind.update(resource_id, declared(spec), spec)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), FunctionStatus())

    kind.delete(resource_id, spec)
    assert kind.observe(resource_id, spec) is None
    kind.delete(resource_id, spec)


def test_function_spec_refuses_function_clauses_on_a_procedure_and_a_function_without_result() -> None:
    with pytest.raises(ValidationError, match="a procedure has no `returns`"):
        FunctionSpec.model_validate({**declared(HELPER), "kind": "procedure"})
    with pytest.raises(ValidationError, match="a function needs `returns`"):
        FunctionSpec.model_validate({**declared(HELPER), "returns": None})


# --- Trigger ----------------------------------------------------------------------------------------

SET_UPDATED_AT = FunctionSpec(
    schema_name="app",
    name="set_updated_at",
    returns="trigger",
    language="plpgsql",
    body="begin new.updated_at := pg_catalog.now(); return new; end;",
    search_path="",
)


def test_trigger_observes_as_declared_drifts_repairs_and_deletes(database: Database) -> None:
    functions, kind = database.kind(FunctionKind), database.kind(TriggerKind)
    function_id, _ = functions.create(SET_UPDATED_AT)
    spec = TriggerSpec(
        schema_name="app",
        table="notes",
        name="notes_updated_at",
        timing="BEFORE",
        events=["UPDATE", "INSERT"],
        function="app.set_updated_at",
    )
    resource_id, outputs = kind.create(spec)
    assert outputs == TriggerStatus(adopted=False, enabled=True)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), TriggerStatus(enabled=True))
    database.execute("INSERT INTO app.notes (body) VALUES ('a')")
    assert database.scalar("SELECT count(*) FROM app.notes WHERE updated_at IS NULL") == 0

    database.execute("ALTER TABLE app.notes DISABLE TRIGGER notes_updated_at")
    disabled = kind.observe(resource_id, spec)
    assert disabled == Observed(declared(spec), TriggerStatus(enabled=False))
    assert changes(kind, spec, disabled) == ["enabled"]
    kind.update(resource_id, recorded(spec, disabled), spec)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), TriggerStatus(enabled=True))

    database.execute(
        "CREATE OR REPLACE TRIGGER notes_updated_at AFTER DELETE ON app.notes "
        "FOR EACH STATEMENT EXECUTE FUNCTION app.set_updated_at()"
    )
    replaced = kind.observe(resource_id, spec)
    assert changes(kind, spec, replaced) == ["timing", "events", "level"]
    kind.update(resource_id, recorded(spec, replaced), spec)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), TriggerStatus(enabled=True))

    with pytest.raises(ProviderError, match=r"trigger notes_updated_at on table app\.notes depends on function"):
        functions.delete(function_id, SET_UPDATED_AT)
    kind.delete(resource_id, spec)
    assert kind.observe(resource_id, spec) is None
    functions.delete(function_id, SET_UPDATED_AT)


# --- View -------------------------------------------------------------------------------------------


def test_view_observes_as_declared_drifts_repairs_and_deletes(database: Database, helper: FunctionSpec) -> None:
    kind = database.kind(ViewKind)
    spec = ViewSpec(
        schema_name="app",
        name="my_jobs",
        query=f"select id, title\n  from app.jobs\n where {TENANT_CLAUSE}",
        security_barrier=True,
        owner="app_owner",
    )
    resource_id, _ = kind.create(spec)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), ViewStatus())

    database.execute("CREATE OR REPLACE VIEW app.my_jobs AS SELECT id, title FROM app.jobs")
    drifted = kind.observe(resource_id, spec)
    assert drifted is not None
    assert "company_id" not in drifted.inputs["query"]
    assert changes(kind, spec, drifted) == ["query", "securityBarrier", "securityInvoker"]
    kind.update(resource_id, recorded(spec, drifted), spec)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), ViewStatus())

    database.execute("GRANT SELECT ON app.my_jobs TO authenticated")
    fewer_columns = spec.model_copy(update={"query": f"select id from app.jobs where {TENANT_CLAUSE}"})
    kind.update(resource_id, declared(spec), fewer_columns)  # CREATE OR REPLACE cannot drop a column
    assert kind.observe(resource_id, fewer_columns) == Observed(declared(fewer_columns), ViewStatus())
    assert database.scalar("SELECT has_table_privilege('authenticated', 'app.my_jobs', 'SELECT')")

    database.execute("CREATE VIEW app.my_job_ids AS SELECT id FROM app.my_jobs")
    with pytest.raises(ProviderError, match=r"view app\.my_job_ids depends on view app\.my_jobs"):
        kind.delete(resource_id, fewer_columns)
    database.execute("DROP VIEW app.my_job_ids")
    kind.delete(resource_id, fewer_columns)
    assert kind.observe(resource_id, fewer_columns) is None


# --- Policy -----------------------------------------------------------------------------------------


def test_policy_observes_as_declared_drifts_repairs_and_deletes(database: Database, helper: FunctionSpec) -> None:
    kind = database.kind(PolicyKind)
    spec = PolicySpec(
        schema_name="app",
        table="notes",
        name="notes_select",
        command="SELECT",
        roles=["authenticated"],
        using=TENANT_CLAUSE,
    )
    resource_id, outputs = kind.create(spec)
    assert outputs == PolicyStatus(adopted=False)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), PolicyStatus())

    database.execute("ALTER POLICY notes_select ON app.notes TO authenticated, anon USING (true)")
    drifted = kind.observe(resource_id, spec)
    assert drifted is not None
    assert (drifted.inputs["using"], drifted.inputs["roles"]) == ("true", ["anon", "authenticated"])
    assert changes(kind, spec, drifted) == ["roles", "using"]
    kind.update(resource_id, recorded(spec, drifted), spec)  # ALTER POLICY
    assert kind.observe(resource_id, spec) == Observed(declared(spec), PolicyStatus())

    every_command = spec.model_copy(update={"command": "ALL", "with_check": TENANT_CLAUSE})
    kind.update(resource_id, declared(spec), every_command)  # another command: DROP and CREATE
    assert kind.observe(resource_id, every_command) == Observed(declared(every_command), PolicyStatus())

    database.execute("DROP POLICY notes_select ON app.notes")
    assert kind.observe(resource_id, every_command) is None
    _, outputs = kind.create(every_command)
    assert outputs == PolicyStatus(adopted=False)
    assert kind.observe(resource_id, every_command) == Observed(declared(every_command), PolicyStatus())

    kind.delete(resource_id, every_command)
    assert kind.observe(resource_id, every_command) is None
    kind.delete(resource_id, every_command)


def rls_of(database: Database, table: str) -> tuple[bool, bool, list[str]]:
    """(enabled, forced, its policies) of a table of schema app."""
    enabled, forced = database.rows(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (f"app.{table}",)
    )[0]
    policies = [name for (name,) in database.rows("SELECT polname FROM pg_policy WHERE polrelid = to_regclass(%s) "
                                                  "ORDER BY 1", (f"app.{table}",))]  # fmt: skip
    return enabled, forced, policies


def test_row_security_goes_on_with_the_declared_policies_and_drops_the_others(
    database: Database, helper: FunctionSpec
) -> None:
    """An adopted table with a dashboard's leaky policy: RLS goes on, and the leak goes, in one step once
    the declared policy exists, never before; what is added by hand afterwards is drift, removed by update."""
    database.execute(
        "CREATE TABLE app.leads (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), company_id uuid NOT NULL);"
        "ALTER TABLE app.leads OWNER TO app_owner; GRANT SELECT, INSERT ON app.leads TO authenticated;"
        "CREATE POLICY leak ON app.leads FOR SELECT USING (true)"
    )
    kind = database.kind(RowSecurityKind)
    spec = RowSecuritySpec(schema_name="app", table="leads", policies=["leads_tenant"])
    with pytest.raises(ProviderError, match="refusing to turn it on without the declared policies leads_tenant"):
        kind.create(spec)
    assert rls_of(database, "leads") == (False, False, ["leak"])  # nothing changed: the application reads on

    tenant = PolicySpec(schema_name="app", table="leads", name="leads_tenant", roles=["authenticated"],
                        using=TENANT_CLAUSE)  # fmt: skip
    database.kind(PolicyKind).create(tenant)
    resource_id, outputs = kind.create(spec)
    assert outputs == RowSecurityStatus(enabled=True, undeclared_policies=[])
    assert rls_of(database, "leads") == (True, True, ["leads_tenant"])
    assert changes(kind, spec, kind.observe(resource_id, spec)) == []

    database.execute("CREATE POLICY backdoor ON app.leads TO authenticated USING (true)")
    database.execute("ALTER TABLE app.leads NO FORCE ROW LEVEL SECURITY")
    drifted = kind.observe(resource_id, spec)
    assert drifted is not None and changes(kind, spec, drifted) == ["enabled", "undeclaredPolicies"]
    assert drifted.status.undeclared_policies == ["backdoor: PERMISSIVE FOR ALL TO authenticated USING (true)"]
    kind.update(resource_id, recorded(spec, outputs, drifted), spec)
    assert rls_of(database, "leads") == (True, True, ["leads_tenant"])
    assert changes(kind, spec, kind.observe(resource_id, spec)) == []

    kind.delete(resource_id, spec)  # RLS stays on: turning it off would open the table
    assert rls_of(database, "leads") == (True, True, ["leads_tenant"])
    database.execute("DROP TABLE app.leads")


@pytest.mark.parametrize(
    ("command", "clauses", "complaint"),
    [
        ("INSERT", {"using": "true", "withCheck": "true"}, "takes with_check"),
        ("INSERT", {"using": "true"}, "takes with_check"),
        ("SELECT", {"using": "true", "withCheck": "true"}, "no with_check"),
        ("DELETE", {"using": "true", "withCheck": "true"}, "no with_check"),
        ("UPDATE", {"using": "true"}, "needs using"),
    ],
)
def test_policy_spec_refuses_clauses_that_do_not_fit_the_command(
    command: str, clauses: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        PolicySpec.model_validate({"schemaName": "app", "table": "jobs", "name": "p", "command": command, **clauses})


# --- Row level security: the helper and four policies isolate companies -----------------------------


def tenant_policies() -> list[PolicySpec]:
    def policy(command: str, **clauses: str) -> PolicySpec:
        return PolicySpec.model_validate(
            {"schemaName": "app", "table": "jobs", "name": f"jobs_{command.lower()}", "command": command,
             "roles": ["authenticated"], **clauses}
        )  # fmt: skip

    return [
        policy("SELECT", using=TENANT_CLAUSE),
        policy("INSERT", withCheck=TENANT_CLAUSE),
        policy("UPDATE", using=TENANT_CLAUSE, withCheck=TENANT_CLAUSE),
        policy("DELETE", using=TENANT_CLAUSE),
    ]


@contextmanager
def as_authenticated(
    conn: psycopg.Connection[tuple[Any, ...]], claims: dict[str, str] | None
) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """One transaction as the application role, with claims set for this transaction only (pooler-safe)."""
    with conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        if claims is not None:
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        yield conn


def test_rls_helper_and_policies_isolate_companies(database: Database, helper: FunctionSpec) -> None:
    kind = database.kind(PolicyKind)
    for spec in tenant_policies():
        resource_id, _ = kind.create(spec)
        assert kind.observe(resource_id, spec) == Observed(declared(spec), PolicyStatus())
    company_a, company_b = str(uuid.uuid4()), str(uuid.uuid4())
    with database.connect() as conn:
        for company, title in [(company_a, "a1"), (company_a, "a2"), (company_b, "b1")]:
            conn.execute("INSERT INTO app.jobs (company_id, title) VALUES (%s, %s)", (company, title))

        with as_authenticated(conn, {"company_id": company_a}):
            visible = conn.execute("SELECT company_id::text, title FROM app.jobs ORDER BY title").fetchall()
            assert visible == [(company_a, "a1"), (company_a, "a2")]
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN SELECT * FROM app.jobs"))
            assert "InitPlan" in plan  # the helper runs once per query, not once per row
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"), conn.transaction():
                conn.execute("INSERT INTO app.jobs (company_id, title) VALUES (%s, 'intruder')", (company_b,))
            assert conn.execute("UPDATE app.jobs SET title = 'taken' WHERE company_id = %s", (company_b,)).rowcount == 0
            assert conn.execute("DELETE FROM app.jobs WHERE company_id = %s", (company_b,)).rowcount == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"), conn.transaction():
                conn.execute("UPDATE app.jobs SET company_id = %s WHERE title = 'a1'", (company_b,))
            conn.execute("INSERT INTO app.jobs (company_id, title) VALUES (%s, 'a3')", (company_a,))

        for claims in (None, {}, {"role": "authenticated"}):  # no claims (or no company in them): no rows
            with as_authenticated(conn, claims):
                assert conn.execute("SELECT count(*) FROM app.jobs").fetchone() == (0,)
        with conn.transaction():  # claims set with is_local = true ended with their transaction
            assert conn.execute("SELECT current_setting('request.jwt.claims', true)").fetchone() in [(None,), ("",)]

        titles = conn.execute("SELECT title FROM app.jobs WHERE company_id = %s", (company_b,)).fetchall()
        assert titles == [("b1",)]
        assert conn.execute("SELECT count(*) FROM app.jobs WHERE company_id = %s", (company_a,)).fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SET LOCAL ROLE anon")
            conn.execute("SELECT app.current_company_id()")


def test_a_session_is_reused_by_the_next_request_clean_and_never_when_broken(database: Database) -> None:
    """The provider keeps its sessions between requests (a new login costs most of a refresh): the next one
    gets the same backend with nothing of the last one's work (SET, temporary tables, a transaction), and a
    session the server closed meanwhile is replaced, not handed out."""
    target = DatabaseTarget(database.connection)
    with connect(target) as conn:
        first = conn.info.backend_pid
        conn.execute("SET lock_timeout = '1ms'")
        conn.execute("CREATE TEMPORARY TABLE leftover (x int)")
    with connect(target) as conn:
        assert conn.info.backend_pid == first
        assert scalar(conn, "SHOW lock_timeout") == "0"
        assert scalar(conn, "SELECT to_regclass('pg_temp.leftover')") is None
        assert scalar(conn, "SHOW deadlock_timeout") == "10ms"  # set again after the reset
        assert scalar(conn, "SHOW search_path") == "public,extensions"  # the startup option, kept by RESET
        conn.execute("BEGIN")  # left open: never handed out again
    with connect(target) as conn:
        assert conn.info.backend_pid != first
        second = conn.info.backend_pid
    database.execute("SELECT pg_terminate_backend(%s)", (second,))
    with connect(target) as conn:
        assert conn.info.backend_pid not in (first, second)
        assert scalar(conn, "SELECT 1") == 1
