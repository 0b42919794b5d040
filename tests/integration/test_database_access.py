"""Roles, grants, default privileges and extensions against a real PostgreSQL.

Each kind: create -> observe equals the declared inputs (a second `up` shows no change) -> drift made by
hand shows in observe -> update repairs it -> delete removes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from components.database.base import DatabaseKind
from components.database.declared.access import load_access
from components.database.kinds.default_privileges import DefaultPrivilegesKind, DefaultPrivilegesSpec
from components.database.kinds.exact_privileges import ExactPrivilegesKind, ExactPrivilegesSpec, ObjectPrivileges
from components.database.kinds.extension import ExtensionKind, ExtensionSpec, ExtensionStatus
from components.database.kinds.grant import GrantKind, GrantSpec
from components.database.kinds.role import RoleKind, RoleSpec
from components.database.kinds.statistics_access import StatisticsAccessKind, StatisticsAccessSpec
from components.kind import ProviderError
from components.platform.local.postgres import PostgresServerKind, PostgresServerSpec
from components.platform.local.postgres_files import SUPERUSER
from testbed.support import free_port, reachable_state_dir
from tests.integration.databases import Database, changes, local_connection, recorded

DATABASE = "thorbis_access_it"
SUPERUSER_PASSWORD = "it-Access'super:0123"
SCHEMA = "it_app"
KindT = TypeVar("KindT", bound=DatabaseKind[Any, Any])


@dataclass(frozen=True)
class Server:
    """The test's PostgreSQL, and the provider config an explicit thorbisdb provider would hand its kinds."""

    spec: PostgresServerSpec

    @property
    def log(self) -> Path:
        return Path(self.spec.state_dir) / "postgres.log"

    @property
    def database(self) -> Database:
        return Database(local_connection(self.spec.port, DATABASE, SUPERUSER_PASSWORD))

    def kind(self, kind_type: type[KindT], admin: str = SUPERUSER, password: str = SUPERUSER_PASSWORD) -> KindT:
        """The kind as the provider serves it, connecting as `admin` (the superuser unless given)."""
        login = {"admin_user": admin, "admin_password": password}
        return Database(self.database.connection.model_copy(update=login)).kind(kind_type)

    def connect(self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD) -> psycopg.Connection[tuple[Any, ...]]:
        return self.database.connect(user, password)

    def run(self, statement: str, **names: str) -> None:
        """A change made by hand; `{name}` placeholders are filled in as identifiers."""
        with self.connect() as conn:
            conn.execute(sql.SQL(statement).format(**{key: sql.Identifier(value) for key, value in names.items()}))

    def scalar(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with reachable_state_dir() as base:
        spec = PostgresServerSpec(
            state_dir=str(base / "postgres"),
            port=free_port(),
            database=DATABASE,
            superuser_password=SUPERUSER_PASSWORD,
            replication_password="it-Access-replication-0123",
            settings={
                "shared_preload_libraries": "pg_cron,pg_stat_statements",
                "cron.database_name": DATABASE,
                "password_encryption": "scram-sha-256",
                "log_statement": "all",  # a password sent in plain text would be in postgres.log
            },
        )
        kind = PostgresServerKind()
        resource_id, _ = kind.create(spec)
        try:
            yield Server(spec)
        finally:
            kind.delete(resource_id, spec.model_copy(update={"allow_data_loss": True}))


@pytest.fixture(scope="module")
def app(server: Server) -> str:
    """A schema with what grants are made on: two tables, a sequence, a function no one may call yet."""
    server.run(
        """
        CREATE SCHEMA {schema};
        CREATE TABLE {schema}.jobs (id bigint PRIMARY KEY);
        CREATE TABLE {schema}.invoices (id bigint PRIMARY KEY);
        CREATE SEQUENCE {schema}.jobs_seq;
        CREATE FUNCTION {schema}.current_company_id() RETURNS uuid LANGUAGE sql STABLE AS 'SELECT NULL::uuid';
        REVOKE EXECUTE ON FUNCTION {schema}.current_company_id() FROM PUBLIC;
        """,
        schema=SCHEMA,
    )
    return SCHEMA


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def make_role(server: Server, prefix: str) -> str:
    name = unique(prefix)
    server.run("CREATE ROLE {role} NOLOGIN", role=name)
    return name


# --- Role ----------------------------------------------------------------------------------------------


def test_role_round_trip_with_attributes_and_memberships(server: Server) -> None:
    kind = server.kind(RoleKind)
    group = RoleSpec(name=unique("it_group"))
    role = RoleSpec(
        name=unique("it_user"),
        login=True,
        password="it-Round-trip-0123",
        bypass_rls=True,
        create_role=True,
        connection_limit=5,
        member_of=[group.name],
    )
    group_id, _ = kind.create(group)
    role_id, outputs = kind.create(role)
    assert outputs.adopted is False
    assert changes(kind, role, kind.observe(role_id, role)) == []

    server.run("ALTER ROLE {role} NOBYPASSRLS CONNECTION LIMIT 2", role=role.name)
    server.run("REVOKE {group} FROM {role}", group=group.name, role=role.name)
    observed = kind.observe(role_id, role)
    assert changes(kind, role, observed) == ["bypassRls", "connectionLimit", "memberOf"]

    kind.update(role_id, recorded(role, outputs, observed), role)
    assert changes(kind, role, kind.observe(role_id, role)) == []

    alone = role.model_copy(update={"member_of": [], "create_role": False})
    kind.update(role_id, recorded(role, outputs), alone)
    assert changes(kind, alone, kind.observe(role_id, alone)) == []
    assert server.scalar("SELECT pg_has_role(%s, %s, 'MEMBER')", (role.name, group.name)) is False

    kind.delete(role_id, alone)
    kind.delete(group_id, group)
    assert kind.observe(role_id, alone) is None
    assert kind.observe(group_id, group) is None


#: A quote and a colon; and a non-ASCII one that SASLprep changes (fullwidth "word" becomes "word").
PASSWORDS = {
    "ascii": "it-Plain'pass:0123-" + uuid.uuid4().hex[:6],
    "saslprep": "it-P\u00e4ss-\uff57\uff4f\uff52\uff44-" + uuid.uuid4().hex[:6],
}


@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_password_reaches_the_server_only_as_a_scram_verifier(server: Server, password: str) -> None:
    server.run("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    kind = server.kind(RoleKind)
    role = RoleSpec(name=unique("it_login"), login=True, password=password)
    role_id, outputs = kind.create(role)
    stored = server.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role.name,))
    assert stored.startswith("SCRAM-SHA-256$4096:")
    with server.connect(role.name, password) as conn:  # the server accepts our verifier
        assert conn.execute("SELECT current_user").fetchone() == (role.name,)
    assert changes(kind, role, kind.observe(role_id, role)) == []

    server.run("ALTER ROLE {role} PASSWORD 'it-changed-by-hand'", role=role.name)
    observed = kind.observe(role_id, role)
    assert observed is not None and observed.status.password_matches is False
    assert observed.status.stored_password == "scram-sha-256"
    assert changes(kind, role, observed) == ["passwordMatches"]
    kind.update(role_id, recorded(role, outputs, observed), role)
    assert changes(kind, role, kind.observe(role_id, role)) == []
    with server.connect(role.name, password) as conn:
        conn.execute("SELECT 1")

    with server.connect() as conn:
        statements = [query for (query,) in conn.execute("SELECT query FROM pg_stat_statements")]
    assert any(role.name in query and "SCRAM-SHA-256$" in query for query in statements)
    assert not any(password in query for query in statements)
    log = server.log.read_text(errors="replace")
    assert f'CREATE ROLE "{role.name}"' in log
    assert password not in log

    kind.delete(role_id, role)
    assert kind.observe(role_id, role) is None


