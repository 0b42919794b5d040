"""Every change kind a pull request makes to a live table, applied by the Table kind on a real server while
the application writes: nothing refused that keeps its data, no row lost or changed, no table rewritten
under a lock, and no statement that reads every row holding a lock that blocks writers. And DDL that
locks two tables never makes the application lose a deadlock to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.database.ddl import Batches, Operation, Work, run_batches
from components.database.kinds.destroy_guard import DestroyGuardKind, DestroyGuardSpec
from components.database.kinds.index import IndexKind, IndexSpec
from components.database.kinds.manifest import ManifestKind, ManifestSpec
from components.database.kinds.schema import SchemaKind, SchemaSpec
from components.database.kinds.table import TableKind
from components.database.locks import Lock, TableLock
from components.database.session import Timeouts
from components.database.table_shape import (
    CheckSpec,
    ColumnSpec,
    ForeignKeySpec,
    PartitionSpec,
    TableSpec,
    UniqueSpec,
    holds_rows,
)
from components.kind import ProviderError
from ops.events import Change
from ops.sql_preview import estimated_rows, planned_operations
from tests.integration.databases import Database, database_server, recorded

PASSWORD = "online-Changes'0123"
ROWS = 20_000


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    with database_server("thorbis_online", PASSWORD) as db:
        yield db


class Writer(threading.Thread):
    """The application: one statement every few milliseconds, each in its own transaction."""

    def __init__(self, database: Database, statement: Callable[[int], tuple[str, tuple[Any, ...]]]) -> None:
        super().__init__(daemon=True)
        self.database, self.statement = database, statement
        self.errors: list[str] = []
        self.written = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with self.database.connect() as conn:
            conn.execute("SET lock_timeout = '5s'")
            while not self.halt.is_set():
                query, params = self.statement(self.written)
                try:
                    conn.execute(query, params)
                    self.written += 1
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {str(error).strip()}")
                self.halt.wait(0.005)

    def __enter__(self) -> Writer:
        self.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *_: object) -> None:
        self.halt.set()
        self.join(timeout=30)


def filenode(database: Database, table: str) -> int:
    return int(database.scalar("SELECT pg_relation_filenode(%s::regclass)", (table,)))


def make(database: Database, spec: TableSpec, rows: str) -> TableKind:
    """The table made by the kind, then filled (as the application would have, before the change)."""
    kind = database.kind(TableKind)
    database.execute(f"DROP TABLE IF EXISTS {spec.schema_name}.{spec.name} CASCADE")
    kind.create(spec)
    database.execute(rows)
    database.execute(f"ANALYZE {spec.schema_name}.{spec.name}")
    return kind


def change(kind: TableKind, old: TableSpec, new: TableSpec) -> list[Operation]:
    """Apply `new` over the live table made from `old`; the plan it ran, as the PR preview would show it."""
    with psycopg.connect(**kind.target.connection.conninfo(), autocommit=True) as conn:
        planned = kind.planned_live(conn, old, new)
    assert planned is not None
    assert kind.data_loss(old.model_dump(by_alias=True), new) == []
    kind.update(new.name, recorded(old, kind.observe("", old)), new)
    return planned


def online(plan: list[Operation]) -> None:
    """Nothing that reads or writes every row holds a lock that blocks writers, and nothing rewrites."""
    heavy = [op for op in plan if op.work is not Work.CATALOG]
    assert heavy, "the change touched no row"
    for op in heavy:
        assert op.lock is not None and not op.lock.lock.blocks_writes, op.render()
    assert all(op.work is not Work.REWRITE for op in plan)


PEOPLE = TableSpec(
    schema_name="public",
    name="people",
    columns=[
        ColumnSpec(name="id", type="bigint", nullable=False),
        ColumnSpec(name="email", type="character varying(40)"),
        ColumnSpec(name="visits", type="integer", nullable=False, default="0"),
        ColumnSpec(name="note", type="text"),
    ],
    primary_key=["id"],
    uniques=[UniqueSpec(name="people_email_key", columns=["email"])],
    checks=[CheckSpec(name="people_visits_positive", expression="visits >= 0")],
)
PEOPLE_ROWS = (
    f"INSERT INTO public.people (id, email, visits, note) SELECT g, 'p' || g || '@example.com', g % 50, "
    f"'note ' || g FROM generate_series(1, {ROWS}) g"
)


def people_writer(database: Database) -> Writer:
    return Writer(
        database,
        lambda n: ("INSERT INTO public.people (id, email) VALUES (%s, %s)", (10**6 + n, f"w{n}@example.com")),
    )


def people_updater(database: Database) -> Writer:
    """An application that updates rows but does not know a new NOT NULL column (it may not insert then)."""
    return Writer(
        database, lambda n: ("UPDATE public.people SET visits = visits + 1 WHERE id = %s", (1 + n * 7 % ROWS,))
    )


def columns(database: Database, table: str) -> dict[str, tuple[str, bool]]:
    rows = database.rows(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table,),
    )
    return {name: (type_, not_null) for name, type_, not_null in rows}


def with_columns(spec: TableSpec, *added: ColumnSpec, **replaced: ColumnSpec) -> TableSpec:
    kept = [replaced.get(column.name, column) for column in spec.columns]
    return spec.model_copy(update={"columns": [*kept, *added]})


# --- the tests ----------------------------------------------------------------------------------------


def test_columns_are_added_without_a_rewrite_whatever_their_default(database: Database) -> None:
    kind = make(database, PEOPLE, PEOPLE_ROWS)
    before = filenode(database, "public.people")
    new = with_columns(
        PEOPLE,
        ColumnSpec(name="nickname", type="text"),
        ColumnSpec(name="tier", type="text", nullable=False, default="'basic'"),
        ColumnSpec(name="token", type="uuid", nullable=False, default="gen_random_uuid()"),
        ColumnSpec(name="handle", type="text", nullable=False, backfill="'h' || id"),
    )
    with people_updater(database) as writer:
        plan = change(kind, PEOPLE, new)
    assert writer.errors == [] and writer.written > 0
    online(plan)
    assert filenode(database, "public.people") == before, "the table was rewritten"
    live = columns(database, "public.people")
    assert live["tier"] == ("text", True) and live["token"] == ("uuid", True) and live["handle"] == ("text", True)
    tokens, distinct, empty = database.rows(
        "SELECT count(*), count(DISTINCT token), count(*) FILTER (WHERE handle IS NULL OR tier IS NULL) FROM people"
    )[0]
    assert tokens == distinct == ROWS and empty == 0
    assert database.scalar("SELECT handle FROM people WHERE id = 7") == "h7"


def test_a_not_null_column_without_a_value_for_the_rows_is_refused_naming_them(database: Database) -> None:
    kind = make(database, PEOPLE, PEOPLE_ROWS)
    new = with_columns(PEOPLE, ColumnSpec(name="code", type="text", nullable=False))
    with pytest.raises(ProviderError) as refused:
        kind.update(PEOPLE.name, recorded(PEOPLE, kind.observe("", PEOPLE)), new)
    assert f"code NOT NULL (no default or backfill): {ROWS} row(s)" in str(refused.value)
    assert "nothing was changed" in str(refused.value)
    assert "code" not in columns(database, "public.people")


def test_a_backfill_covers_every_page_of_a_plain_table_and_the_preview_counts_its_rows(database: Database) -> None:
    """A table outside any partition tree (pg_partition_tree lists nothing for it) is its own only leaf: the
    batches run over all its pages and the PR preview's estimate counts its rows."""
    make(database, PEOPLE, PEOPLE_ROWS)
    pages = database.scalar("SELECT pg_relation_size('public.people') / current_setting('block_size')::int")
    people = TableLock("public", "people", Lock.ROW_EXCLUSIVE)
    fill = Batches(
        people,
        lambda first, end: sql.SQL("UPDATE public.people SET note = 'filled' WHERE ctid >= {}::tid AND ctid < {}::tid")
        .format(first, end),
        pages=pages // 4,  # the table's pages take several batches
    )  # fmt: skip
    with database.connect() as conn:
        assert estimated_rows(conn, people) == ROWS
        run_batches(conn, fill, Timeouts(), "fill people")
    assert database.scalar("SELECT count(*) FILTER (WHERE note IS DISTINCT FROM 'filled') FROM people") == 0


