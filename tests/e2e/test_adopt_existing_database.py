"""`pulumi up` meets the review's populated database: it adopts, never recreates, and never loses data.

One stack (platform local, no replica, allowDataLoss false) on a copy of the program. Its first `up` has an
empty sql/schema: the servers, roles, schemas and extensions only. The review's "before" database
(testbed/before_state.py) is then built on it, and the next `up` has the full schema: every existing
table is adopted in place and completed (columns, checks, row level security, foreign-key indexes built
CONCURRENTLY) while a writer keeps inserting rows, and the rows that were there are untouched; the DDL the
provider ran (read back from the server's log) passes squawk. Then changes that would lose data are refused.
The tests run in file order; each builds on the one before. The stack (tests/e2e/conftest.py `adoption`) is
then shared with test_schema_evolution.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
import pytest
import yaml
from psycopg import sql

from components.connection import LOOPBACK
from components.database.declared.model import load_schema
from components.database.session import APPLICATION_NAME
from testbed.before_state import build_before_state, fingerprint
from testbed.stacks import LiveStack
from tests.conftest import ROOT
from tests.ddl_log import deadlocks, provider_transactions, sessions, squawk
from tests.e2e.conftest import READ_TABLES, Adoption, Known

pytestmark = pytest.mark.e2e
LOCK_TIMEOUT_SECONDS = 5  # the stack's default thorbis:lockTimeout
WRITER_COMPANY = "a0000000-0000-4000-8000-000000000001"  # ids of testbed/before_rows.sql
WRITER_PROPERTY = "d0000000-0000-4000-8000-000000000001"
CREATE_INDEX = re.compile(
    r'CREATE (?:UNIQUE )?INDEX (CONCURRENTLY )?(?:IF NOT EXISTS )?"?([a-z0-9_]+)"? ON (ONLY )?"public"\."([a-z0-9_]+)"',
    re.IGNORECASE,
)


class Writer(threading.Thread):
    """The application, busy during the migration: a customer, a job for it and a note in communications
    (a table converted online to monthly partitions meanwhile), in one transaction, every few milliseconds,
    as the admin of company 1, with the stack's lock_timeout (a DDL lock that blocks it longer than that is
    an error here)."""

    def __init__(self, conninfo: dict[str, Any]) -> None:
        super().__init__(name="writer", daemon=True)
        self.conninfo = conninfo
        self.ids: dict[str, list[uuid.UUID]] = {"customers": [], "jobs": [], "communications": []}
        self.committed_at: list[float] = []
        self.slowest = 0.0
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(**self.conninfo, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
            while not self.halt.is_set():
                started = time.monotonic()
                customer, job, note = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
                try:
                    self.write(conn, customer, job, note)
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {str(error).strip()}")
                else:
                    self.ids["customers"].append(customer)
                    self.ids["jobs"].append(job)
                    self.ids["communications"].append(note)
                    self.committed_at.append(time.monotonic())
                    self.slowest = max(self.slowest, self.committed_at[-1] - started)
                self.halt.wait(0.02)

    @staticmethod
    def write(conn: psycopg.Connection[Any], customer: uuid.UUID, job: uuid.UUID, note: uuid.UUID) -> None:
        number = f"W-{customer.hex[:12]}"
        with conn.transaction():
            conn.execute(
                "INSERT INTO public.customers (id, company_id, customer_number, first_name, last_name, phone) "
                "VALUES (%s, %s, %s, 'Walk', 'In', '+15125559999')",
                (customer, WRITER_COMPANY, number),
            )
            conn.execute(
                "INSERT INTO public.jobs (id, company_id, customer_id, property_id, job_number, title) "
                "VALUES (%s, %s, %s, %s, %s, 'Booked during the migration')",
                (job, WRITER_COMPANY, customer, WRITER_PROPERTY, number),
            )
            conn.execute(
                "INSERT INTO public.communications (id, company_id, customer_id, job_id, type, direction, body) "
                "VALUES (%s, %s, %s, %s, 'note', 'internal', 'Booked by phone during the migration')",
                (note, WRITER_COMPANY, customer, job),
            )

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)

    def longest_pause(self, start: float, end: float) -> float:
        """The longest time without a commit between start and end (both counted as moments)."""
        moments = [start, *(t for t in self.committed_at if start < t < end), end]
        return max(later - earlier for earlier, later in itertools.pairwise(moments))


#: How the review's application used its database before the stack: authenticated holds its tables (as
#: Supabase's default privileges give), customers has the dashboard's leaky policy templates.
APPLICATION_IN_USE = [
    "GRANT USAGE ON SCHEMA public TO authenticated",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO authenticated",
    "ALTER TABLE public.customers ENABLE ROW LEVEL SECURITY",
    'CREATE POLICY "Enable read access for all users" ON public.customers FOR SELECT USING (true)',
    'CREATE POLICY "Enable insert for authenticated users only" ON public.customers FOR INSERT TO authenticated '
    "WITH CHECK (true)",
]


class Application(threading.Thread):
    """The live application, as `authenticated` with the writer's company's claims, through PgBouncer: one
    thread writes (a customer and its job), one reads both tables and checks every row of its company it
    knows of is there (those before the `up`, and each write committed before the read began)."""

    def __init__(self, conninfo: dict[str, Any], known: Known, reading: bool) -> None:
        super().__init__(name="app-reader" if reading else "app-writer", daemon=True)
        self.conninfo, self.known, self.reading = conninfo, known, reading
        self.missing: list[str] = []
        self.errors: list[str] = []
        self.written: dict[str, list[uuid.UUID]] = {table: [] for table in READ_TABLES}
        self.rounds = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(**self.conninfo, autocommit=True, prepare_threshold=None) as conn:
            while not self.halt.is_set():
                try:
                    expected = self.known.now()
                    with conn.transaction():
                        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (APP_CLAIMS,))
                        conn.execute("SET LOCAL ROLE authenticated")
                        written = self.read(conn, expected) if self.reading else self.write(conn)
                    for table, row_id in written:  # committed: from now on every read must see it
                        self.known.add(table, row_id)
                        self.written[table].append(row_id)
                    self.rounds += 1
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {str(error).strip()}")
                self.halt.wait(0.02)

    def read(self, conn: psycopg.Connection[Any], expected: dict[str, set[uuid.UUID]]) -> list[tuple[str, uuid.UUID]]:
        for table in READ_TABLES:
            query = sql.SQL("SELECT id FROM {} WHERE company_id = %s").format(sql.Identifier("public", table))
            seen = {row[0] for row in conn.execute(query, (WRITER_COMPANY,))}
            self.missing += [f"{table} {row_id}" for row_id in expected[table] - seen]
        return []

    def write(self, conn: psycopg.Connection[Any]) -> list[tuple[str, uuid.UUID]]:
        customer, job = uuid.uuid4(), uuid.uuid4()
        conn.execute(
            "INSERT INTO public.customers (id, company_id, customer_number, first_name, last_name) "
            "VALUES (%s, %s, %s, 'App', 'Writer')",
            (customer, WRITER_COMPANY, f"A-{customer.hex[:12]}"),
        )
        conn.execute(
            "INSERT INTO public.jobs (id, company_id, customer_id, property_id, job_number, title) "
            "VALUES (%s, %s, %s, %s, %s, 'Booked in the app during the migration')",
            (job, WRITER_COMPANY, customer, WRITER_PROPERTY, f"A-{job.hex[:12]}"),
        )
        return [("customers", customer), ("jobs", job)]

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)


APP_CLAIMS = json.dumps({"company_id": WRITER_COMPANY, "role": "authenticated"})


def application_conninfo(live: LiveStack) -> dict[str, Any]:
    """The application's login (authenticator) through the stack's PgBouncer."""
    return {
        "host": LOOPBACK,
        "port": live.pgbouncer_port,
        "user": "authenticator",
        "password": live.passwords["authenticatorPassword"],
        "dbname": "thorbis",
        "connect_timeout": 30,
    }


def table_oids(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT relname, oid::bigint FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'p') AND relname = ANY(%s)",
        (names,),
    ).fetchall()
    return {name: oid for name, oid in rows}


def live_columns(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (f"public.{table}",),
    ).fetchall()
    return {name: type_ for name, type_ in rows}


def column_values(conn: psycopg.Connection[Any], table: str, column: str) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT id, {}::text FROM {} ORDER BY id").format(
        sql.Identifier(column), sql.Identifier("public", table)
    )
    return conn.execute(query).fetchall()


@dataclass(frozen=True)
class IndexBuild:
    """One CREATE INDEX the stack ran, and on which table (a partition is named by its parent)."""

    index: str
    table: str
    concurrently: bool
    only: bool  # on a partitioned table's own definition: no rows read, the partitions' indexes are built apart


def indexes_built(conn: psycopg.Connection[Any]) -> list[IndexBuild]:
    """Every index created since pg_stat_statements was reset."""
    parents: dict[str, str] = dict(
        conn.execute(
            "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE c.relkind = 'r'"
        ).fetchall()
    )
    builds = []
    for (query,) in conn.execute(
        "SELECT query FROM extensions.pg_stat_statements WHERE query ILIKE 'CREATE %%INDEX%%'"
    ).fetchall():
        if found := CREATE_INDEX.search(query):
            table = parents.get(found.group(4)) or found.group(4)
            builds.append(IndexBuild(found.group(2), table, bool(found.group(1)), bool(found.group(3))))
    return builds


def table_outputs(stack: auto.Stack) -> dict[str, dict[str, Any]]:
    resources = (stack.export_stack().deployment or {}).get("resources") or []
    return {
        resource["outputs"]["name"]: resource["outputs"]
        for resource in resources
        if resource["type"] == "thorbisdb:db:Table"
    }


def refusal(operation: Callable[[], object]) -> str:
    with pytest.raises(auto.CommandError) as failure:
        operation()
    return str(failure.value)


@contextmanager
def edited_table(
    schema_dir: Path, table: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> Iterator[None]:
    """The copy's schema data with one table changed (or removed, when `change` returns None); put back after."""
    for path in sorted(schema_dir.glob("*.yaml")):
        original = path.read_text()
        content = yaml.safe_load(original)
        names = [entry["name"] for entry in content["tables"]]
        if table in names:
            break
    else:
        raise KeyError(f"no table {table} in {schema_dir}")
    position = names.index(table)
    changed = change(content["tables"][position])
    if changed is None:
        del content["tables"][position]
    else:
        content["tables"][position] = changed
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