def test_an_existing_role_is_adopted_and_never_altered_or_dropped(server: Server) -> None:
    """Supabase's authenticator, say: its attributes, password and memberships stay as they were; it only
    gets the declared memberships it lacks, and destroy leaves it."""
    kind = server.kind(RoleKind)
    theirs, declared_group = make_role(server, "it_theirs"), make_role(server, "it_declared")
    existing = make_role(server, "it_existing")
    server.run("ALTER ROLE {role} LOGIN NOINHERIT CONNECTION LIMIT 3 PASSWORD 'it-Their-own-0123'", role=existing)
    server.run("GRANT {group} TO {role}", group=theirs, role=existing)
    before = server.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (existing,))
    attributes = "SELECT (rolinherit, rolconnlimit, rolbypassrls)::text FROM pg_roles WHERE rolname = %s"
    found = server.scalar(attributes, (existing,))
    spec = RoleSpec(name=existing, login=True, password="it-Declared-0123", bypass_rls=True, member_of=[declared_group])
    role_id, outputs = kind.create(spec)
    assert outputs.adopted is True and outputs.password_matches is None
    assert server.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (existing,)) == before
    assert server.scalar(attributes, (existing,)) == found == "(f,3,f)"
    assert server.scalar("SELECT pg_has_role(%s, %s, 'MEMBER')", (existing, theirs)) is True
    assert server.scalar("SELECT pg_has_role(%s, %s, 'MEMBER')", (existing, declared_group)) is True
    adopted = kind.status_of(outputs.wire())
    assert changes(kind, spec, kind.observe(role_id, spec, adopted)) == []
    kind.update(role_id, recorded(spec, outputs), spec)
    assert server.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (existing,)) == before
    kind.delete(role_id, spec, adopted)
    assert server.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (existing,)) == 1

    made = RoleSpec(name=unique("it_made"), adopt_existing=True)  # never dropped, though the stack made it
    made_id, outputs = kind.create(made)
    assert outputs.adopted is False
    kind.delete(made_id, made, kind.status_of(outputs.wire()))
    assert server.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (made.name,)) == 1


