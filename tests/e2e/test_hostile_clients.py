"""Tenant isolation against careless and hostile clients, on a real stack, as an attacker tries it:
what one client leaves on a pooled server connection, what a unique key answers about another company's
rows, what the server's statistics show of other sessions, and where the stack's passwords end up.

The session's database stack (tests/e2e/conftest.py: local platform, PgBouncer in transaction mode with
10 + 2 server connections). Applications log in as `authenticator`, through PgBouncer, as in production.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.database.declared.model import ROW_ID, TENANT_COLUMN, load_schema
from components.database.declared.operations import load_monitoring
from components.platform.routing import read_database
from testbed.stacks import LiveStack
from tests.e2e.rows import Synthesizer, World, check_choices, relation, typed_value, where_key
from tests.e2e.test_tenant_isolation import as_company, authenticator, claims

pytestmark = pytest.mark.e2e
DATABASE = "thorbis"  # the stack's database (testbed.stacks.configure); its read pool is read_database(DATABASE)
SCHEMA = load_schema()
SYNTHESIZER = Synthesizer(SCHEMA)
Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def admin(database_stack: LiveStack) -> Iterator[Conn]:
    """postgres, a superuser: RLS and privileges do not apply to it."""
    with psycopg.connect(**database_stack.admin(), autocommit=True) as conn:  # type: ignore[arg-type]
        yield conn


# 1. Session state on a pooled server connection -------------------------------------------------------

#: More clients than PgBouncer has server connections (defaultPoolSize 10 + reservePoolSize 2), each
#: running transactions after the one client that left something behind: 30 x 8 = 240 transactions.
CLIENTS, ROUNDS = 30, 8
SERVER_CONNECTIONS = 12
ADVISORY_KEY = 110_011
#: What one client leaves behind, each statement as a careless ORM or a hostile client sends it, in a
#: transaction that it commits (session-level state outlives that: only the pooler's reset can end it).
LEFT_BEHIND: dict[str, list[str]] = {
    "claims set with set_config(..., false)": [
        "SELECT set_config('request.jwt.claims', '{\"company_id\": \"a0000000-0000-4000-8000-000000000001\"}', false)"
    ],
    "claims set with SET": ['SET request.jwt.claims = \'{"company_id": "a0000000-0000-4000-8000-000000000001"}\''],
    "role (SET ROLE)": ["SET ROLE service_role"],
    "session settings": ["SET thorbis_it.left_behind = 'yes'", "SET default_transaction_read_only = on"],
    "search_path": ["SET search_path = pg_temp, public, extensions"],
    "temporary objects": [  # a table that shadows public.customers for unqualified names, and a function
        "CREATE TEMPORARY TABLE customers (id uuid, company_id uuid)",
        "CREATE FUNCTION pg_temp.current_company_id() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'",
    ],
    "prepared statements": ["PREPARE left_behind AS SELECT 1"],
    "advisory locks": [f"SELECT pg_advisory_lock({ADVISORY_KEY})"],
    "LISTEN": ["LISTEN left_behind"],
    "cursor WITH HOLD": ["DECLARE left_behind CURSOR WITH HOLD FOR SELECT 1"],
}
#: What a transaction that sets nothing sees of its session; the same on every server connection unless
#: something of another client's survived there. The advisory key is free to share unless a session holds
#: it exclusively (the probes share it among themselves; a session's own lock never blocks it).
FINGERPRINT = sql.SQL("""
SELECT current_user::text, session_user::text,
       coalesce(current_setting('request.jwt.claims', true), ''),
       coalesce(current_setting('thorbis_it.left_behind', true), ''),
       current_setting('default_transaction_read_only'),
       current_setting('search_path'),
       (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
         + (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()),
       (SELECT count(*) FROM pg_prepared_statements),
       (SELECT count(*) FROM pg_cursors),
       (SELECT count(*) FROM pg_listening_channels()),
       pg_try_advisory_xact_lock_shared({key})
""").format(key=sql.Literal(ADVISORY_KEY))


def fingerprint(conn: Conn) -> tuple[int, tuple[Any, ...]]:
    """The server connection's pid and what a transaction that sets nothing sees there."""
    with conn.transaction():
        row = conn.execute(FINGERPRINT).fetchone()
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None and pid is not None
    return pid[0], tuple(row)


@pytest.fixture(scope="module")
def clean(database_stack: LiveStack) -> tuple[Any, ...]:
    """A new session's fingerprint, straight to the server (no pooler)."""
    with authenticator(database_stack) as conn:
        return fingerprint(conn)[1]


def reconnect_servers(stack: LiveStack) -> None:
    """PgBouncer closes its server connections as they are released: nothing a test left outlives it."""
    with stack.pgbouncer_console() as console:
        console.execute("RECONNECT")


@pytest.mark.parametrize("pool", [DATABASE, read_database(DATABASE)])  # PgBouncer's write and read pools
@pytest.mark.parametrize("state", sorted(LEFT_BEHIND))
def test_nothing_a_client_leaves_on_a_pooled_server_connection_reaches_other_clients(
    state: str, pool: str, database_stack: LiveStack, clean: tuple[Any, ...]
) -> None:
    pooled = database_stack.pgbouncer_port
    try:
        with authenticator(database_stack, pooled, pool) as leaker:
            with leaker.transaction():
                for statement in LEFT_BEHIND[state]:
                    leaker.execute(statement)
                left_on = backend_pid(leaker)

            def client(_: int) -> list[tuple[int, tuple[Any, ...]]]:
                with authenticator(database_stack, pooled, pool) as conn:
                    return [fingerprint(conn) for _ in range(ROUNDS)]

            with ThreadPoolExecutor(max_workers=CLIENTS) as clients:
                seen = [result for results in clients.map(client, range(CLIENTS)) for result in results]
    finally:
        reconnect_servers(database_stack)
    assert len(seen) >= 200
    servers = {pid for pid, _ in seen}
    assert left_on in servers, "no later transaction ran on the server connection the client left its state on"
    assert len(servers) <= SERVER_CONNECTIONS < CLIENTS
    assert [found for _, found in seen if found != clean] == [], f"{state} reached other clients"


def backend_pid(conn: Conn) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_a_client_cannot_take_another_session_authorization(database_stack: LiveStack) -> None:
    """SET SESSION AUTHORIZATION, which DISCARD ALL would also undo, is for superusers only."""
    with (
        authenticator(database_stack, database_stack.pgbouncer_port) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SET SESSION AUTHORIZATION service_role")


# 2. What a unique key answers about another company's rows ---------------------------------------------


@dataclass
class Companies:
    """A attacks; B's rows exist; C's rows existed (read, then C was deleted): values of their shape that
    no row holds any more, so each attack is compared with the same attack on values nobody has."""

    a: World
    b: World
    gone: World

    @property
    def a_id(self) -> str:
        return str(self.a[SYNTHESIZER.tenant_table.name]["id"])


UNIQUE_KEYS_QUERY = """
SELECT t.relname, k.relname,
       ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY u(n, o)
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = u.n ORDER BY u.o)
FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class k ON k.oid = i.indexrelid
WHERE i.indisunique AND t.relnamespace = 'public'::regnamespace AND t.relkind IN ('r', 'p')
  AND NOT t.relispartition AND t.relrowsecurity
ORDER BY 1, 2
"""


def unique_keys(admin: Conn) -> list[tuple[str, str, list[str]]]:
    """Every unique key of every table under row level security, from the catalog."""
    return [(table, key, list(columns)) for table, key, columns in admin.execute(UNIQUE_KEYS_QUERY)]


def attacked(table: str, key: str, columns: list[str]) -> bool:
    """All but the keys the data declares global with a reason, and those on the row's own random id."""
    return key not in SCHEMA.table(table).global_keys and ROW_ID not in columns


def fill_keys(admin: Conn, world: World) -> None:
    """Give every attacked key's nullable columns a value in the world's rows (a NULL collides with nothing)."""
    for table_name, key, columns in unique_keys(admin):
        table, row = SCHEMA.table(table_name), world[table_name]
        empty = [c for c in columns if row[c] is None] if attacked(table_name, key, columns) else []
        if not empty:
            continue
        choices, tag = check_choices(table), secrets.token_hex(4)
        values = {c: choices.get(c) or typed_value(table.column(c).type, c, tag, i) for i, c in enumerate(empty)}
        condition, params = where_key(table, row)
        statement = sql.SQL("UPDATE {} AS r SET ({}) = ROW({}) WHERE {} RETURNING to_jsonb(r.*)").format(
            relation(table_name),
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
            condition,
        )
        updated = admin.execute(statement, [*values.values(), *params]).fetchone()
        assert updated is not None
        world[table_name] = dict(updated[0])


@pytest.fixture(scope="module")
def companies(admin: Conn) -> Companies:
    with admin.transaction():
        a, b, gone = (SYNTHESIZER.world(admin) for _ in range(3))
        for world in (b, gone):
            fill_keys(admin, world)
        for table in reversed(SCHEMA.in_dependency_order()):  # RESTRICT references: children first
            condition, params = where_key(table, gone[table.name])
            admin.execute(sql.SQL("DELETE FROM {} WHERE {}").format(relation(table.name), condition), params)
    return Companies(a, b, gone)


Outcome = tuple[str, str] | None  # (SQLSTATE, constraint) of the refusal; None when the statement succeeded


def outcome(conn: Conn, statement: sql.Composed, params: list[str]) -> Outcome:
    """How the statement ends; rolled back either way, so each attempt meets the same rows."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(statement, params)
    except psycopg.Error as error:
        return (error.sqlstate or "", error.diag.constraint_name or "")
    return None


def key_values(columns: list[str], row: dict[str, Any]) -> dict[str, Any]:
    return {column: row[column] for column in columns if column != TENANT_COLUMN}


def insert_with(table: str, values: dict[str, Any]) -> tuple[sql.Composed, list[str]]:
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        relation(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    return statement, [str(value) for value in values.values()]


def update_to(table: str, own: dict[str, Any], values: dict[str, Any]) -> tuple[sql.Composed, list[str]]:
    condition, params = where_key(SCHEMA.table(table), own)
    statement = sql.SQL("UPDATE {} SET ({}) = ROW({}) WHERE {}").format(
        relation(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
        condition,
    )
    return statement, [*(str(value) for value in values.values()), *params]


def answers(app: Conn, table_name: str, columns: list[str], companies: Companies) -> list[str]:
    """Inserting a row, or changing A's own row, to take the key values of B's row, against the same with
    the values of C's (which no row holds): how each ends, where the two differ."""
    theirs, nobodys = (key_values(columns, world[table_name]) for world in (companies.b, companies.gone))
    new_row = SYNTHESIZER.values(SCHEMA.table(table_name), companies.a)
    own_row = companies.a[table_name]
    found = []
    with as_company(app, companies.a_id):
        for what, with_theirs, with_nobodys in (
            ("insert", insert_with(table_name, {**new_row, **theirs}), insert_with(table_name, {**new_row, **nobodys})),
            ("update", update_to(table_name, own_row, theirs), update_to(table_name, own_row, nobodys)),
        ):
            ended, baseline = outcome(app, *with_theirs), outcome(app, *with_nobodys)
            if ended != baseline:
                found.append(f"{what}: {ended} with B's values, {baseline} with values no row has")
    return found


def test_no_unique_key_answers_whether_a_value_exists_among_another_companys_rows(
    admin: Conn, companies: Companies, database_stack: LiveStack
) -> None:
    """As company A with its claims, through the pooler: a statement that gives a row the key values of B's
    row must end exactly as the same statement with values no row has any more (C's, deleted): the same
    success, or the same refusal by the same constraint. Keys of the company alone collide with its own
    rows only."""
    keys = [(table, key, columns) for table, key, columns in unique_keys(admin) if attacked(table, key, columns)]
    assert len(keys) >= 30, "the catalog shows fewer unique keys than the schema declares"
    found: dict[str, list[str]] = {}
    with authenticator(database_stack, database_stack.pgbouncer_port) as app:
        for table_name, key, columns in keys:
            if key_values(columns, companies.b[table_name]):
                found[key] = answers(app, table_name, columns, companies)
    assert {key: answer for key, answer in found.items() if answer} == {}, "keys that tell A about B's rows"


def test_the_keys_left_global_are_exactly_those_the_data_gives_a_reason_for(admin: Conn) -> None:
    spanning = [
        key for table, key, columns in unique_keys(admin) if TENANT_COLUMN not in columns and ROW_ID not in columns
    ]
    declared = {key for table in SCHEMA.tables for key in table.global_keys}
    parent_keyed = {  # a link table's key on its parent column: its write policy checks the parent first
        f"{table.name}_pkey" for table in SCHEMA.tables if table.tenancy == "parent" and table.parent
        and table.parent.column in table.primary_key
    }  # fmt: skip
    assert set(spanning) == declared | parent_keyed


# 3. Statistics and statement texts of other sessions -----------------------------------------------------

STATISTICS_QUERY = r"""
SELECT 'TABLE', c.oid::regclass::text FROM pg_class c
WHERE c.relkind = 'v' AND (c.relname LIKE 'pg\_stat%%' OR c.relname = 'pg_locks')
  AND c.relname NOT LIKE 'pg\_stats%%'
UNION ALL
SELECT 'FUNCTION', p.oid::regprocedure::text FROM pg_proc p
WHERE p.proname LIKE 'pg\_stat\_%%' OR p.proname IN ('pg_lock_status', 'pg_blocking_pids')
ORDER BY 1, 2
"""
APPLICATION_ROLES = ["authenticated", "anon", "authenticator", "service_role"]


def readable(admin: Conn, role: str) -> list[str]:
    """The statistics views and functions (in any schema: pg_catalog's and pg_stat_statements') `role` may use."""
    found = []
    for family, name in admin.execute(STATISTICS_QUERY):
        check = "has_table_privilege" if family == "TABLE" else "has_function_privilege"
        privilege = "SELECT" if family == "TABLE" else "EXECUTE"
        query = sql.SQL("SELECT {}(%s, %s, %s)").format(sql.Identifier(check))
        row = admin.execute(query, (role, name, privilege)).fetchone()
        if row and row[0]:
            found.append(name)
    return found


@pytest.mark.parametrize("role", APPLICATION_ROLES)
def test_the_applications_roles_read_no_statistic_of_the_server(admin: Conn, role: str) -> None:
    assert readable(admin, role) == []


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_another_sessions_statements_and_locks_stay_out_of_sight(
    role: str, admin: Conn, companies: Companies, database_stack: LiveStack
) -> None:
    """B's session runs statements whose text carries a secret (EXPLAIN and SET keep their literals) and
    holds an advisory lock; as `role` (A's claims for authenticated), every statistics view and the
    pg_stat_statements function are read where allowed: the secret and the lock's key are nowhere."""
    secret = secrets.token_hex(8)
    key = 1_000_000 + secrets.randbelow(1_000_000)
    pooled = database_stack.pgbouncer_port
    with authenticator(database_stack, pooled) as tenant_b, authenticator(database_stack, pooled) as attacker:
        tenant_b.execute("BEGIN")
        tenant_b.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims(companies.a_id),))
        tenant_b.execute("SET LOCAL ROLE authenticated")
        tenant_b.execute(f"SET LOCAL thorbis_it.note = '{secret}'")
        tenant_b.execute(f"EXPLAIN SELECT * FROM public.customers WHERE email = '{secret}@example.com'")
        tenant_b.execute(f"SELECT pg_advisory_xact_lock({key})")
        try:
            seen = everything_readable(admin, attacker, role, companies.a_id)
        finally:
            tenant_b.execute("ROLLBACK")
    assert secret not in seen and str(key) not in seen


