"""Tenant isolation on a real stack: the live catalog, then every table and every operation as one
company against another, then claims through PgBouncer's transaction pooling.

The session's database stack (tests/e2e/conftest.py: local platform, no replica). Two companies, A and
B, get one row in every table (tests/e2e/rows.py synthesizes them from sql/schema); the application's
path is then taken for real: log in as `authenticator`, set the claims for the transaction, SET LOCAL
ROLE authenticated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.connection import LOOPBACK
from components.database.base import bounded
from components.database.declared.access import load_access
from components.database.declared.model import IndexData, load_schema
from components.database.declared.search import SearchData, load_searches
from testbed.stacks import LiveStack
from tests.e2e.plans import leave_only_indexes
from tests.e2e.rows import (
    Synthesizer,
    World,
    delete_row,
    insert_only,
    key_of,
    reinsert,
    relation,
    update_row,
    visible_keys,
    where_key,
)

pytestmark = pytest.mark.e2e
SCHEMA = load_schema()
SYNTHESIZER = Synthesizer(SCHEMA)
TABLES = [table.name for table in SCHEMA.in_dependency_order()]
TENANT_POLICIES = ["DELETE", "INSERT", "SELECT", "UPDATE"]
SEARCHES = load_searches(SCHEMA)
READ_ALL = sorted(load_access().read_all)
Conn = psycopg.Connection[Any]


@dataclass
class Tenants:
    a: World
    b: World

    @property
    def a_id(self) -> str:
        return str(self.a[SYNTHESIZER.tenant_table.name]["id"])

    @property
    def b_id(self) -> str:
        return str(self.b[SYNTHESIZER.tenant_table.name]["id"])


@pytest.fixture(scope="module")
def admin(database_stack: LiveStack) -> Iterator[Conn]:
    """postgres, a superuser: RLS does not apply to it."""
    with psycopg.connect(**database_stack.admin(), autocommit=True) as conn:  # type: ignore[arg-type]
        yield conn


@pytest.fixture(scope="module")
def tenants(admin: Conn) -> Tenants:
    with admin.transaction():
        return Tenants(a=SYNTHESIZER.world(admin), b=SYNTHESIZER.world(admin))


def authenticator(stack: LiveStack, port: int | None = None, dbname: str = "thorbis") -> Conn:
    return psycopg.connect(
        host=LOOPBACK,
        port=port or stack.postgres_port,
        user="authenticator",
        password=stack.passwords["authenticatorPassword"],
        dbname=dbname,
        autocommit=True,
        prepare_threshold=None,  # no named prepared statements: PgBouncer's transaction pooling
        connect_timeout=30,
    )


@pytest.fixture(scope="module")
def app(database_stack: LiveStack, tenants: Tenants) -> Iterator[Conn]:
    """What the application logs in as (directly to the server here; through the pooler at the end)."""
    with authenticator(database_stack) as conn:
        yield conn


def claims(company: str) -> str:
    """Where the stack's default reads the company (company_id) and where Supabase puts custom claims (the
    stack of tests/e2e/test_supabase.py reads app_metadata.company_id): each stack reads its own."""
    return json.dumps({"company_id": company, "app_metadata": {"company_id": company}})


@contextmanager
def as_company(conn: Conn, company: str | None, rollback: bool = True) -> Iterator[Conn]:
    """A transaction as `authenticated` with the company's claims (no claims for None)."""
    with conn.transaction(force_rollback=rollback):
        if company is not None:
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims(company),))
        conn.execute("SET LOCAL ROLE authenticated")
        yield conn


# 1. The live catalog ----------------------------------------------------------------------------------


def test_every_table_and_partition_has_row_level_security_enabled_and_forced(admin: Conn) -> None:
    tables = admin.execute(
        "SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity FROM pg_class c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1"
    ).fetchall()
    assert {name for name, _ in tables} >= {*TABLES, "communications_default"}
    assert [name for name, secured in tables if not secured] == []