def test_a_created_role_has_exactly_its_declared_attributes_and_memberships(server: Server) -> None:
    """Of a role the stack made, an undeclared attribute, group or member is drift that update revokes."""
    kind = server.kind(RoleKind)
    group, other_group, member, stranger = (make_role(server, prefix) for prefix in ("it_g", "it_og", "it_m", "it_s"))
    spec = RoleSpec(name=unique("it_exact"), member_of=[group], members=[member], admin_member=True)
    role_id, outputs = kind.create(spec)
    assert outputs.adopted is False
    server.run("GRANT {role} TO {member}", role=spec.name, member=member)  # the member declares it from its side
    assert server.scalar("SELECT pg_has_role('postgres', %s, 'MEMBER')", (spec.name,)) is True
    assert changes(kind, spec, kind.observe(role_id, spec)) == []

    server.run("GRANT {group} TO {role}", group=other_group, role=spec.name)
    server.run("GRANT {role} TO {stranger}", role=spec.name, stranger=stranger)
    server.run("ALTER ROLE {role} CREATEDB", role=spec.name)
    drifted = kind.observe(role_id, spec)
    assert changes(kind, spec, drifted) == ["createDb", "memberOf", "members"]
    assert drifted is not None and drifted.inputs["memberOf"] == [group, other_group]
    assert drifted.inputs["members"] == [member, stranger]
    kind.update(role_id, recorded(spec, outputs, drifted), spec)
    assert changes(kind, spec, kind.observe(role_id, spec)) == []
    assert server.scalar("SELECT pg_has_role(%s, %s, 'MEMBER')", (spec.name, other_group)) is False
    assert server.scalar("SELECT pg_has_role(%s, %s, 'MEMBER')", (stranger, spec.name)) is False
    assert server.scalar("SELECT pg_has_role(%s, %s, 'MEMBER')", (member, spec.name)) is True
    server.run("REVOKE {role} FROM {member}", role=spec.name, member=member)
    kind.delete(role_id, spec, kind.status_of(outputs.wire()))
    assert server.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (spec.name,)) == 0


def test_a_failed_create_role_never_shows_the_password_or_its_verifier(server: Server) -> None:
    """As an admin that may create roles but is no superuser (Supabase's postgres): a BYPASSRLS role is
    refused by PostgreSQL 15, and the error says so without the statement that carried the verifier."""
    admin, admin_password = unique("it_admin"), "it-Admin-pass-0123"
    server.run("CREATE ROLE {role} LOGIN CREATEROLE", role=admin)
    server.run(f"ALTER ROLE {{role}} PASSWORD '{admin_password}'", role=admin)
    password = "it-Never-shown-" + uuid.uuid4().hex[:8]
    spec = RoleSpec(name=unique("it_bypass"), login=True, password=password, bypass_rls=True)
    with pytest.raises(ProviderError) as refused:
        server.kind(RoleKind, admin, admin_password).create(spec)
    message = str(refused.value)
    assert "must be superuser to create bypassrls users" in message
    assert password not in message and "SCRAM-SHA-256" not in message
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    assert server.scalar("SELECT count(*) FROM pg_roles WHERE rolname = %s", (spec.name,)) == 0


def test_a_role_that_owns_objects_is_not_dropped(server: Server) -> None:
    kind = server.kind(RoleKind)
    spec = RoleSpec(name=unique("it_owner"))
    role_id, _ = kind.create(spec)
    table = unique("it_owned")
    server.run("CREATE TABLE public.{table} (id int)", table=table)
    server.run("ALTER TABLE public.{table} OWNER TO {role}", table=table, role=spec.name)
    with pytest.raises(ProviderError, match=f"owns table {table}"):
        kind.delete(role_id, spec)
    assert kind.observe(role_id, spec) is not None
    server.run("DROP TABLE public.{table}", table=table)
    kind.delete(role_id, spec)
    assert kind.observe(role_id, spec) is None


# --- StatisticsAccess ----------------------------------------------------------------------------------