def everything_readable(admin: Conn, conn: Conn, role: str, company: str) -> str:
    """The text of every row of every statistics view and function `role` may read, read as it (with the
    company's claims for authenticated); a function's booleans true, its other arguments NULL (all rows)."""
    calls: list[sql.Composable] = [
        sql.SQL(name) for family, name in admin.execute(STATISTICS_QUERY) if family == "TABLE"
    ]
    for name, arguments in admin.execute(
        "SELECT p.oid::regproc::text, ARRAY(SELECT CASE t WHEN 'boolean'::regtype THEN 'true' "
        "ELSE format('NULL::%s', t::regtype) END FROM unnest(p.proargtypes) t) "
        "FROM pg_proc p WHERE p.proretset AND (p.proname LIKE 'pg\\_stat\\_%' OR p.proname = 'pg_lock_status')"
    ):
        calls.append(sql.SQL("{}({})").format(sql.SQL(name), sql.SQL(", ").join(map(sql.SQL, arguments))))
    shown: list[str] = []
    for call in calls:
        with as_company(conn, company if role == "authenticated" else None):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            try:
                with conn.transaction():
                    shown += [repr(row) for row in conn.execute(sql.SQL("SELECT * FROM {}").format(call))]
            except psycopg.errors.InsufficientPrivilege:
                continue
    return "\n".join(shown)