def test_every_table_has_exactly_its_declared_policies(admin: Conn) -> None:
    """Per table, the commands of its policies that are tenant policies (permissive, for authenticated only,
    comparing with the claims' company, USING and WITH CHECK where the command has them), and the one that
    lets the read_all roles read every row (in place of BYPASSRLS); nothing else."""
    rows = admin.execute(
        "SELECT c.relname, count(p.policyname), coalesce(array_agg(p.cmd::text ORDER BY p.cmd) FILTER ("
        "  WHERE p.roles = '{authenticated}' AND p.permissive = 'PERMISSIVE'"
        "  AND concat_ws(' ', p.qual, p.with_check) LIKE '%%app.current_company_id()%%'"
        "  AND (p.cmd IN ('SELECT', 'DELETE')) = (p.with_check IS NULL)"
        "  AND (p.cmd = 'INSERT') = (p.qual IS NULL)), '{}'), "
        "  count(*) FILTER (WHERE p.cmd = 'SELECT' AND p.qual = 'true' AND p.with_check IS NULL"
        "  AND p.permissive = 'PERMISSIVE' AND p.roles::text[] @> %s AND p.roles::text[] <@ %s) "
        "FROM pg_class c LEFT JOIN pg_policies p ON p.schemaname = 'public' AND p.tablename = c.relname "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "GROUP BY c.relname ORDER BY 1",
        (READ_ALL, READ_ALL),
    ).fetchall()
    assert sorted(name for name, *_ in rows) == sorted(TABLES)
    declared = (5, TENANT_POLICIES, 1)
    wrong = {name: found for name, *found in rows if tuple(found) != declared}
    assert wrong == {}, "tables whose policies are not exactly the four tenant ones and the read_all one"


def test_partitions_have_no_policy_and_read_directly_show_no_row(admin: Conn, app: Conn, tenants: Tenants) -> None:
    partitions = [
        name
        for (name,) in admin.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relispartition "
            "AND c.relkind IN ('r', 'p') AND NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid) ORDER BY 1"
        )
    ]
    assert "communications_default" in partitions
    shown = []
    with as_company(app, tenants.a_id):
        for partition in partitions:
            try:
                with app.transaction():
                    counted = app.execute(
                        psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier("public", partition))
                    ).fetchone()
            except psycopg.errors.InsufficientPrivilege:
                continue  # no privilege of its own: access goes through the parent and its policies
            shown.append((partition, counted))
    assert shown == [], "partitions the application may read directly, past their parent's policies"


def test_every_foreign_key_has_an_index_led_by_its_columns(admin: Conn) -> None:
    uncovered = admin.execute(
        "SELECT con.conrelid::regclass::text, con.conname FROM pg_constraint con "
        "WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace AND NOT EXISTS ("
        "  SELECT FROM pg_index i, LATERAL (SELECT (string_to_array(i.indkey::text, ' ')::int2[])"
        "    [1:cardinality(con.conkey)] AS leading) k"
        "  WHERE i.indrelid = con.conrelid AND i.indpred IS NULL AND i.indisvalid"
        "  AND k.leading @> con.conkey AND k.leading <@ con.conkey) ORDER BY 1, 2"
    ).fetchall()
    total = admin.execute(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
    )
    assert (total.fetchone() or (0,))[0] >= sum(len(SCHEMA.table(t).foreign_key_constraints) for t in TABLES)
    assert uncovered == []


def test_no_index_is_invalid(admin: Conn) -> None:
    assert admin.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall() == []


def test_functions_in_app_have_a_fixed_search_path_and_those_reading_claims_run_as_the_caller(
    admin: Conn,
) -> None:
    """Reading the caller's own claims needs no right of the owner's: no SECURITY DEFINER to trust."""
    functions = admin.execute(
        "SELECT p.proname, coalesce(p.proconfig, '{}'), p.prosecdef, p.prosrc LIKE '%request.jwt.claims%' "
        "FROM pg_proc p WHERE p.pronamespace = 'app'::regnamespace AND p.prokind = 'f' ORDER BY 1"
    ).fetchall()
    assert any(reads_claims for *_, reads_claims in functions), "no function in app reads the claims"
    unpinned = [name for name, config, _, _ in functions if not any(s.startswith("search_path=") for s in config)]
    assert unpinned == [], "functions without a fixed search_path"
    assert [name for name, _, definer, reads_claims in functions if reads_claims and definer] == []