def test_statistics_are_withheld_from_the_app_and_the_reader_can_still_be_dropped(server: Server) -> None:
    """Every database: the app role reads no statistic (a grant by hand is drift that update revokes), the
    reader reads them; delete withdraws the reader's grants, so that the stack can drop the role next."""
    app_role, reader = make_role(server, "it_app"), make_role(server, "it_monitor")
    kind = server.kind(StatisticsAccessKind)
    spec = StatisticsAccessSpec(readers=[reader], withheld_from=["PUBLIC", app_role])
    resource_id, status = kind.create(spec)
    assert status.exposed == [] and status.unrevocable == []
    for view in ("pg_catalog.pg_stat_activity", "pg_catalog.pg_locks", "pg_catalog.pg_stat_user_tables"):
        assert server.scalar("SELECT has_table_privilege(%s, %s, 'SELECT')", (app_role, view)) is False
        assert server.scalar("SELECT has_table_privilege(%s, %s, 'SELECT')", (reader, view)) is True
    server.run("GRANT SELECT ON pg_catalog.pg_stat_activity TO {role}", role=app_role)
    assert kind.status(spec).exposed == [f"{DATABASE}: pg_stat_activity"]
    assert kind.update(resource_id, {}, spec).exposed == []
    kind.delete(resource_id, spec)
    server.run("DROP ROLE {reader}; DROP ROLE {app_role}", reader=reader, app_role=app_role)


# --- Grant ---------------------------------------------------------------------------------------------

GRANT_CASES: list[tuple[dict[str, Any], str, list[str]]] = [
    (
        {"object_type": "table", "privileges": ["select", "INSERT"], "objects": ["jobs", "invoices"]},
        "REVOKE INSERT ON {schema}.invoices FROM {grantee}",
        ["SELECT"],
    ),
    (
        {"object_type": "all_tables_in_schema", "privileges": ["SELECT", "UPDATE"]},
        "REVOKE SELECT ON {schema}.jobs FROM {grantee}",
        ["UPDATE"],
    ),
    ({"object_type": "schema", "privileges": ["USAGE"]}, "REVOKE USAGE ON SCHEMA {schema} FROM {grantee}", []),
    (
        {"object_type": "sequence", "privileges": ["USAGE", "SELECT"], "objects": ["jobs_seq"]},
        "REVOKE USAGE ON SEQUENCE {schema}.jobs_seq FROM {grantee}",
        ["SELECT"],
    ),
    (
        {"object_type": "all_sequences_in_schema", "privileges": ["USAGE"]},
        "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {grantee}",
        [],
    ),
    (
        {"object_type": "function", "privileges": ["EXECUTE"], "objects": ["current_company_id()"]},
        "REVOKE EXECUTE ON FUNCTION {schema}.current_company_id() FROM {grantee}",
        [],
    ),
    (
        {"object_type": "all_functions_in_schema", "privileges": ["EXECUTE"], "with_grant_option": True},
        "REVOKE GRANT OPTION FOR EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} FROM {grantee}",
        [],
    ),
    (
        {"object_type": "database", "privileges": ["CONNECT", "TEMP"]},
        "REVOKE TEMPORARY ON DATABASE {database} FROM {grantee}",
        ["CONNECT"],
    ),
]


@pytest.mark.parametrize(
    ("declared", "drift", "left"), GRANT_CASES, ids=[case[0]["object_type"] for case in GRANT_CASES]
)
def test_grant_round_trip(server: Server, app: str, declared: dict[str, Any], drift: str, left: list[str]) -> None:
    kind = server.kind(GrantKind)
    grantee = make_role(server, "it_api")
    schema = None if declared["object_type"] == "database" else app
    spec = GrantSpec(grantee=grantee, schema_name=schema, **declared)
    grant_id, outputs = kind.create(spec)
    assert changes(kind, spec, kind.observe(grant_id, spec)) == []

    server.run(drift, schema=app, grantee=grantee, database=DATABASE)
    observed = kind.observe(grant_id, spec)
    assert observed is not None and observed.inputs["privileges"] == left
    assert changes(kind, spec, observed) == ["privileges"]

    kind.update(grant_id, recorded(spec, outputs, observed), spec)
    assert changes(kind, spec, kind.observe(grant_id, spec)) == []

    kind.delete(grant_id, spec)
    observed = kind.observe(grant_id, spec)
    assert observed is not None and observed.inputs["privileges"] == []
    server.run("DROP ROLE {grantee}", grantee=grantee)  # fails if delete left any privilege behind


def test_grant_update_revokes_what_is_no_longer_declared(server: Server, app: str) -> None:
    kind = server.kind(GrantKind)
    grantee = make_role(server, "it_api")
    wide = GrantSpec(
        grantee=grantee,
        privileges=["SELECT", "INSERT"],
        object_type="table",
        schema_name=app,
        objects=["jobs", "invoices"],
    )
    grant_id, outputs = kind.create(wide)
    narrow = wide.model_copy(update={"privileges": ["SELECT"], "objects": ["jobs"]})
    kind.update(grant_id, recorded(wide, outputs), narrow)
    assert changes(kind, narrow, kind.observe(grant_id, narrow)) == []

    def has(table: str, privilege: str) -> bool:
        return bool(server.scalar("SELECT has_table_privilege(%s, %s, %s)", (grantee, f"{app}.{table}", privilege)))

    assert (has("jobs", "SELECT"), has("jobs", "INSERT"), has("invoices", "SELECT")) == (True, False, False)
    kind.delete(grant_id, narrow)
    server.run("DROP ROLE {grantee}", grantee=grantee)