def test_the_preview_of_an_adopted_table_keeps_its_owner_as_the_apply_does(database: Database) -> None:
    """The PR preview plans from the status the stack recorded: an adopted table's owner is its own."""
    kind = make(database, PEOPLE, PEOPLE_ROWS)  # owned by the admin
    old = PEOPLE.model_copy(update={"owner": "people_owner"})
    new = with_columns(old, ColumnSpec(name="nickname", type="text", nullable=False, default="'none'"))
    before, after = old.model_dump(by_alias=True), new.model_dump(by_alias=True)
    plans = {}
    for adopted in (True, False):
        outputs = {**before, "adopted": adopted}
        change = Change("update", "urn:table-people", kind.token, (), (), before, outputs, after)
        with database.connect() as conn:
            plans[adopted] = [op.render() for op in planned_operations(kind, change, conn) or []]
    assert plans[True] and not any("OWNER TO" in statement for statement in plans[True])
    assert any("OWNER TO" in statement for statement in plans[False])


def test_the_manifest_counts_only_what_the_live_tables_hold_of_its_record(database: Database) -> None:
    """An up that failed after the manifest's check leaves its record ahead of the tables: a column or table
    recorded then but never made is declared away without a refusal; one the table holds is still refused."""
    make(database, PEOPLE, PEOPLE_ROWS)
    manifest = database.kind(ManifestKind)
    people = {column.name: column.type for column in PEOPLE.columns}
    record = {"tables": {"people": {**people, "code": "text"}, "never_made": {"id": "uuid"}}}
    assert manifest.data_loss(record, ManifestSpec(tables={"people": people})) == []
    without_note = {name: type_ for name, type_ in people.items() if name != "note"}
    assert manifest.data_loss(record, ManifestSpec(tables={"people": without_note})) == [
        "column people.note would be dropped"
    ]
    assert manifest.data_loss(record, ManifestSpec(tables={})) == ["table people would be dropped with its rows"]