def test_procedures_in_app_run_with_the_callers_rights_and_no_application_role_may_call_them(admin: Conn) -> None:
    """A procedure that COMMITs between batches cannot carry a SET search_path; it is safe only as
    SECURITY INVOKER (the caller's own rights) and out of the application's reach."""
    procedures = admin.execute(
        "SELECT p.proname, p.prosecdef, p.proconfig, "
        "  array(SELECT r FROM unnest(ARRAY['anon', 'authenticated', 'service_role', 'reporting']) r "
        "        WHERE has_function_privilege(r, p.oid, 'EXECUTE')) "
        "FROM pg_proc p WHERE p.pronamespace = 'app'::regnamespace AND p.prokind = 'p' ORDER BY 1"
    ).fetchall()
    assert procedures, "no procedure in app (the retention jobs call them)"
    assert [
        (name, definer, config, callers) for name, definer, config, callers in procedures if definer or callers
    ] == []


QUERY_INDEXES = [(table.name, index) for table in SCHEMA.tables for index in table.indexes if index.serves]


def index_names(plan: Any) -> set[str]:
    """Every "Index Name" in an EXPLAIN (FORMAT JSON) plan."""
    if isinstance(plan, list):
        return set().union(*(index_names(item) for item in plan))
    if isinstance(plan, dict):
        found = {plan["Index Name"]} if "Index Name" in plan else set()
        return found.union(*(index_names(value) for value in plan.values()))
    return set()


@pytest.mark.parametrize(("table_name", "index"), QUERY_INDEXES, ids=[index.name for _, index in QUERY_INDEXES])
def test_each_query_index_is_chosen_for_the_query_it_serves(table_name: str, index: IndexData, admin: Conn) -> None:
    """The index serves its query: with the table's other indexes gone (leave_only_indexes) the planner uses
    it, so its keys, expression and predicate really match what the application sends. On a partitioned
    table the plan names partitions of the declared index."""
    assert index.serves is not None
    with admin.transaction(force_rollback=True):
        leave_only_indexes(admin, table_name, [index.name])
        admin.execute("SET LOCAL search_path = public, extensions")
        plan = admin.execute(psycopg.sql.SQL("EXPLAIN (FORMAT JSON) ") + psycopg.sql.SQL(index.serves)).fetchone()
        assert plan is not None
        used = index_names(plan[0])
        declared = used | {
            name
            for (name,) in admin.execute(
                "SELECT a.relid::regclass::text FROM unnest(%s::text[]) u, "
                "LATERAL pg_partition_ancestors(('public.' || u)::regclass) a",
                (sorted(used),),
            )
        }
    assert index.name in declared, f"{table_name}: the plan uses {sorted(used)}, not {index.name}"


def test_no_policy_widens_access(admin: Conn) -> None:
    widening = admin.execute(
        "SELECT schemaname, tablename, policyname FROM pg_policies "
        "WHERE concat_ws(' ', qual, with_check) ILIKE ANY (ARRAY['%is_public%', '% OR %'])"
    ).fetchall()
    assert widening == []


# 2. Every table, every operation, as company A --------------------------------------------------------


@pytest.mark.parametrize("table_name", TABLES)
def test_select_sees_the_own_row_and_none_of_the_other_company(table_name: str, app: Conn, tenants: Tenants) -> None:
    table = SCHEMA.table(table_name)
    for ours, theirs, company in ((tenants.a, tenants.b, tenants.a_id), (tenants.b, tenants.a, tenants.b_id)):
        with as_company(app, company):
            visible = visible_keys(app, table)
        assert key_of(table, ours[table_name]) in visible
        assert key_of(table, theirs[table_name]) not in visible
        assert len(visible) == 1


@pytest.mark.parametrize("table_name", TABLES)
def test_insert_for_the_other_company_is_refused(table_name: str, app: Conn, tenants: Tenants) -> None:
    table = SCHEMA.table(table_name)
    theirs = SYNTHESIZER.values(table, tenants.b)
    with (
        as_company(app, tenants.a_id),
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="violates row-level security policy"),
        app.transaction(),
    ):
        insert_only(app, table_name, theirs)


SAME_COMPANY_REFERENCES = [
    (table.name, column, target) for table in SCHEMA.tables for column, target in table.references_within_company()
]
#: What else a row must change to point at another row of its own table (a rule ties the two together).
POINTING_ALSO = {("price_book_categories", "parent_id"): "path = extensions.text2ltree('parent.' || path::text)"}