def test_grant_on_all_tables_gives_a_view_only_what_it_can_take(server: Server, app: str) -> None:
    """A view over an aggregate takes no INSERT, UPDATE or DELETE: the grant never gives them to it, and one
    given by hand is drift that update revokes; an updatable view and the tables get all of them."""
    kind = server.kind(GrantKind)
    grantee = make_role(server, "it_api")
    server.run(
        "CREATE VIEW {schema}.job_count AS SELECT count(*) AS n FROM {schema}.jobs;"
        "CREATE VIEW {schema}.job_ids AS SELECT id FROM {schema}.jobs",
        schema=app,
    )
    writes = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    spec = GrantSpec(grantee=grantee, privileges=writes, object_type="all_tables_in_schema", schema_name=app)
    grant_id, outputs = kind.create(spec)

    def held(relation: str) -> list[str]:
        return [
            p
            for p in writes
            if server.scalar("SELECT has_table_privilege(%s, %s, %s)", (grantee, f"{app}.{relation}", p))
        ]

    assert {relation: held(relation) for relation in ("jobs", "job_ids", "job_count")} == {
        "jobs": writes, "job_ids": writes, "job_count": ["SELECT"]
    }  # fmt: skip
    assert changes(kind, spec, kind.observe(grant_id, spec)) == []
    server.run("GRANT INSERT, DELETE ON {schema}.job_count TO {grantee}", schema=app, grantee=grantee)
    observed = kind.observe(grant_id, spec)
    assert observed is not None and observed.inputs["privileges"] == ["SELECT", "UPDATE"]
    kind.update(grant_id, recorded(spec, outputs, observed), spec)
    assert held("job_count") == ["SELECT"]
    assert changes(kind, spec, kind.observe(grant_id, spec)) == []
    kind.delete(grant_id, spec)
    server.run("DROP VIEW {schema}.job_count, {schema}.job_ids; DROP ROLE {grantee}", schema=app, grantee=grantee)


def test_grant_delete_revokes_exactly_what_the_stack_granted(server: Server, app: str) -> None:
    """As Supabase's USAGE on public for anon: a privilege the grantee held before the stack stays."""
    kind = server.kind(GrantKind)
    grantee = make_role(server, "it_api")
    server.run("GRANT SELECT ON {schema}.jobs TO {grantee}", schema=app, grantee=grantee)
    spec = GrantSpec(grantee=grantee, privileges=["SELECT", "INSERT"], object_type="table", schema_name=app,
                     objects=["jobs", "invoices"])  # fmt: skip
    grant_id, outputs = kind.create(spec)
    assert outputs.granted == ["SELECT invoices", "INSERT jobs", "INSERT invoices"]
    kind.delete(grant_id, spec, kind.status_of(outputs.wire()))

    def has(table: str, privilege: str) -> bool:
        return bool(server.scalar("SELECT has_table_privilege(%s, %s, %s)", (grantee, f"{app}.{table}", privilege)))

    assert [has("jobs", "SELECT"), has("invoices", "SELECT"), has("jobs", "INSERT"), has("invoices", "INSERT")] == [
        True, False, False, False,
    ]  # fmt: skip
    server.run("REVOKE SELECT ON {schema}.jobs FROM {grantee}; DROP ROLE {grantee}", schema=app, grantee=grantee)


def test_grant_observes_a_dropped_object_and_a_dropped_grantee(server: Server, app: str) -> None:
    kind = server.kind(GrantKind)
    grantee = make_role(server, "it_api")
    table = unique("it_gone")
    server.run("CREATE TABLE {schema}.{table} (id int)", schema=app, table=table)
    spec = GrantSpec(
        grantee=grantee, privileges=["SELECT"], object_type="table", schema_name=app, objects=["jobs", table]
    )
    grant_id, _ = kind.create(spec)
    server.run("DROP TABLE {schema}.{table}", schema=app, table=table)
    assert changes(kind, spec, kind.observe(grant_id, spec)) == ["objects"]
    kind.delete(grant_id, spec)
    server.run("DROP ROLE {grantee}", grantee=grantee)
    assert kind.observe(grant_id, spec) is None