# --- the tests ----------------------------------------------------------------------------------------


def test_the_before_database_is_built_on_a_stack_without_schema(adoption: Adoption) -> None:
    result = adoption.stack.up()
    assert result.summary.result == "succeeded"
    with adoption.connect() as conn:
        adoption.tables = build_before_state(conn)
        names = [table.name for table in adoption.tables]
        adoption.oids = table_oids(conn, names)
        adoption.fingerprints = {table.name: fingerprint(conn, table) for table in adoption.tables}
        rls = conn.execute(
            "SELECT count(*) FILTER (WHERE relrowsecurity) FROM pg_class WHERE oid = ANY(%s::oid[])",
            (list(adoption.oids.values()),),
        ).fetchone()
        checks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND connamespace = 'public'::regnamespace"
        ).fetchone()
        fk_indexes = [index.name for table in adoption.tables for index in table.data.foreign_key_indexes()]
        present = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname = ANY(%s)",
            (fk_indexes,),
        ).fetchone()
    assert len(adoption.oids) == 42
    assert rls == (0,) and checks == (0,) and present == (0,)
    assert sum(count for count, _ in adoption.fingerprints.values()) > 0
    assert all(table.missing_columns for table in adoption.tables)
    with adoption.connect() as conn:
        for statement in APPLICATION_IN_USE:
            conn.execute(statement)
        for table in READ_TABLES:
            query = sql.SQL("SELECT id FROM {} WHERE company_id = %s").format(sql.Identifier("public", table))
            for (row_id,) in conn.execute(query, (WRITER_COMPANY,)):
                adoption.known.add(table, row_id)
    assert all(adoption.known.now().values())