def test_a_renamed_column_keeps_its_values_and_is_no_data_loss(database: Database) -> None:
    kind = make(database, PEOPLE, PEOPLE_ROWS)
    values = database.rows("SELECT id, note FROM people ORDER BY id")
    new = with_columns(PEOPLE, note=ColumnSpec(name="remark", type="text", renamed_from="note"))
    with people_writer(database) as writer:
        change(kind, PEOPLE, new)
    assert writer.errors == []
    assert "note" not in columns(database, "public.people")
    assert database.rows("SELECT id, remark FROM people WHERE id <= %s ORDER BY id", (ROWS,)) == values
    assert kind.observe("", new) is not None


def test_a_type_change_is_made_in_place_or_through_a_verified_copy_never_by_a_rewrite(database: Database) -> None:
    kind = make(database, PEOPLE, PEOPLE_ROWS)
    database.execute("CREATE INDEX people_visits_idx ON people (visits)")
    before = filenode(database, "public.people")
    values = database.rows("SELECT id, email, visits FROM people ORDER BY id")
    new = with_columns(
        PEOPLE,
        email=ColumnSpec(name="email", type="text"),  # binary-compatible: in place
        visits=ColumnSpec(name="visits", type="bigint", nullable=False, default="0"),  # a copy, swapped
    )
    with people_writer(database) as writer:
        plan = change(kind, PEOPLE, new)
    assert writer.errors == []
    online(plan)
    assert filenode(database, "public.people") == before, "the table was rewritten"
    live = columns(database, "public.people")
    assert live["email"] == ("text", False) and live["visits"] == ("bigint", True)
    assert database.rows("SELECT id, email, visits FROM people WHERE id <= %s ORDER BY id", (ROWS,)) == values
    indexes = dict(
        database.rows("SELECT indexrelid::regclass::text, indisvalid FROM pg_index WHERE indrelid = 'people'::regclass")
    )
    assert indexes == {"people_pkey": True, "people_email_key": True, "people_visits_idx": True}
    assert database.scalar("SELECT pg_get_indexdef('people_visits_idx'::regclass)").endswith("(visits)")
    assert database.rows(
        "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'people'::regclass AND contype = 'c'"
    ) == [("people_visits_positive", True)]
    assert [c for c in columns(database, "public.people") if "retype" in c] == []