def test_an_object_a_grant_covers_dropped_by_hand_is_drift_and_made_again_gets_the_grant(
    server: Server, app: str
) -> None:
    """ALL TABLES IN SCHEMA with `covers`: a covered view dropped by hand (its own resource makes it again in the
    same `up`, before the grant) is drift, so the grant runs again and the new view is not left without it."""
    kind = server.kind(GrantKind)
    grantee = make_role(server, "it_api")
    view = unique("it_view")
    make_view = "CREATE VIEW {schema}.{view} AS SELECT id FROM {schema}.jobs"
    server.run(make_view, schema=app, view=view)
    spec = GrantSpec(
        grantee=grantee, privileges=["SELECT"], object_type="all_tables_in_schema", schema_name=app,
        covers=["jobs", view],
    )  # fmt: skip
    grant_id, outputs = kind.create(spec)
    server.run("DROP VIEW {schema}.{view}", schema=app, view=view)
    observed = kind.observe(grant_id, spec)
    assert changes(kind, spec, observed) == ["covers"]
    server.run(make_view, schema=app, view=view)
    kind.update(grant_id, recorded(spec, outputs, observed), spec)
    assert server.scalar("SELECT has_table_privilege(%s, %s, 'SELECT')", (grantee, f"{app}.{view}")) is True
    assert changes(kind, spec, kind.observe(grant_id, spec)) == []
    kind.delete(grant_id, spec)
    server.run("DROP VIEW {schema}.{view}; DROP ROLE {grantee}", schema=app, view=view, grantee=grantee)


def test_a_grant_on_a_schema_not_made_yet_is_refused_not_recorded_as_done(server: Server) -> None:
    """Declared before its schema, a grant found nothing to grant on and recorded its privileges as given."""
    kind = server.kind(GrantKind)
    grantee = make_role(server, "it_api")
    spec = GrantSpec(grantee=grantee, privileges=["USAGE"], object_type="schema", schema_name=unique("it_later"))
    with pytest.raises(ProviderError, match=r"the schema does not exist; declare it first"):
        kind.create(spec)
    server.run("DROP ROLE {grantee}", grantee=grantee)


def test_grant_spec_is_checked(server: Server) -> None:
    with pytest.raises(ValidationError, match="EXECUTE cannot be granted on table"):
        GrantSpec(grantee="x", privileges=["EXECUTE"], object_type="table", schema_name="s", objects=["t"])
    with pytest.raises(ValidationError, match="argument types"):
        GrantSpec(grantee="x", privileges=["EXECUTE"], object_type="function", schema_name="s", objects=["f"])
    with pytest.raises(ValidationError, match="schemaName is required"):
        GrantSpec(grantee="x", privileges=["USAGE"], object_type="schema")


# --- DefaultPrivileges ---------------------------------------------------------------------------------


def test_default_privileges_round_trip(server: Server, app: str) -> None:
    kind = server.kind(DefaultPrivilegesKind)
    owner, grantee = make_role(server, "it_owner"), make_role(server, "it_api")
    server.run("GRANT USAGE, CREATE ON SCHEMA {schema} TO {owner}", schema=app, owner=owner)
    spec = DefaultPrivilegesSpec(
        owner=owner, schema_name=app, grantee=grantee, object_type="tables", privileges=["SELECT", "INSERT"]
    )
    defaults_id, outputs = kind.create(spec)
    assert changes(kind, spec, kind.observe(defaults_id, spec)) == []

    table = unique("it_new")
    server.run(
        "SET ROLE {owner}; CREATE TABLE {schema}.{table} (id int); RESET ROLE", owner=owner, schema=app, table=table
    )
    assert server.scalar("SELECT has_table_privilege(%s, %s, 'INSERT')", (grantee, f"{app}.{table}")) is True

    server.run(
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} REVOKE INSERT ON TABLES FROM {grantee}",
        owner=owner,
        schema=app,
        grantee=grantee,
    )
    observed = kind.observe(defaults_id, spec)
    assert observed is not None and observed.inputs["privileges"] == ["SELECT"]
    assert changes(kind, spec, observed) == ["privileges"]
    kind.update(defaults_id, recorded(spec, outputs, observed), spec)
    assert changes(kind, spec, kind.observe(defaults_id, spec)) == []

    read_only = spec.model_copy(update={"privileges": ["SELECT"]})
    kind.update(defaults_id, recorded(spec, outputs), read_only)
    assert changes(kind, spec, kind.observe(defaults_id, spec)) == ["privileges"]  # INSERT was revoked

    kind.delete(defaults_id, read_only)
    assert server.scalar("SELECT count(*) FROM pg_default_acl WHERE defaclrole = %s::regrole", (owner,)) == 0
    server.run(
        "DROP TABLE {schema}.{table}; DROP OWNED BY {owner}; DROP ROLE {owner}", schema=app, table=table, owner=owner
    )
    server.run("DROP ROLE {grantee}", grantee=grantee)


# --- ExactPrivileges -----------------------------------------------------------------------------------