@pytest.mark.parametrize(
    ("table_name", "column", "target"), SAME_COMPANY_REFERENCES, ids=[f"{t}.{c}" for t, c, _ in SAME_COMPANY_REFERENCES]
)
def test_a_row_can_point_at_its_own_companys_rows_only(
    table_name: str, column: str, target: str, app: Conn, tenants: Tenants
) -> None:
    """A foreign key ignores RLS: the (company_id, id) key stops A's row pointing at B's (whose delete would
    then cascade into A's data, or be blocked by it); on a table without company_id, its write policies."""
    table = SCHEMA.table(table_name)
    also = sql.SQL(", " + POINTING_ALSO[(table_name, column)]) if (table_name, column) in POINTING_ALSO else sql.SQL("")
    with as_company(app, tenants.a_id):
        # a new row where the table allows one: no other row points at it (votes_v2 pins its message's chat)
        mine = SYNTHESIZER.fresh(app, table, tenants.a) or tenants.a[table_name]
        condition, key = where_key(table, mine)
        point = sql.SQL("UPDATE {} SET {} = %s{} WHERE {}").format(
            relation(table_name), sql.Identifier(column), also, condition
        )
        if target != table_name:  # a row pointing at itself may be refused by its own rules
            own = mine.get(column) or tenants.a[target]["id"]  # the fresh row's own parent keeps its keys unique
            assert app.execute(point, [str(own), *key]).rowcount == 1
        refused = (
            psycopg.errors.ForeignKeyViolation if table.tenancy == "company" else psycopg.errors.InsufficientPrivilege
        )
        with pytest.raises(refused) as error, app.transaction():
            app.execute(point, [str(tenants.b[target]["id"]), *key])
    if table.tenancy == "company":  # refused by this reference's own key, not another that happens to hold
        assert error.value.diag.constraint_name == bounded(f"{table_name}_{column}_fkey")


@pytest.mark.parametrize("table_name", TABLES)
def test_update_and_delete_of_the_other_company_touch_nothing(table_name: str, app: Conn, tenants: Tenants) -> None:
    table = SCHEMA.table(table_name)
    theirs = tenants.b[table_name]
    with as_company(app, tenants.a_id):
        assert update_row(app, table, theirs) == 0
        assert delete_row(app, table, theirs) == 0
        app.execute("SET LOCAL ROLE service_role")  # bypasses RLS: sees that B's row is still there
        assert key_of(table, theirs) in visible_keys(app, table)


@pytest.mark.parametrize("table_name", TABLES)
def test_the_same_statements_on_the_own_rows_work(table_name: str, app: Conn, tenants: Tenants) -> None:
    table = SCHEMA.table(table_name)
    ours = tenants.a[table_name]
    with as_company(app, tenants.a_id):
        assert update_row(app, table, ours) == 1
        fresh = SYNTHESIZER.fresh(app, table, tenants.a)
        if fresh is None:  # one row per company (its only unique key is the company): delete, insert back
            assert delete_row(app, table, ours) == 1
            reinsert(app, table_name, ours)
            assert key_of(table, ours) in visible_keys(app, table)
        else:
            assert delete_row(app, table, fresh) == 1


@pytest.mark.parametrize("table_name", TABLES)
def test_without_claims_no_row_is_visible(table_name: str, app: Conn, tenants: Tenants) -> None:
    with as_company(app, None):
        assert visible_keys(app, SCHEMA.table(table_name)) == set()


# 3. Tenant-scoped searches (sql/search.yaml): they read past RLS, so each is attacked as a caller would ----

SEARCH_IDS = [search.name for search in SEARCHES.searches]


def search_function(search: SearchData, matcher: bool = False) -> sql.Composable:
    if matcher:
        return sql.Identifier(SEARCHES.matcher_schema, search.matcher_name)
    return sql.Identifier(SEARCHES.schema_name, search.name)