def test_a_type_change_of_a_column_a_view_uses_is_refused_naming_it(database: Database) -> None:
    kind = make(database, PEOPLE, PEOPLE_ROWS)
    database.execute("CREATE VIEW public.busy_people AS SELECT id FROM public.people WHERE visits > 40")
    new = with_columns(PEOPLE, visits=ColumnSpec(name="visits", type="bigint", nullable=False, default="0"))
    with pytest.raises(ProviderError) as refused:
        kind.update(PEOPLE.name, recorded(PEOPLE, kind.observe("", PEOPLE)), new)
    assert "column visits cannot change type while rule _RETURN on view busy_people use(s) it" in str(refused.value)
    assert "nothing was changed" in str(refused.value)
    assert columns(database, "public.people")["visits"] == ("integer", True)
    database.execute("DROP VIEW public.busy_people")


def test_unique_and_primary_keys_change_through_indexes_built_concurrently(database: Database) -> None:
    kind = make(database, PEOPLE, PEOPLE_ROWS)
    new = PEOPLE.model_copy(
        update={
            "primary_key": ["id", "visits"],
            "uniques": [UniqueSpec(name="people_email_key", columns=["email", "id"])],
        }
    )
    with people_writer(database) as writer:
        plan = change(kind, PEOPLE, new)
    assert writer.errors == []
    online(plan)
    builds = [op.render() for op in plan if op.work is Work.SCAN and "CREATE UNIQUE INDEX CONCURRENTLY" in op.render()]
    assert len(builds) == 2
    made = [op.render() for op in plan if " ADD CONSTRAINT " in op.render()]
    assert len(made) == 2 and all(" USING INDEX " in statement for statement in made)
    keys = dict(database.rows(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'people'::regclass "
        "AND contype IN ('p', 'u')"
    ))  # fmt: skip
    assert keys == {"people_pkey": "PRIMARY KEY (id, visits)", "people_email_key": "UNIQUE (email, id)"}


EVENTS = TableSpec(
    schema_name="public",
    name="events",
    columns=[
        ColumnSpec(name="id", type="bigint", nullable=False),
        ColumnSpec(name="person_id", type="bigint"),
        ColumnSpec(name="at", type="timestamptz", nullable=False),
    ],
    primary_key=["id", "at"],
    partition=PartitionSpec(column="at"),
)
EVENTS_ROWS = """
CREATE TABLE public.events_p2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO public.events SELECT g, 1 + g % 1000, timestamptz '2025-01-01' + g * interval '10 min'
FROM generate_series(1, 20000) g;
"""


def test_keys_of_a_partitioned_table_are_made_on_each_partition_then_attached(database: Database) -> None:
    make(database, PEOPLE, PEOPLE_ROWS)
    kind = make(database, EVENTS, EVENTS_ROWS)
    new = EVENTS.model_copy(
        update={
            "uniques": [UniqueSpec(name="events_person_key", columns=["person_id", "id", "at"])],
            "foreign_keys": [
                ForeignKeySpec(
                    name="events_person_id_fkey",
                    columns=["person_id"],
                    ref_schema="public",
                    ref_table="people",
                    ref_columns=["id"],
                )
            ],
        }
    )
    writer = Writer(
        database,
        lambda n: ("INSERT INTO events VALUES (%s, 5, timestamptz '2025-06-01' + %s * interval '1 s')", (10**6 + n, n)),
    )
    with writer:
        plan = change(kind, EVENTS, new)
    assert writer.errors == []
    online(plan)
    attached = database.rows(
        "SELECT c.conrelid::regclass::text, c.contype, c.convalidated, c.conparentid <> 0 FROM pg_constraint c "
        "WHERE c.conrelid IN (SELECT relid FROM pg_partition_tree('events')) AND c.contype IN ('u', 'f') ORDER BY 1, 2"
    )
    assert attached == [
        ("events", "f", True, False),
        ("events", "u", True, False),
        ("events_default", "f", True, True),
        ("events_default", "u", True, True),
        ("events_p2025", "f", True, True),
        ("events_p2025", "u", True, True),
    ]
    parent_attach = [op for op in plan if op.render().startswith('ALTER TABLE "public"."events" ADD CONSTRAINT')]
    assert len(parent_attach) == 2 and all(op.work is Work.CATALOG for op in parent_attach)