def test_up_adopts_every_existing_table_while_a_writer_keeps_writing(adoption: Adoption, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "sql", adoption.project / "sql", dirs_exist_ok=True)
    earlier = sessions(adoption.live.state_dir)
    with adoption.connect() as conn:
        conn.execute("SELECT extensions.pg_stat_statements_reset()")
        conn.execute("SELECT pg_stat_reset()")
    writer = Writer(adoption.live.admin())
    application = [
        Application(application_conninfo(adoption.live), adoption.known, reading) for reading in (False, True)
    ]
    clients: list[Writer | Application] = [writer, *application]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        result = adoption.stack.up()
        ended = time.monotonic()
        time.sleep(0.5)
    finally:
        for client in clients:
            client.stop()
    app_writer, reader = application
    adoption.writer_ids = {table: [*ids, *app_writer.written.get(table, [])] for table, ids in writer.ids.items()}
    assert result.summary.result == "succeeded"
    adoption.live.resources = sum((result.summary.resource_changes or {}).values())
    adoption.adopted = True

    # the application, through PgBouncer as authenticated: never refused, never missing a row of its own
    assert app_writer.errors == [], f"the application's writes were refused: {app_writer.errors[:3]}"
    assert reader.errors == [] and reader.missing == [], (
        f"reads missed own rows: {(reader.errors + reader.missing)[:3]}"
    )
    assert app_writer.rounds > 20 and reader.rounds > 20
    assert writer.errors == [], f"the writer failed during the up: {writer.errors[:3]}"
    assert len(writer.ids["jobs"]) > 20
    assert writer.longest_pause(started, ended) < LOCK_TIMEOUT_SECONDS, "the writer was held up"
    assert writer.slowest < LOCK_TIMEOUT_SECONDS

    model = load_schema()
    outputs = table_outputs(adoption.stack)
    existing = {table.name for table in adoption.tables}
    assert {name for name, out in outputs.items() if out.get("adopted")} == existing
    assert len(outputs) == len(model.tables)

    partitioned = {table.name for table in model.tables if table.partition}
    with adoption.connect() as conn:
        kept = {name: oid for name, oid in adoption.oids.items() if name not in partitioned}
        assert table_oids(conn, sorted(kept)) == kept, "an existing table was recreated"
        converted = conn.execute(
            "SELECT c.relname, count(p.inhrelid) FROM pg_class c LEFT JOIN pg_inherits p ON p.inhparent = c.oid "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'p' GROUP BY 1"
        ).fetchall()
        assert {name for name, _ in converted} == partitioned
        assert all(partitions > 1 for _, partitions in converted), "a converted table has only its default"
        leftovers = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE '%partitioned'"
        ).fetchall()
        assert leftovers == [], "the old tables are dropped once their conversion is verified"
        for table in adoption.tables:
            added = set(table.missing_columns) - set(live_columns(conn, table.name))
            assert added == set(), f"{table.name}: columns not added: {sorted(added)}"
        secured = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') "
            "AND NOT (relrowsecurity AND relforcerowsecurity)"
        ).fetchall()
        assert secured == [], "tables without row level security (enabled and forced)"
        ungranted = conn.execute(
            "SELECT relname FROM pg_class c WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') "
            "AND NOT relispartition AND NOT (has_table_privilege('authenticated', c.oid, 'SELECT') "
            "AND has_table_privilege('authenticated', c.oid, 'INSERT') "
            "AND has_table_privilege('authenticated', c.oid, 'UPDATE') "
            "AND has_table_privilege('authenticated', c.oid, 'DELETE'))"
        ).fetchall()
        assert ungranted == [], "tables the application's role may not use (adopted ones included)"
        not_valid = conn.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace AND NOT convalidated"
        ).fetchall()
        assert not_valid == []
        checks = {row[0] for row in conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'c'")}
        assert {check.name for table in model.tables for check in table.checks} <= checks

        fk_indexes = {index.name: table for table in adoption.tables for index in table.data.foreign_key_indexes()}
        valid = dict(
            conn.execute(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = ANY(%s)",
                (list(fk_indexes),),
            ).fetchall()
        )
        assert valid == dict.fromkeys(fk_indexes, True)
        built = indexes_built(conn)
        holding_rows = {name for name, (count, _) in adoption.fingerprints.items() if count > 0}
        busy = {name for name, table in fk_indexes.items() if table.name in holding_rows}
        assert busy and busy <= {build.index for build in built}
        on_rows = [build for build in built if build.table in holding_rows and not build.only]
        assert len({build.table for build in on_rows}) > 10
        assert [build.index for build in on_rows if not build.concurrently] == [], "indexes built without CONCURRENTLY"

        for table in adoption.tables:  # the rows of the writer and of the application aside
            exclude = adoption.writer_ids.get(table.name, [])
            assert fingerprint(conn, table, exclude) == adoption.fingerprints[table.name], f"{table.name} changed"
        for table_name, ids in adoption.writer_ids.items():
            query = sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)").format(sql.Identifier("public", table_name))
            found = conn.execute(query, (ids,)).fetchone()
            assert found == (len(ids),)

    transactions = provider_transactions(adoption.live.state_dir, after=earlier)
    assert len(transactions) > 100
    findings = squawk(transactions, tmp_path / "squawk")
    # our DDL takes its locks up front and CONCURRENTLY builds on a table take turns: no deadlock at all
    # the application never loses a deadlock to our DDL (it takes its locks up front, in one order, and
    # waits for the later ones less than the application's deadlock_timeout). On a starved machine our DDL
    # can still be the one chosen (then it is retried): shown, not failed
    lost = deadlocks(adoption.live.state_dir, after=earlier)
    application_lost = [line for line in lost if not line.startswith(f"{APPLICATION_NAME} lost")]
    print("\n".join(lost))
    assert (findings, application_lost) == ([], []), f"squawk over {tmp_path / 'squawk'}: " + "\n".join(
        [*map(str, findings[:20]), *application_lost]
    )


