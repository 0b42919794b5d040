"""One pull request's worth of every change kind, applied online by a plain `pulumi up` to the populated stack
that test_adopt_existing_database adopted (shared, tests/e2e/conftest.py), while the application writes and
reads through PgBouncer as `authenticated` with its claims.

The pull request: columns added (nullable; NOT NULL with a constant default; NOT NULL with a volatile
default; NOT NULL filled by a `backfill`), a column renamed, a column retyped in place and one through a
copy, a unique key and a primary key changed, a unique key and a foreign key changed on a partitioned table,
an index dropped from a plain table and one from a partitioned table, and a populated table partitioned
(converted online, then registered with pg_partman). The PR preview shows each statement's lock, work and
rows first; the `up` then leaves the application without an error, stalled less than lock_timeout, every
row and value as it was, nothing refused; a second preview is clean; and squawk finds nothing in the DDL
the provider ran (read back from the server's log).
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from ops.preview import render_markdown, run_preview
from testbed.before_state import build_before_state
from tests.conftest import ROOT
from tests.ddl_log import provider_transactions, sessions, squawk
from tests.e2e.conftest import Adoption

pytestmark = pytest.mark.e2e
LOCK_TIMEOUT_SECONDS = 5  # the stack's default thorbis:lockTimeout
WRITER_COMPANY = "a0000000-0000-4000-8000-000000000001"  # ids of testbed/before_rows.sql
WRITER_PROPERTY = "d0000000-0000-4000-8000-000000000001"
Table = dict[str, Any]


# --- the pull request, as edits of the copy's sql/schema ------------------------------------------------


def column(table: Table, name: str) -> Table:
    return next(c for c in table["columns"] if c["name"] == name)


def customers(table: Table) -> None:
    table["columns"] += [
        {"name": "nickname", "type": "text"},
        {"name": "tier", "type": "text", "null": False, "default": "'basic'"},
    ]
    notes = column(table, "notes")
    notes.update({"name": "remarks", "renamed_from": "notes"})
    column(table, "credit_limit")["type"] = "numeric(14,2)"  # a wider precision: in place, no rewrite


def jobs(table: Table) -> None:
    table["columns"].append({"name": "public_token", "type": "uuid", "null": False, "default": "gen_random_uuid()"})
    column(table, "estimated_duration_minutes")["type"] = "bigint"  # a rewrite: through a copy


def properties(table: Table) -> None:
    table["columns"].append({"name": "label", "type": "text", "null": False, "backfill": "'property ' || id::text"})


def email_logs(table: Table) -> None:
    table["primary_key"] = ["id", "created_at"]
    table["unique"] = [
        {"name": "email_logs_provider_message_key", "columns": ["company_id", "provider", "provider_message_id"]}
    ]


def communications(table: Table) -> None:
    table["unique"] = [{"name": "communications_company_key", "columns": ["company_id", "id", "created_at"]}]
    column(table, "customer_id")["references"]["on_delete"] = "set null"  # the partitioned table's key changes
    table["indexes"] = [index for index in table["indexes"] if index["name"] != "communications_thread_idx"]


def equipment(table: Table) -> None:
    table["indexes"] = [index for index in table["indexes"] if index["name"] != "equipment_customer_property_idx"]


def price_history(table: Table) -> None:
    table["primary_key"] = ["id", "effective_at"]
    table["partition"] = {"column": "effective_at", "interval": "month"}


PULL_REQUEST: dict[str, Callable[[Table], None]] = {
    "customers": customers,
    "jobs": jobs,
    "properties": properties,
    "email_logs": email_logs,
    "communications": communications,
    "equipment": equipment,
    "price_history": price_history,
}
#: Per changed table, its columns before -> after (renamed ones; the others keep their names).
RENAMED = {"customers": {"notes": "remarks"}}


def edit_schema(schema_dir: Path, edits: dict[str, Callable[[Table], None]]) -> None:
    for path in sorted(schema_dir.glob("*.yaml")):
        content = yaml.safe_load(path.read_text())
        touched = [table for table in content["tables"] if table["name"] in edits]
        for table in touched:
            edits[table["name"]](table)
        if touched:
            path.write_text(yaml.safe_dump(content, sort_keys=False))


# --- the application, through PgBouncer --------------------------------------------------------------


class Application(threading.Thread):
    """Writes (a customer, a job for it and a note in communications) or reads (counts) every few
    milliseconds, each in a transaction as `authenticated` with its company's claims, through PgBouncer."""

    def __init__(self, adoption: Adoption, write: bool) -> None:
        super().__init__(name="writer" if write else "reader", daemon=True)
        self.live, self.write = adoption.live, write
        self.ids: dict[str, list[uuid.UUID]] = {"customers": [], "jobs": [], "communications": []}
        self.done_at: list[float] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.live.pgbouncer_port,
            user="authenticator",
            password=self.live.passwords["authenticatorPassword"],
            dbname="thorbis",
            autocommit=True,
            prepare_threshold=None,  # transaction pooling: no named prepared statements
            connect_timeout=30,
        )

    def run(self) -> None:
        with self.connect() as conn:
            while not self.halt.is_set():
                try:
                    with conn.transaction():
                        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims(),))
                        conn.execute("SET LOCAL ROLE authenticated")
                        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
                        self.once(conn)
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {str(error).strip()}")
                else:
                    self.done_at.append(time.monotonic())
                self.halt.wait(0.02)

    def once(self, conn: psycopg.Connection[Any]) -> None:
        if not self.write:
            conn.execute("SELECT count(*) FROM public.customers").fetchone()
            conn.execute("SELECT count(*) FROM public.communications WHERE created_at > now() - interval '1 day'")
            return
        customer, job, note = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        number = f"E-{customer.hex[:12]}"
        conn.execute(
            "INSERT INTO public.customers (id, company_id, customer_number, first_name, last_name) "
            "VALUES (%s, %s, %s, 'Walk', 'In')",
            (customer, WRITER_COMPANY, number),
        )
        conn.execute(
            "INSERT INTO public.jobs (id, company_id, customer_id, property_id, job_number, title) "
            "VALUES (%s, %s, %s, %s, %s, 'Booked during the schema change')",
            (job, WRITER_COMPANY, customer, WRITER_PROPERTY, number),
        )
        conn.execute(
            "INSERT INTO public.communications (id, company_id, customer_id, job_id, type, direction, body) "
            "VALUES (%s, %s, %s, %s, 'note', 'internal', 'Booked during the schema change')",
            (note, WRITER_COMPANY, customer, job),
        )
        self.ids["customers"].append(customer)
        self.ids["jobs"].append(job)
        self.ids["communications"].append(note)

    def longest_stall(self, start: float, end: float) -> float:
        moments = [start, *(t for t in self.done_at if start < t < end), end]
        return max(later - earlier for earlier, later in itertools.pairwise(moments))