def test_exact_privileges_take_away_what_no_grant_declares_and_put_back_the_defaults(server: Server, app: str) -> None:
    """On tables every role's extra privilege goes (grant options too); on a schema the stack did not make
    only its own roles'; the admin's default privileges grant nothing, and delete puts back those found."""
    kind = server.kind(ExactPrivilegesKind)
    api, stranger = make_role(server, "it_api"), make_role(server, "it_stranger")
    server.run("GRANT ALL ON {schema}.jobs TO {api}", schema=app, api=api)
    server.run("GRANT SELECT ON {schema}.invoices TO {stranger} WITH GRANT OPTION", schema=app, stranger=stranger)
    server.run("GRANT CREATE, USAGE ON SCHEMA {schema} TO {api}, {stranger}", schema=app, api=api, stranger=stranger)
    server.run(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, TRUNCATE ON TABLES TO {api}", schema=app, api=api
    )
    spec = ExactPrivilegesSpec(
        roles=[api],
        objects=[
            ObjectPrivileges(object_type="table", schema_name=app, name="jobs", allowed={api: ["SELECT"]}),
            ObjectPrivileges(object_type="table", schema_name=app, name="invoices"),
            ObjectPrivileges(object_type="schema", name=app, owner="thorbis_no_such_owner", allowed={api: ["USAGE"]}),
        ],
        default_schemas=[app],
    )
    observed = kind.observe("exact", spec)
    assert observed is not None and changes(kind, spec, observed) == ["undeclared"]
    undeclared = observed.status.undeclared or []
    assert (
        f"{api}: TRUNCATE on table {app}.jobs" in undeclared and f"{api}: SELECT on table {app}.jobs" not in undeclared
    )
    assert f"{stranger}: SELECT on table {app}.invoices" in undeclared
    assert f"{api}: CREATE on schema {app}" in undeclared
    assert not [item for item in undeclared if item.startswith(f"{stranger}:") and "schema" in item]  # not ours
    assert f"{api}: TRUNCATE on new tables of postgres in schema {app} (default privileges)" in undeclared

    resource_id, outputs = kind.create(spec)
    assert outputs.undeclared == [] and {(g.grantee, g.privilege) for g in outputs.found_defaults or []} == {
        (api, "SELECT"), (api, "TRUNCATE"),
    }  # fmt: skip
    assert changes(kind, spec, kind.observe(resource_id, spec)) == []

    def has(role: str, privilege: str, table: str = "jobs") -> bool:
        return bool(server.scalar("SELECT has_table_privilege(%s, %s, %s)", (role, f"{app}.{table}", privilege)))

    assert (has(api, "SELECT"), has(api, "INSERT"), has(stranger, "SELECT", "invoices")) == (True, False, False)
    assert server.scalar("SELECT has_schema_privilege(%s, %s, 'CREATE')", (api, app)) is False
    assert server.scalar("SELECT has_schema_privilege(%s, %s, 'CREATE')", (stranger, app)) is True

    kind.delete(resource_id, spec, kind.status_of(outputs.wire()))  # the defaults as they were found
    made = unique("it_new")
    server.run("CREATE TABLE {schema}.{table} (id int)", schema=app, table=made)
    assert (has(api, "SELECT", made), has(api, "TRUNCATE", made)) == (True, True)
    server.run("DROP TABLE {schema}.{table}", schema=app, table=made)
    server.run("ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES FROM {api}", schema=app, api=api)
    server.run("REVOKE ALL ON SCHEMA {schema} FROM {api}, {stranger}", schema=app, api=api, stranger=stranger)
    server.run("REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {api}, {stranger}", schema=app, api=api,
               stranger=stranger)  # fmt: skip
    server.run("DROP ROLE {api}; DROP ROLE {stranger}", api=api, stranger=stranger)


# --- Extension -----------------------------------------------------------------------------------------


def test_extension_round_trip_schema_and_version(server: Server) -> None:
    kind = server.kind(ExtensionKind)
    home, elsewhere = unique("it_ext"), unique("it_ext")
    server.run("CREATE SCHEMA {home}; CREATE SCHEMA {elsewhere}", home=home, elsewhere=elsewhere)
    spec = ExtensionSpec(name="pg_trgm", schema_name=home, version="1.5")
    extension_id, outputs = kind.create(spec)
    assert outputs == ExtensionStatus(adopted=False, installed_schema=home, installed_version="1.5")
    assert changes(kind, spec, kind.observe(extension_id, spec)) == []

    server.run("ALTER EXTENSION pg_trgm SET SCHEMA {elsewhere}", elsewhere=elsewhere)
    observed = kind.observe(extension_id, spec)
    assert changes(kind, spec, observed) == ["schemaName"]
    kind.update(extension_id, recorded(spec, outputs, observed), spec)
    assert changes(kind, spec, kind.observe(extension_id, spec)) == []

    newer = spec.model_copy(update={"version": "1.6"})
    assert kind.update(extension_id, recorded(spec, outputs), newer).installed_version == "1.6"
    assert changes(kind, newer, kind.observe(extension_id, newer)) == []

    table = unique("it_docs")
    server.run(
        "CREATE TABLE public.{table} (body text); CREATE INDEX ON public.{table} USING gin (body {home}.gin_trgm_ops)",
        table=table,
        home=home,
    )
    with pytest.raises(ProviderError, match=r"refusing to drop extension pg_trgm: objects outside it depend on it"):
        kind.delete(extension_id, newer)
    assert kind.observe(extension_id, newer) is not None
    server.run("DROP TABLE public.{table}", table=table)
    kind.delete(extension_id, newer)
    assert kind.observe(extension_id, newer) is None