def test_a_second_up_changes_nothing(adoption: Adoption) -> None:
    changes = adoption.stack.up().summary.resource_changes or {}
    assert list(changes) == ["same"]
    adoption.stack.preview(expect_no_changes=True)


def without_column(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda table: {**table, "columns": [column for column in table["columns"] if column["name"] != name]}


def test_dropping_a_column_is_refused_and_the_column_keeps_its_data(adoption: Adoption) -> None:
    table, column = "customers", "notes"
    with adoption.connect() as conn:
        values = column_values(conn, table, column)
    assert any(value is not None for _, value in values)
    with edited_table(adoption.schema_dir, table, without_column(column)):
        previewed = refusal(adoption.stack.preview)
        refused = refusal(adoption.stack.up)
    for message in (previewed, refused):
        assert f"column {table}.{column} would be dropped" in message
        assert "thorbis:allowDataLoss" in message
    with adoption.connect() as conn:
        assert column_values(conn, table, column) == values


def test_removing_a_table_is_refused_before_anything_changes(adoption: Adoption) -> None:
    """Refused by the manifest at check, so the table's policies, trigger and indexes are not deleted
    ahead of it either (the table's own refusal would stop only the table, at the end)."""
    table = adoption.table("payments")
    with edited_table(adoption.schema_dir, table.name, lambda _: None):
        previewed = refusal(adoption.stack.preview)
        refused = refusal(adoption.stack.up)
    for message in (previewed, refused):
        assert f"table {table.name} would be dropped with its rows" in message
        assert "thorbis:allowDataLoss" in message
    with adoption.connect() as conn:
        assert fingerprint(conn, table) == adoption.fingerprints[table.name]
    adoption.stack.preview(expect_no_changes=True)