def claims() -> str:
    return f'{{"company_id": "{WRITER_COMPANY}", "role": "authenticated"}}'


@contextmanager
def application_running(adoption: Adoption) -> Iterator[tuple[Application, Application]]:
    writer, reader = Application(adoption, write=True), Application(adoption, write=False)
    writer.start()
    reader.start()
    try:
        time.sleep(0.5)
        yield writer, reader
        time.sleep(0.5)
    finally:
        for app in (writer, reader):
            app.halt.set()
            app.join(timeout=30)


# --- what the rows hold ------------------------------------------------------------------------------


def fingerprint(
    conn: psycopg.Connection[Any], table: str, columns: list[str], exclude: list[uuid.UUID]
) -> tuple[int, str]:
    """Count and md5 of the rows (the listed columns, as text, in id order), without the application's."""
    query = sql.SQL(
        "SELECT count(*), md5(coalesce(string_agg(ROW({cols})::text, E'\\n' ORDER BY id), '')) FROM {t} "
        "WHERE id <> ALL(%s)"
    ).format(cols=sql.SQL(", ").join(map(sql.Identifier, columns)), t=sql.Identifier("public", table))
    row = conn.execute(query, (exclude,)).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def columns_before(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (f"public.{table}",),
    ).fetchall()
    return [name for (name,) in rows]