def example_arguments(admin: Conn, search: SearchData, row: dict[str, Any]) -> dict[str, Any]:
    """The arguments that find `row`, by name, from each argument's `example` (SQL over the row)."""
    query = sql.SQL("SELECT {} FROM {} AS {} WHERE {} = %s").format(
        sql.SQL(", ").join(sql.SQL(argument.example) for argument in search.arguments),
        relation(search.table),
        sql.Identifier(search.table),
        sql.Identifier(search.table, "id"),
    )
    found = admin.execute(query, (str(row["id"]),)).fetchone()
    assert found is not None and None not in found, f"{search.table}: the row has no value to search it by"
    return {argument.name: value for argument, value in zip(search.arguments, found, strict=True)}


def call(conn: Conn, search: SearchData, arguments: dict[str, Any], matcher: bool = False) -> list[str]:
    """The ids a search returns to `conn` (the caller of the moment), arguments passed by name."""
    placeholders = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in arguments
    )
    function = search_function(search, matcher)
    column = sql.SQL("found") if matcher else sql.SQL("found.id")
    statement = sql.SQL("SELECT {}::text FROM {}({}) AS found").format(column, function, placeholders)
    return [found for (found,) in conn.execute(statement, arguments)]


def companies_of(admin: Conn, table: str, ids: list[str]) -> set[str]:
    statement = sql.SQL("SELECT DISTINCT company_id::text FROM {} WHERE id = ANY(%s::uuid[])").format(relation(table))
    return {company for (company,) in admin.execute(statement, (ids,))}


@pytest.mark.parametrize("search", SEARCHES.searches, ids=SEARCH_IDS)
def test_a_search_finds_the_own_companys_row_and_never_the_other_companys(
    search: SearchData, admin: Conn, app: Conn, tenants: Tenants
) -> None:
    """As each company in turn: its own row's values find its row; the other company's row's values (the
    same phone number, a name that differs by a few letters) find none of the other company's rows, through
    the function applications call and through its matcher called directly."""
    for ours, theirs, company in ((tenants.a, tenants.b, tenants.a_id), (tenants.b, tenants.a, tenants.b_id)):
        own_values = example_arguments(admin, search, ours[search.table])
        their_values = example_arguments(admin, search, theirs[search.table])
        with as_company(app, company):
            found_own = call(app, search, own_values)
            found_theirs = [call(app, search, their_values, matcher) for matcher in (False, True)]
        assert str(ours[search.table]["id"]) in found_own
        for found in [found_own, *found_theirs]:
            assert str(theirs[search.table]["id"]) not in found
            assert companies_of(admin, search.table, found) <= {company}


FORGED_CLAIMS = {
    "no claims": None,
    "empty claims": "{}",
    "a null company": '{"company_id": null}',
    "the company under another key": '{"sub": "%(a)s", "app_metadata": {"company_id": "%(a)s"}}',
    "a company id that is no uuid": '{"company_id": "%(a)s OR true"}',
}


@pytest.mark.parametrize("forged", FORGED_CLAIMS, ids=list(FORGED_CLAIMS))
@pytest.mark.parametrize("search", SEARCHES.searches, ids=SEARCH_IDS)
def test_a_search_without_a_company_in_the_claims_finds_nothing(
    search: SearchData, forged: str, admin: Conn, app: Conn, tenants: Tenants
) -> None:
    """Claims that name no company (or name it where the helper does not look) find no row, with values
    that find company A's row: the function and its matcher return nothing, or refuse."""
    values = example_arguments(admin, search, tenants.a[search.table])
    template = FORGED_CLAIMS[forged]
    for matcher in (False, True):
        with app.transaction(force_rollback=True):
            if template is not None:
                app.execute("SELECT set_config('request.jwt.claims', %s, true)", (template % {"a": tenants.a_id},))
            app.execute("SET LOCAL ROLE authenticated")
            try:
                with app.transaction():
                    found = call(app, search, values, matcher)
            except psycopg.errors.InvalidTextRepresentation:
                found = []  # the helper's cast refuses it
        assert found == [], f"{forged}: {found}"