def test_an_index_of_a_partitioned_table_is_dropped(database: Database) -> None:
    make(database, PEOPLE, PEOPLE_ROWS)
    make(database, EVENTS, EVENTS_ROWS)
    index = IndexSpec(schema_name="public", table="events", name="events_person_idx", keys=["person_id"])
    kind = database.kind(IndexKind)
    kind.create(index)
    kind.delete("", index)
    assert database.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE '%%events_person_idx%%'") == 0


# --- deadlocks: the application never loses one to our DDL ------------------------------------------------

ORDERS = TableSpec(
    schema_name="public",
    name="orders",
    columns=[ColumnSpec(name="id", type="bigint", nullable=False), ColumnSpec(name="person_id", type="bigint")],
    primary_key=["id"],
)


def waiting_for(database: Database, table: str, other_than: int) -> bool:
    """Whether a session other than `other_than` waits for a lock on `table`."""
    return bool(
        database.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = %s::regclass AND NOT granted AND pid <> %s)",
            (table, other_than),
        )
    )


def test_ddl_on_two_tables_takes_its_locks_up_front_so_the_application_never_loses_a_deadlock(
    database: Database,
) -> None:
    """The application holds `people` (it wrote a row) and then wants `orders`; our change locks `orders`
    (a column) and `people` (a foreign key to it). PostgreSQL would abort whichever session's deadlock check
    runs first: the application's (deadlock_timeout 1 s after it began to wait) when our DDL waited first
    and its own check (10 ms) found no cycle yet. Taking both locks up front, the second within 100 ms, our
    DDL is never holding one table while the application waits for it."""
    make(database, PEOPLE, PEOPLE_ROWS)
    kind = make(database, ORDERS, "INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g")
    new = ORDERS.model_copy(
        update={
            "columns": [*ORDERS.columns, ColumnSpec(name="total", type="numeric")],
            "foreign_keys": [
                ForeignKeySpec(
                    name="orders_person_id_fkey",
                    columns=["person_id"],
                    ref_schema="public",
                    ref_table="people",
                    ref_columns=["id"],
                )
            ],
        }
    )
    state = recorded(ORDERS, kind.observe("", ORDERS))
    with database.connect() as conn:
        planned = [op.render() for op in kind.planned_live(conn, ORDERS, new) or []]
    assert next(statement for statement in planned if "FOREIGN KEY" in statement).endswith(" NOT VALID")
    failures: list[BaseException] = []
    with database.connect() as application:
        application.execute("SET deadlock_timeout = '1s'")
        application.execute("BEGIN")
        application.execute("UPDATE people SET visits = visits + 1 WHERE id = 1")  # holds people
        ddl = threading.Thread(target=lambda: run_catching(lambda: kind.update("orders", state, new), failures))
        ddl.start()
        deadline = time.monotonic() + 30
        while not waiting_for(database, "public.people", application.info.backend_pid):
            assert time.monotonic() < deadline, "the DDL never waited for people"
            time.sleep(0.01)
        time.sleep(0.3)  # our DDL's own deadlock check (10 ms) has run and found no cycle
        application.execute("SELECT count(*) FROM orders")  # the application wants orders now
        application.execute("COMMIT")
        ddl.join(timeout=60)
    assert failures == []
    assert database.scalar(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'orders_person_id_fkey'"
    )  # added NOT VALID, then validated (no scan under SHARE ROW EXCLUSIVE)
    with database.connect() as conn:
        plan = kind.planned_live(conn, ORDERS, new.model_copy(update={"name": "orders"}))
    assert plan == []  # nothing left to do


def run_catching(work: Callable[[], object], failures: list[BaseException]) -> None:
    try:
        work()
    except BaseException as error:
        failures.append(error)