def test_pg_cron_is_registered_in_pg_catalog_and_its_jobs_are_not_dropped_with_it(server: Server) -> None:
    """As declared (sql/access.yaml) and as Supabase has it: the extension in pg_catalog, never in public;
    its objects in its own schema, cron."""
    kind = server.kind(ExtensionKind)
    spec = next(ExtensionSpec(name=e.name, schema_name=e.schema_name) for e in load_access().extensions
                if e.name == "pg_cron")  # fmt: skip
    extension_id, _ = kind.create(spec)
    assert changes(kind, spec, kind.observe(extension_id, spec)) == []
    assert server.scalar("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_cron'") == (
        "pg_catalog"
    )
    assert server.scalar(
        "SELECT count(*) FROM pg_proc WHERE proname = 'schedule' AND pronamespace = 'cron'::regnamespace"
    )

    server.run("SELECT cron.schedule('it-never', '0 0 1 1 *', 'SELECT 1')")
    with pytest.raises(ProviderError, match=r"cron\.job hold rows"):
        kind.delete(extension_id, spec)
    server.run("SELECT cron.unschedule('it-never')")
    kind.delete(extension_id, spec)
    assert kind.observe(extension_id, spec) is None


def test_an_extension_installed_before_the_stack_is_never_moved_or_dropped(server: Server) -> None:
    kind = server.kind(ExtensionKind)
    theirs, declared_schema = unique("it_theirs"), unique("it_ours")
    server.run("CREATE SCHEMA {theirs}; CREATE SCHEMA {ours}", theirs=theirs, ours=declared_schema)
    server.run("CREATE EXTENSION ltree WITH SCHEMA {theirs}", theirs=theirs)
    spec = ExtensionSpec(name="ltree", schema_name=declared_schema)
    extension_id, outputs = kind.create(spec)
    assert outputs.adopted is True and outputs.installed_schema == theirs
    adopted = kind.status_of(outputs.wire())
    assert changes(kind, spec, kind.observe(extension_id, spec, adopted)) == []
    kind.update(extension_id, recorded(spec, outputs), spec)
    kind.delete(extension_id, spec, adopted)
    assert server.scalar("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'ltree'") == theirs
    server.run("DROP EXTENSION ltree")


def test_an_extension_only_a_superuser_may_create_is_named_with_where_to_enable_it(server: Server) -> None:
    admin, password = unique("it_admin"), "it-Admin-pass-0123"
    server.run("CREATE ROLE {role} LOGIN CREATEROLE", role=admin)
    server.run(f"ALTER ROLE {{role}} PASSWORD '{password}'", role=admin)
    server.run(f"GRANT CREATE ON DATABASE {DATABASE} TO {{role}}", role=admin)
    home = unique("it_home")
    server.run("CREATE SCHEMA {home} AUTHORIZATION {role}", home=home, role=admin)
    kind = server.kind(ExtensionKind, admin, password)
    with pytest.raises(ProviderError, match=r"hypopg can only be created by a superuser.*Database > Extensions"):
        kind.create(ExtensionSpec(name="hypopg", schema_name=home))
    trusted = ExtensionSpec(name="pg_trgm", schema_name=home)  # a trusted extension needs no superuser
    made, _ = kind.create(trusted)
    kind.delete(made, trusted)
    server.run("DROP SCHEMA {home}; DROP OWNED BY {role}; DROP ROLE {role}", home=home, role=admin)


def test_a_missing_extension_is_named_with_what_to_install(server: Server) -> None:
    kind = server.kind(ExtensionKind)
    with pytest.raises(
        ProviderError, match=r"extension thorbis_no_such_ext is not available.*postgresql-15-thorbis_no"
    ):
        kind.create(ExtensionSpec(name="thorbis_no_such_ext"))
    with pytest.raises(ProviderError, match=r"pg_trgm has no version 9\.9"):
        kind.create(ExtensionSpec(name="pg_trgm", version="9.9"))
    assert kind.observe("pg_trgm", ExtensionSpec(name="pg_trgm")) is None