def ensure_adopted(adoption: Adoption) -> None:
    """When this module runs without test_adopt_existing_database: the review's database, adopted."""
    if adoption.adopted:
        return
    adoption.stack.up()
    with adoption.connect() as conn:
        adoption.tables = build_before_state(conn)
    shutil.copytree(ROOT / "sql", adoption.project / "sql", dirs_exist_ok=True)
    assert adoption.stack.up().summary.result == "succeeded"
    adoption.adopted = True


# --- the tests ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evolution(adoption: Adoption) -> Adoption:
    ensure_adopted(adoption)
    edit_schema(adoption.schema_dir, PULL_REQUEST)
    return adoption


def test_the_pr_preview_shows_each_statements_lock_work_and_rows(evolution: Adoption) -> None:
    outcome = run_preview(evolution.stack)
    summary = render_markdown(outcome)
    assert outcome.failure is None and outcome.destructive == [], summary[:2000]
    assert "- **update** `table-customers`" in summary
    # planned against the live catalog: every statement of a changed table says what it costs
    for expected in (
        'ALTER TABLE "public"."customers" RENAME COLUMN "notes" TO "remarks"',
        "-- ACCESS EXCLUSIVE on public.customers (blocks reads and writes); catalog only",
        "-- SHARE UPDATE EXCLUSIVE on public.email_logs (blocks no reads or writes); reads every row, ~",
        "-- ROW EXCLUSIVE on public.jobs (blocks no reads or writes); backfills rows in batches, ~",
        "; each batch in its own transaction",
        'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "email_logs_pkey_building"',
    ):
        assert expected in summary, f"{expected!r} not in the summary:\n{summary}"
    for table in ("customers", "jobs", "properties", "email_logs", "communications"):
        assert "computed at apply time" not in change_block(summary, f"table-{table}"), table


def change_block(summary: str, name: str) -> str:
    """The lines of one change in the summary: its line and what follows until the next change or kind."""
    start = summary.index(f"`{name}`")
    rest = summary[start:]
    ends = [rest.find(marker, 1) for marker in ("\n- **", "\n### ")]
    return rest[: min([end for end in ends if end > 0], default=len(rest))]


def test_one_pull_request_of_every_change_kind_is_applied_online(evolution: Adoption, tmp_path: Path) -> None:
    stack, state_dir = evolution.stack, evolution.live.state_dir
    with evolution.connect() as conn:
        before = {name: columns_before(conn, name) for name in PULL_REQUEST}
        rows = {name: fingerprint(conn, name, before[name], []) for name in PULL_REQUEST}
    earlier = sessions(state_dir)
    with application_running(evolution) as (writer, reader):
        started = time.monotonic()
        result = stack.up()
        ended = time.monotonic()
    assert result.summary.result == "succeeded"
    stalls = {app.name: app.longest_stall(started, ended) for app in (writer, reader)}
    print(f"\nschema change took {ended - started:.1f} s; longest stall: " + ", ".join(
        f"{name} {stall:.2f} s" for name, stall in stalls.items()))  # fmt: skip
    assert writer.errors == [] and reader.errors == [], (writer.errors[:3], reader.errors[:3])
    assert len(writer.done_at) > 20 and len(reader.done_at) > 20
    assert max(stalls.values()) < LOCK_TIMEOUT_SECONDS

    with evolution.connect() as conn:
        for name in PULL_REQUEST:  # every row and value as it was (renamed columns under their new names)
            after = [RENAMED.get(name, {}).get(column, column) for column in before[name]]
            mine = writer.ids.get(name, [])
            assert fingerprint(conn, name, after, mine) == rows[name], f"{name} changed"
        assert_changes_are_live(conn)
    stack.preview(expect_no_changes=True)

    transactions = provider_transactions(state_dir, after=earlier)
    findings = squawk(transactions, tmp_path / "squawk")
    assert findings == [], f"squawk over {tmp_path / 'squawk'}: " + "\n".join(map(str, findings[:20]))