def test_only_a_table_with_something_of_someone_elses_is_adopted(database: Database) -> None:
    """A kill between a table's CREATE and the engine's record of it leaves the table empty, of the declared
    owner: recovery's `up` takes it as the stack's own (destroy drops it, and then its owner role). A table with
    rows, or of another owner, existed before the stack: adopted, kept by destroy."""
    database.execute("DO $$ BEGIN CREATE ROLE people_owner; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    owned = PEOPLE.model_copy(update={"owner": "people_owner"})
    kind = database.kind(TableKind)
    found = {}
    for case, rows, owner in (("killed create", None, "people_owner"), ("rows", PEOPLE_ROWS, "people_owner"),
                              ("other owner", None, None)):  # fmt: skip
        database.execute("DROP TABLE IF EXISTS public.people CASCADE")
        kind.create(owned if owner else PEOPLE)
        if rows:
            database.execute(rows)
        found[case] = kind.create(owned)[1].adopted
    assert found == {"killed create": False, "rows": True, "other owner": True}


def test_the_destroy_guard_refuses_while_a_declared_table_holds_rows(database: Database) -> None:
    """The first delete of a destroy: refused naming the key and the commands while a declared table holds a
    row; let through when the declared tables are empty or gone, or when data loss is allowed."""
    guard = database.kind(DestroyGuardKind)
    spec = DestroyGuardSpec(stack="prod", tables=["public.people", "public.never_made"])
    make(database, PEOPLE, "SELECT 1")  # made, empty
    guard.delete("destroy-guard", spec)
    database.execute("INSERT INTO public.people (id) VALUES (1)")
    with pytest.raises(ProviderError) as refused:
        guard.delete("destroy-guard", spec)
    message = str(refused.value)
    assert "thorbis:allowDataLoss is false and 1 of its tables hold rows (public.people)" in message
    assert "pulumi config set thorbis:allowDataLoss true --stack prod" in message
    guard.provider_config = {**guard.provider_config, "allowDataLoss": True}
    guard.delete("destroy-guard", spec)


def test_rows_row_level_security_hides_from_the_admin_are_not_taken_for_an_empty_table(database: Database) -> None:
    """An admin without BYPASSRLS counts no row where the policies hide them all: the destroy guard, the
    table's delete and its adoption would take the table for empty. With row_security off the read fails."""
    database.execute(
        "DROP TABLE IF EXISTS public.hidden; CREATE TABLE public.hidden (id int); "
        "INSERT INTO public.hidden VALUES (1); "
        "ALTER TABLE public.hidden ENABLE ROW LEVEL SECURITY; "
        "DO $$ BEGIN CREATE ROLE hidden_reader LOGIN PASSWORD 'Hidden-Reader-0123'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$; GRANT SELECT ON public.hidden TO hidden_reader"
    )
    with database.connect("hidden_reader", "Hidden-Reader-0123") as conn:
        assert conn.execute("SELECT count(*) FROM public.hidden").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            holds_rows(conn, "public", "hidden")
    with database.connect() as conn:
        assert holds_rows(conn, "public", "hidden")


def test_only_a_schema_holding_something_or_of_someone_else_is_adopted(database: Database) -> None:
    """The schema analogue: a kill between CREATE SCHEMA and the engine's record of it leaves it empty, of the
    declared owner (what goes in it waits for that record): the stack's own, dropped by destroy."""
    database.execute("DO $$ BEGIN CREATE ROLE people_owner; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    spec = SchemaSpec(name="left_behind", owner="people_owner")
    kind = database.kind(SchemaKind)
    found = {}
    for case, made in (
        ("killed create", "CREATE SCHEMA left_behind AUTHORIZATION people_owner"),
        ("holds a type", "CREATE SCHEMA left_behind AUTHORIZATION people_owner; CREATE TYPE left_behind.t AS (a int)"),
        ("other owner", "CREATE SCHEMA left_behind"),
    ):
        database.execute("DROP SCHEMA IF EXISTS left_behind CASCADE")
        database.execute(made)
        found[case] = kind.create(spec)[1].adopted
    assert found == {"killed create": False, "holds a type": True, "other owner": True}