def test_the_monitoring_role_still_reads_the_statistics_and_every_monitoring_view(
    database_stack: LiveStack, admin: Conn
) -> None:
    assert load_monitoring().readers == ["reporting"]
    views = [name for (name,) in admin.execute("SELECT viewname FROM pg_views WHERE schemaname = 'monitoring'")]
    assert views
    login = {**database_stack.admin(), "user": "reporting", "password": database_stack.passwords["reportingPassword"]}
    with psycopg.connect(**login, autocommit=True) as reporting:  # type: ignore[arg-type]
        for view in views:
            reporting.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier("monitoring", view))).fetchall()
        assert reporting.execute("SELECT count(*) FROM extensions.pg_stat_statements").fetchone() != (0,)
        assert reporting.execute("SELECT count(*) FROM pg_stat_activity").fetchone() != (0,)


# 4. Passwords ---------------------------------------------------------------------------------------------


def test_no_password_reaches_the_servers_statistics_or_its_log(database_stack: LiveStack, admin: Conn) -> None:
    """Every role's password went to the server as a SCRAM verifier (the platform's own too): the text of
    every statement pg_stat_statements kept, its files and the server's log hold none of them."""
    data = database_stack.state_dir / "postgres-primary" / "data"
    files = [*(data / "pg_stat_tmp").rglob("*"), *(data / "pg_stat").rglob("*"), data.parent / "postgres.log"]
    texts = {str(path): path.read_bytes().decode(errors="replace") for path in files if path.is_file()}
    assert any("pgss_query_texts" in name for name in texts), "pg_stat_statements keeps no file of texts here"
    texts["pg_stat_statements"] = "\n".join(
        query for (query,) in admin.execute("SELECT query FROM extensions.pg_stat_statements")
    )
    found = {
        key: [where for where, text in texts.items() if password in text]
        for key, password in database_stack.passwords.items()
    }
    assert {key: where for key, where in found.items() if where} == {}