@pytest.mark.parametrize("search", SEARCHES.searches, ids=SEARCH_IDS)
def test_a_search_returns_what_row_level_security_shows(
    search: SearchData, admin: Conn, app: Conn, tenants: Tenants
) -> None:
    """The function's rows are those the table's own policy shows for the same match: the fast path
    changes no answer (the match as a plain query under RLS, no company written, is the slow path)."""
    for row in (tenants.a[search.table], tenants.b[search.table]):
        values = example_arguments(admin, search, row)
        slow = sql.SQL("SELECT {}::text FROM {} AS {} CROSS JOIN (SELECT {}) AS search WHERE {}").format(
            sql.Identifier(search.table, "id"),
            relation(search.table),
            sql.Identifier(search.table),
            sql.SQL(", ").join(
                sql.SQL("{}::{} AS {}").format(
                    sql.Literal(values[argument.name]), sql.SQL(argument.type), sql.Identifier(argument.name)
                )
                for argument in search.arguments
            ),
            sql.SQL(search.where),
        )
        with as_company(app, tenants.a_id):
            shown = sorted(found for (found,) in app.execute(slow))
            found = sorted(call(app, search, values))
        assert len(shown) <= search.limit, "more rows than the search's limit: compare a narrower match"
        assert found == shown


@pytest.mark.parametrize("search", SEARCHES.searches, ids=SEARCH_IDS)
def test_only_the_callers_may_run_a_search(search: SearchData, admin: Conn, app: Conn, tenants: Tenants) -> None:
    values = example_arguments(admin, search, tenants.a[search.table])
    for matcher in (False, True):
        with app.transaction(force_rollback=True):
            app.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims(tenants.a_id),))
            app.execute("SET LOCAL ROLE anon")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                call(app, search, values, matcher)


def test_only_the_declared_searches_read_past_row_level_security_for_the_application(admin: Conn) -> None:
    """Every SECURITY DEFINER function an application role can reach (EXECUTE and its schema's USAGE) whose
    owner reads past RLS (BYPASSRLS, a superuser, or a read_all role) is a declared search's matcher: no
    other path past the policies."""
    reachable = admin.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner "
        "WHERE p.prosecdef AND (r.rolbypassrls OR r.rolsuper OR r.rolname = ANY(%s)) AND EXISTS ("
        "  SELECT FROM unnest(ARRAY['anon', 'authenticated']) caller(name)"
        "  WHERE has_function_privilege(caller.name, p.oid, 'EXECUTE')"
        "  AND has_schema_privilege(caller.name, p.pronamespace, 'USAGE')) ORDER BY 1",
        (READ_ALL,),
    ).fetchall()
    declared = {
        f"{SEARCHES.matcher_schema}.{search.matcher_name}({','.join(a.type for a in search.arguments)})"
        for search in SEARCHES.searches
    }
    assert {function for (function,) in reachable} == declared


# 4. Claims through PgBouncer's transaction pooling -----------------------------------------------------

CLIENTS = 200
ROUNDS = 3


def test_claims_never_leak_between_clients_of_the_pooler(database_stack: LiveStack, tenants: Tenants) -> None:
    """200 concurrent clients alternate A and B (and every tenth sets no claims) over the pool's few
    server connections: each sees only its own company's customers, the claim-less ones none."""
    plan: list[str | None] = [
        None if i % 10 == 9 else (tenants.a_id if i % 2 == 0 else tenants.b_id) for i in range(CLIENTS)
    ]

    def client(company: str | None) -> list[tuple[int, set[str]]]:
        seen: list[tuple[int, set[str]]] = []
        with authenticator(database_stack, database_stack.pgbouncer_port) as conn:
            for _ in range(ROUNDS):
                with as_company(conn, company, rollback=False):
                    row = conn.execute("SELECT pg_backend_pid()").fetchone()
                    companies = {str(c) for (c,) in conn.execute("SELECT company_id FROM customers")}
                seen.append((row[0] if row else 0, companies))
        return seen

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = list(pool.map(client, plan))
    leaks = [
        (company, companies)
        for company, rounds in zip(plan, results, strict=True)
        for _, companies in rounds
        if companies != ({company} if company else set())
    ]
    assert leaks == [], "clients that saw another company's rows (or any row without claims)"
    served: dict[str | None, set[int]] = {}
    for company, rounds in zip(plan, results, strict=True):
        served.setdefault(company, set()).update(pid for pid, _ in rounds)
    # the point of the test: server connections passed from A's transactions to B's and back
    assert served[tenants.a_id] & served[tenants.b_id] & served[None]