def assert_changes_are_live(conn: psycopg.Connection[Any]) -> None:
    def value(query: str) -> Any:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]

    def column_type(table: str, name: str) -> tuple[str, bool] | None:
        row = conn.execute(
            "SELECT format_type(atttypid, atttypmod), attnotnull FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = %s AND NOT attisdropped",
            (f"public.{table}", name),
        ).fetchone()
        return None if row is None else (str(row[0]), bool(row[1]))

    assert column_type("customers", "nickname") == ("text", False)
    assert column_type("customers", "tier") == ("text", True)
    assert column_type("customers", "notes") is None and column_type("customers", "remarks") == ("text", False)
    assert column_type("customers", "credit_limit") == ("numeric(14,2)", False)
    assert column_type("jobs", "public_token") == ("uuid", True)
    assert value("SELECT count(DISTINCT public_token) = count(*) FROM public.jobs")
    assert column_type("jobs", "estimated_duration_minutes") == ("bigint", False)
    assert column_type("properties", "label") == ("text", True)
    assert value("SELECT count(*) FROM public.properties WHERE label <> 'property ' || id::text") == 0
    keys = dict(
        conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype IN ('p', 'u') "
            "AND conrelid IN ('public.email_logs'::regclass, 'public.communications'::regclass)"
        ).fetchall()
    )
    assert keys["email_logs_pkey"] == "PRIMARY KEY (id, created_at)"
    assert keys["email_logs_provider_message_key"] == "UNIQUE (company_id, provider, provider_message_id)"
    assert keys["communications_company_key"] == "UNIQUE (company_id, id, created_at)"
    fk = value(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'communications_customer_id_fkey' "
        "AND conrelid = 'public.communications'::regclass"
    )
    assert "ON DELETE SET NULL (customer_id)" in fk
    assert (
        value("SELECT count(*) FROM pg_constraint WHERE NOT convalidated AND connamespace = 'public'::regnamespace")
        == 0
    )
    gone = value(
        "SELECT count(*) FROM pg_class WHERE relname LIKE ANY(ARRAY['%communications_thread_idx', "
        "'equipment_customer_property_idx'])"
    )
    assert gone == 0
    assert value("SELECT relkind FROM pg_class WHERE oid = 'public.price_history'::regclass") == "p"
    assert value("SELECT count(*) FROM partman.part_config WHERE parent_table = 'public.price_history'") == 1
    assert value("SELECT to_regclass('public.price_history_unpartitioned') IS NULL")
    leftovers = value(
        "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = "
        "'public'::regnamespace AND NOT a.attisdropped AND (a.attname LIKE '%\\_retyped' OR a.attname LIKE "
        "'%\\_before\\_retype')"
    )
    assert leftovers == 0


def test_a_not_null_column_the_rows_have_no_value_for_is_refused_naming_them(evolution: Adoption) -> None:
    with evolution.connect() as conn:
        rows = int(conn.execute("SELECT count(*) FROM public.equipment").fetchone()[0])  # type: ignore[index]
    assert rows > 0
    original = {path: path.read_text() for path in evolution.schema_dir.glob("*.yaml")}
    edit_schema(
        evolution.schema_dir,
        {"equipment": lambda table: table["columns"].append({"name": "code", "type": "text", "null": False})},
    )
    try:
        with pytest.raises(Exception) as refused:
            evolution.stack.up()
        assert f"code NOT NULL (no default or backfill): {rows} row(s)" in str(refused.value)
        with evolution.connect() as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.equipment'::regclass AND attname = 'code'"
            ).fetchone() == (0,)
    finally:
        for path, text in original.items():
            path.write_text(text)
    evolution.stack.preview(expect_no_changes=True)
