"""Monthly partitions against a real PostgreSQL 15 with pg_partman 4.7: registration (premake, retention,
our default partition reconciled with partman's), part_config drift repaired, forced RLS and no privileges
on every partition (the maintenance job, run by another role, secures what it makes; one made by hand is
drift the guard repairs), default rows counted and moved,
retention; and the online conversion of a populated plain table with a writer running throughout."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from components.database.conversion import convert_to_partitioned, drop_unpartitioned
from components.database.declared.access import load_access
from components.database.declared.jobs import load_jobs, partitioned_tables
from components.database.declared.model import load_schema
from components.database.declared.operations import load_maintenance
from components.database.kinds.function import FunctionKind
from components.database.kinds.partition_guard import PartitionGuardKind, PartitionGuardSpec, PartitionGuardStatus
from components.database.kinds.partition_set import PartitionSetKind, PartitionSetSpec, PartitionSetStatus, month_moves
from components.database.kinds.table import TableKind
from components.database.locks import Lock
from components.database.session import Timeouts
from components.database.table_shape import ColumnSpec, PartitionSpec, TableSpec, create_statement
from components.kind import Observed, ProviderError
from tests.integration.databases import Database, changes, database_server

PASSWORD = "it-Partman'pass:0123"
MAINT_PASSWORD = "it-maint-0123"
DATABASE = "thorbis_partitions"
OWNER = "thorbis_owner"
COMPANY_A = "00000000-0000-0000-0000-00000000000a"
BASE_SQL = f"""
CREATE ROLE {OWNER} NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
CREATE ROLE maint LOGIN PASSWORD '{MAINT_PASSWORD}' IN ROLE {OWNER};
GRANT CREATE ON SCHEMA public TO {OWNER};
CREATE SCHEMA app AUTHORIZATION {OWNER};
GRANT USAGE ON SCHEMA app TO authenticated;
CREATE FUNCTION app.current_company_id() RETURNS uuid LANGUAGE sql STABLE SET search_path = ''
  AS $$ SELECT (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'company_id')::uuid $$;
CREATE FUNCTION app.set_updated_at() RETURNS trigger LANGUAGE plpgsql SET search_path = ''
  AS $$ BEGIN NEW.updated_at := pg_catalog.now(); RETURN NEW; END $$;
CREATE SCHEMA partman;
CREATE EXTENSION pg_partman WITH SCHEMA partman;
-- what a non-superuser needs to run partman's maintenance (pg_partman's docs)
GRANT ALL ON SCHEMA partman TO maint;
GRANT ALL ON ALL TABLES IN SCHEMA partman TO maint;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA partman TO maint;
GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA partman TO maint;
"""


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    with database_server(DATABASE, PASSWORD) as db:
        db.execute(BASE_SQL)
        yield db


def month_suffix(db: Database, offset: int) -> str:
    return str(db.scalar("SELECT to_char(date_trunc('month', now()) + %s * interval '1 month', 'YYYY_MM')", (offset,)))


def partitions(db: Database, table: str) -> dict[str, tuple[bool, bool, str]]:
    """Partition name -> (RLS enabled, RLS forced, owner)."""
    return {
        name: (enabled, forced, owner)
        for name, enabled, forced, owner in db.rows(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner) "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            (f"public.{table}",),
        )
    }


def where_is(db: Database, table: str, note: str) -> str:
    return str(
        db.scalar(
            sql.SQL("SELECT tableoid::regclass::text FROM {} WHERE note = %s").format(sql.Identifier("public", table)),
            (note,),
        )
    )


# --- registration with pg_partman --------------------------------------------------------------------

EVENTS = TableSpec(
    schema_name="public",
    name="events",
    owner=OWNER,
    columns=[
        ColumnSpec(name="id", type="uuid", nullable=False, default="gen_random_uuid()"),
        ColumnSpec(name="company_id", type="uuid", nullable=False),
        ColumnSpec(name="note", type="text"),
        ColumnSpec(name="occurred_at", type="timestamptz", nullable=False, default="now()"),
    ],
    primary_key=["id", "occurred_at"],
    partition=PartitionSpec(column="occurred_at"),
)
EVENTS_SET = PartitionSetSpec(
    schema_name="public", table="events", control="occurred_at", premake=3, retention="24 months"
)


def insert_event(db: Database, note: str, at: str) -> None:
    db.execute("INSERT INTO public.events (company_id, note, occurred_at) VALUES (%s, %s, %s)", (COMPANY_A, note, at))


@pytest.fixture(scope="module")
def events(database: Database) -> Database:
    """The functions that secure partitions and run their maintenance (as sql/ declares them), then a
    partitioned table made by the Table kind (with its own default), holding rows."""
    securing = next(function for function in load_access().functions if function.name == "secure_partitions")
    database.kind(FunctionKind).create(securing.function_spec(OWNER))
    for procedure in load_maintenance().procedure_specs(OWNER):
        if procedure.name == "maintain_partitions":
            database.kind(FunctionKind).create(procedure)
    database.kind(TableKind).create(EVENTS)
    database.execute(
        "CREATE POLICY events_tenant ON public.events TO authenticated "
        "USING (company_id = (SELECT app.current_company_id()))"
    )
    database.execute("GRANT SELECT, INSERT ON public.events TO authenticated")
    insert_event(database, "this month", "now")
    insert_event(database, "far past", "2001-03-05")
    return database


def test_registration_premakes_and_takes_over_our_default_partition(events: Database) -> None:
    db = events
    assert where_is(db, "events", "this month") == "events_default"  # no monthly partition yet
    kind = db.kind(PartitionSetKind)
    resource_id, outputs = kind.create(EVENTS_SET)
    assert resource_id == "public.events"
    assert outputs == PartitionSetStatus(
        infinite_time_partitions=True, ignore_default_data=True, partition_interval="1 mon"
    )

    made = partitions(db, "events")
    assert {f"events_p{month_suffix(db, offset)}" for offset in range(-3, 4)} | {"events_default"} == set(made)
    # the row our default held went back through the parent into its month; the stray one stayed in default
    assert where_is(db, "events", "this month") == f"events_p{month_suffix(db, 0)}"
    assert where_is(db, "events", "far past") == "events_default"
    config = db.rows(
        "SELECT premake, retention, retention_keep_table, infinite_time_partitions, ignore_default_data, "
        "partition_interval::interval = interval '1 month' FROM partman.part_config "
        "WHERE parent_table = 'public.events'"
    )
    assert config == [(3, "24 months", False, True, True, True)]
    assert changes(kind, EVENTS_SET, kind.observe(resource_id, EVENTS_SET)) == []
    kind.update(resource_id, {}, EVENTS_SET)  # a second up changes nothing
    assert set(partitions(db, "events")) == set(made)


def test_a_long_named_table_gets_its_default_partition_under_pg_partmans_name(database: Database) -> None:
    """The Table kind, the PartitionSet kind and the conversion name the default partition alike: as
    pg_partman's check_name_length does, which cuts the table's name to fit the suffix into 63 bytes."""
    name = "events_of_a_tenant_with_a_name_long_enough_to_be_cut_by_partman"[:60]
    database.kind(TableKind).create(EVENTS.model_copy(update={"name": name}))
    try:
        expected = database.scalar("SELECT partman.check_name_length(%s, '_default')", (name,))
        assert expected != f"{name}_default"[:63]  # PostgreSQL's own truncation would name it otherwise
        assert set(partitions(database, name)) == {expected}
    finally:
        database.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", name)))


def test_part_config_drift_is_seen_and_repaired(events: Database) -> None:
    db = events
    kind = db.kind(PartitionSetKind)
    db.execute(
        "UPDATE partman.part_config SET premake = 9, retention = NULL, infinite_time_partitions = false "
        "WHERE parent_table = 'public.events'"
    )
    drift = changes(kind, EVENTS_SET, kind.observe("public.events", EVENTS_SET))
    assert drift == ["premake", "retention", "infiniteTimePartitions"]
    kind.update("public.events", {}, EVENTS_SET)
    assert changes(kind, EVENTS_SET, kind.observe("public.events", EVENTS_SET)) == []
    # the same retention written differently is no drift
    db.execute("UPDATE partman.part_config SET retention = '2 years' WHERE parent_table = 'public.events'")
    assert changes(kind, EVENTS_SET, kind.observe("public.events", EVENTS_SET)) == []


def acl_of_partitions(db: Database, table: str) -> dict[str, list[str]]:
    """Partition name -> its ACL entries but the owner's (none: no privilege of its own)."""
    return {
        name: list(entries)
        for name, entries in db.rows(
            "SELECT c.relname, ARRAY(SELECT DISTINCT a.grantee::regrole::text FROM aclexplode(c.relacl) a "
            "WHERE a.grantee <> c.relowner) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s)",
            (f"public.{table}",),
        )
    }


def test_partitions_made_by_the_maintenance_job_as_another_role_are_secured(events: Database) -> None:
    """No event trigger: the job's own procedure secures what pg_partman made, run as a role that is no
    superuser and whose default privileges would grant `authenticated` everything (as Supabase's do)."""
    db = events
    kind = db.kind(PartitionSetKind)
    more = EVENTS_SET.model_copy(update={"premake": 5})
    kind.update("public.events", {}, more)
    db.execute("ALTER DEFAULT PRIVILEGES FOR ROLE maint IN SCHEMA public GRANT ALL ON TABLES TO authenticated")
    with psycopg.connect(**{**db.connection.conninfo(), "user": "maint", "password": MAINT_PASSWORD}) as maint:
        maint.autocommit = True
        assert maint.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        job = next(job.command for job in load_jobs().resolved({}, {}) if job.name == "partman-maintenance")
        maint.execute(job.replace(partitioned_tables(), "ARRAY['public.events']::text[]"))
    made = partitions(db, "events")
    assert {f"events_p{month_suffix(db, offset)}" for offset in (4, 5)} <= set(made)
    assert {name: state for name, state in made.items() if state != (True, True, OWNER)} == {}
    assert {name: grantees for name, grantees in acl_of_partitions(db, "events").items() if grantees} == {}

    # a partition made by hand is drift, secured by the guard's update
    with psycopg.connect(**{**db.connection.conninfo(), "user": "maint", "password": MAINT_PASSWORD}) as maint:
        maint.execute(
            "CREATE TABLE public.events_manual PARTITION OF public.events "
            "FOR VALUES FROM ('1990-01-01') TO ('1990-02-01')"
        )
    guard, spec = db.kind(PartitionGuardKind), PartitionGuardSpec(tables=["public.events"])
    assert changes(guard, spec, guard.observe("guard", spec)) == ["unsecuredPartitions"]
    assert acl_of_partitions(db, "events")["events_manual"] == ["authenticated"]
    guard.update("guard", {}, spec)
    assert partitions(db, "events")["events_manual"] == (True, True, OWNER)
    assert acl_of_partitions(db, "events")["events_manual"] == []
    assert guard.observe("guard", spec) == Observed(
        spec.model_dump(by_alias=True), PartitionGuardStatus(unsecured_partitions=0)
    )
    db.execute("DROP TABLE public.events_manual")
    db.execute("ALTER DEFAULT PRIVILEGES FOR ROLE maint IN SCHEMA public REVOKE ALL ON TABLES FROM authenticated")

    # through the parent a company sees its rows; a partition read directly shows nothing
    db.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO authenticated")
    current = f"events_p{month_suffix(db, 0)}"
    with db.connect() as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"company_id": COMPANY_A}),))
        assert conn.execute("SELECT count(*) FROM public.events").fetchone() == (2,)
        assert conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", current))
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM public.events_default").fetchone() == (0,)
    assert db.scalar(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", current))) == 1

    # RLS turned off on a partition by hand is drift, repaired by the guard's update (as are the grants above)
    db.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(sql.Identifier("public", current)))
    assert changes(guard, spec, guard.observe("guard", spec)) == ["unsecuredPartitions"]
    guard.update("guard", {}, spec)
    assert partitions(db, "events")[current] == (True, True, OWNER)
    assert changes(guard, spec, guard.observe("guard", spec)) == []


def test_default_rows_are_counted_moved_and_expired_by_retention(events: Database) -> None:
    db = events
    insert_event(db, "far future", "2099-06-01")
    monitored = "SELECT count(*) FROM ONLY public.events_default"  # what a monitoring view counts
    assert db.scalar(monitored) == 2
    assert db.rows("SELECT default_table, count FROM partman.check_default(true)") == [("public.events_default", 2)]
    # ignore_default_data: a far-future stray row does not make maintenance premake up to 2099
    db.execute("SELECT partman.run_maintenance(p_parent_table := 'public.events', p_jobmon := false)")
    assert not [name for name in partitions(db, "events") if name.startswith("events_p2099")]
    assert where_is(db, "events", "far future") == "events_default"

    # a wrong future row is fixed at its source; past rows are moved into their (new) partitions
    db.execute("DELETE FROM public.events WHERE note = 'far future'")
    insert_event(db, "expired", str(db.scalar("SELECT now() - interval '30 months'")))
    assert db.scalar(monitored) == 2
    db.execute("CALL partman.partition_data_proc('public.events', p_wait := 0, p_quiet := true)")
    assert db.scalar(monitored) == 0
    assert where_is(db, "events", "far past") == "events_p2001_03"
    expired = f"events_p{month_suffix(db, -30)}"
    assert where_is(db, "events", "expired") == expired
    # made by partition_data_proc, outside the job: drift until the guard's next up (or the next job) secures it
    guard, spec = db.kind(PartitionGuardKind), PartitionGuardSpec(tables=["public.events"])
    assert changes(guard, spec, guard.observe("guard", spec)) == ["unsecuredPartitions"]
    guard.update("guard", {}, spec)
    assert partitions(db, "events")["events_p2001_03"] == (True, True, OWNER)

    # retention (24 months, tables dropped) removes whole expired partitions at maintenance
    db.execute("SELECT partman.run_maintenance(p_parent_table := 'public.events', p_jobmon := false)")
    assert expired not in partitions(db, "events")
    assert "events_p2001_03" not in partitions(db, "events")
    assert db.scalar("SELECT count(*) FROM public.events") == 1


def test_delete_forgets_the_set_and_keeps_every_partition(events: Database) -> None:
    db = events
    before = set(partitions(db, "events"))
    rows = db.scalar("SELECT count(*) FROM public.events")
    kind = db.kind(PartitionSetKind)
    kind.delete("public.events", EVENTS_SET)
    assert db.scalar("SELECT count(*) FROM partman.part_config WHERE parent_table = 'public.events'") == 0
    assert db.scalar("SELECT to_regclass('partman.template_public_events') IS NULL")
    assert set(partitions(db, "events")) == before
    assert db.scalar("SELECT count(*) FROM public.events") == rows
    assert kind.observe("public.events", EVENTS_SET) is None
    kind.create(EVENTS_SET)  # registered again over existing monthly partitions and partman's own default
    assert set(partitions(db, "events")) == before
    assert changes(kind, EVENTS_SET, kind.observe("public.events", EVENTS_SET)) == []


VISITS = EVENTS.model_copy(update={"name": "visits"})
VISITS_SET = EVENTS_SET.model_copy(update={"table": "visits", "retention": None})
VISIT_ROWS = 30_000


def test_registration_moves_the_default_partitions_rows_a_month_per_transaction(database: Database) -> None:
    """Rows the default partition holds for months create_parent makes go to their partitions a month per
    transaction (the registration itself moves none of them): a reader of the table sees every row all the
    while, and a writer is never refused."""
    db = database
    db.kind(PartitionGuardKind).create(PartitionGuardSpec())
    db.kind(TableKind).create(VISITS)
    db.execute(
        "INSERT INTO public.visits (company_id, note, occurred_at) SELECT %s, 'seed', "
        "date_trunc('month', now()) + (g %% 3 - 1) * interval '1 month' + (g %% 600) * interval '1 hour' "
        "FROM generate_series(1, %s) g",
        (COMPANY_A, VISIT_ROWS),
    )
    insert_event_into(db, "visits", "far past", "2001-03-05")
    with db.connect() as conn:
        moves = month_moves(conn, VISITS_SET)
    assert len(moves) == 3  # last month, this one, the next
    for month in moves:
        held = {(lock.table, lock.lock) for operation in month for lock in operation.locks}
        assert held == {("visits", Lock.ACCESS_EXCLUSIVE), ("visits_default", Lock.ACCESS_EXCLUSIVE)}

    seen: set[int] = set()
    errors: list[str] = []
    halt = threading.Event()

    def read_and_write() -> None:
        with db.connect() as conn:
            while not halt.is_set():
                row = conn.execute("SELECT count(*) FROM public.visits WHERE note = 'seed'").fetchone()
                seen.add(int(row[0]) if row else -1)
                try:
                    conn.execute("INSERT INTO public.visits (company_id, note) VALUES (%s, 'live')", (COMPANY_A,))
                except psycopg.Error as error:
                    errors.append(str(error))
                halt.wait(0.005)

    worker = threading.Thread(target=read_and_write, daemon=True)
    worker.start()
    try:
        db.kind(PartitionSetKind).create(VISITS_SET)
    finally:
        halt.set()
        worker.join(timeout=30)
    assert seen == {VISIT_ROWS} and errors == [], (seen, errors[:3])
    in_default = db.rows("SELECT note, count(*) FROM ONLY public.visits_default GROUP BY 1")
    assert in_default == [("far past", 1)]
    by_month = db.rows(
        "SELECT tableoid::regclass::text, count(*) FROM public.visits WHERE note = 'seed' GROUP BY 1 ORDER BY 1"
    )
    assert [name for name, _ in by_month] == [f"visits_p{month_suffix(db, offset)}" for offset in (-1, 0, 1)]
    assert sum(count for _, count in by_month) == VISIT_ROWS
    assert {name: state for name, state in partitions(db, "visits").items() if state != (True, True, OWNER)} == {}


def insert_event_into(db: Database, table: str, note: str, at: str) -> None:
    db.execute(
        sql.SQL("INSERT INTO {} (company_id, note, occurred_at) VALUES (%s, %s, %s)").format(
            sql.Identifier("public", table)
        ),
        (COMPANY_A, note, at),
    )


# --- online conversion of a populated plain table ----------------------------------------------------

ROWS = 20_000


def communications_spec() -> TableSpec:
    """The real communications table (foreign keys left out: their tables are not here)."""
    return load_schema().table("communications").table_spec(OWNER).model_copy(update={"foreign_keys": []})


def make_plain_table(db: Database, spec: TableSpec) -> None:
    """communications as an existing database has it: not partitioned, keyed by id alone, with an index,
    a policy, a trigger, a grant and a view on it, and rows over three years plus strays far out."""
    plain = spec.model_copy(update={"partition": None, "primary_key": ["id"]})
    relation = sql.Identifier("public", spec.name)
    with db.connect() as conn:
        conn.execute(create_statement(plain, relation))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY").format(relation))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(relation, sql.Identifier(OWNER)))
        conn.execute(
            "CREATE INDEX communications_company_created_idx ON public.communications (company_id, created_at)"
        )
        conn.execute(
            "CREATE POLICY communications_tenant_select ON public.communications FOR SELECT TO authenticated "
            "USING (company_id = (SELECT app.current_company_id()))"
        )
        conn.execute(
            "CREATE TRIGGER communications_set_updated_at BEFORE UPDATE ON public.communications "
            "FOR EACH ROW EXECUTE FUNCTION app.set_updated_at()"
        )
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON public.communications TO authenticated")
        conn.execute(
            "CREATE VIEW public.communications_emails AS SELECT id, subject FROM public.communications "
            "WHERE type = 'email'"
        )
        conn.execute(
            "INSERT INTO public.communications (company_id, type, direction, subject, body, created_at, metadata) "
            "SELECT %s, (ARRAY['email','sms','note'])[1 + n %% 3], 'outbound', 'subject ' || n, md5(n::text), "
            "CASE WHEN n %% 400 = 0 THEN timestamptz '2001-03-05' + n * interval '1 second' "
            "     WHEN n %% 400 = 1 THEN timestamptz '2099-06-01' + n * interval '1 second' "
            "     ELSE now() - (n %% 1100) * interval '1 day' - n * interval '1 second' END, "
            "jsonb_build_object('n', n) FROM generate_series(1, %s) n",
            (COMPANY_A, ROWS),
        )


def digest(db: Database, relation: str, where: str = "true") -> tuple[int, str]:
    """Count and md5 of string_agg of the rows' text in primary-key order (the columns the spec declares)."""
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in communications_spec().columns)
    row = db.rows(
        sql.SQL("SELECT count(*), md5(string_agg(ROW({})::text, '|' ORDER BY id, created_at)) FROM {} WHERE {}").format(
            columns, sql.Identifier("public", relation), sql.SQL(where)
        )
    )[0]
    return int(row[0]), str(row[1])


@dataclass
class Writer:
    """Inserts rows through the table's name, autocommit, prepared after five runs, until stopped."""

    db: Database
    written: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        moments = ["now", "2001-03-05", "2099-06-01", str(datetime.now(UTC).replace(year=datetime.now(UTC).year - 1))]
        with self.db.connect() as conn:
            while not self.stop.is_set():
                row_id = str(uuid.uuid4())
                try:
                    conn.execute(
                        "INSERT INTO public.communications (id, company_id, type, direction, subject, created_at) "
                        "VALUES (%s, %s, 'note', 'internal', 'writer', %s)",
                        (row_id, COMPANY_A, moments[len(self.written) % len(moments)]),
                    )
                    self.written.append(row_id)
                except psycopg.Error as error:
                    self.errors.append(str(error))
                time.sleep(0.002)


def test_conversion_refuses_what_would_keep_pointing_at_the_old_table(database: Database) -> None:
    spec = TableSpec(
        schema_name="public",
        name="notes_plain",
        columns=[
            ColumnSpec(name="id", type="uuid", nullable=False),
            ColumnSpec(name="at", type="timestamptz", nullable=False),
        ],
        primary_key=["id", "at"],
        partition=PartitionSpec(column="at"),
    )
    database.execute("CREATE TABLE public.notes_plain (id uuid PRIMARY KEY, at timestamptz NOT NULL, extra text)")
    with database.connect() as conn, pytest.raises(ProviderError, match="extra are not in the spec"):
        convert_to_partitioned(conn, spec, Timeouts("2s"))
    database.execute("ALTER TABLE public.notes_plain DROP COLUMN extra")
    database.execute("CREATE TABLE public.notes_child (note_id uuid REFERENCES public.notes_plain (id))")
    with database.connect() as conn, pytest.raises(ProviderError, match="foreign key notes_child_note_id_fkey"):
        convert_to_partitioned(conn, spec, Timeouts("2s"))
    assert database.scalar("SELECT relkind FROM pg_class WHERE oid = 'public.notes_plain'::regclass") == "r"
    database.execute("DROP TABLE public.notes_child, public.notes_plain")


def test_online_conversion_under_a_writer_loses_and_duplicates_nothing(database: Database) -> None:
    db = database
    spec = communications_spec()
    make_plain_table(db, spec)
    db.execute("CREATE TABLE public.baseline AS SELECT * FROM public.communications")
    # rows of 2001-03 that an UPDATE moves 40 days on, into 2001-04, a month the copy has no partition for
    strays = [
        row[0] for row in db.rows("SELECT id FROM public.communications WHERE created_at < '2002-01-01' LIMIT 20")
    ]
    others = [
        row[0]
        for row in db.rows(
            "SELECT id FROM public.communications WHERE created_at >= '2002-01-01' ORDER BY id LIMIT 280"
        )
    ]
    ids = strays + others
    deleted, updated_early, updated_late = others[:50], strays + others[50:130], others[130:280]

    def during(phase: str) -> None:
        """Changes to old rows while the copy is made: captured, replayed, then mirrored."""
        if phase == "capturing":
            db.execute("DELETE FROM public.communications WHERE id = ANY(%s)", (deleted,))
            db.execute(  # a new month: the row moves to another partition
                "UPDATE public.communications SET subject = 'moved', created_at = created_at + interval '40 days' "
                "WHERE id = ANY(%s)",
                (updated_early,),
            )
        elif phase == "copied":
            db.execute("UPDATE public.communications SET subject = 'late' WHERE id = ANY(%s)", (updated_late,))

    writer = Writer(db)
    thread = threading.Thread(target=writer.run)
    thread.start()
    try:
        time.sleep(0.3)
        with db.connect() as conn:
            result = convert_to_partitioned(conn, spec, Timeouts("2s"), premake=3, batch_pages=100, on_phase=during)
        time.sleep(0.3)  # the writer keeps writing, now into the partitioned table
    finally:
        writer.stop.set()
        thread.join()

    assert result is not None
    assert writer.errors == []
    assert len(writer.written) > 50
    # every row the writer committed is there exactly once
    found = db.rows(
        "SELECT count(*), count(DISTINCT id) FROM public.communications WHERE id = ANY(%s::uuid[])", (writer.written,)
    )
    assert found == [(len(writer.written), len(writer.written))]
    assert db.scalar("SELECT count(*) FROM public.communications WHERE subject = 'writer'") == len(writer.written)

    # the old rows: as the kept table has them, identical in the new one, and as the changes left them
    assert db.scalar("SELECT relkind FROM pg_class WHERE oid = 'public.communications'::regclass") == "p"
    old_rows = "subject IS DISTINCT FROM 'writer'"
    assert digest(db, "communications", old_rows) == digest(db, "communications_unpartitioned", old_rows)
    assert digest(db, "communications", old_rows)[0] == ROWS - len(deleted)
    untouched = f"id NOT IN (SELECT unnest(ARRAY{[str(i) for i in ids]}::uuid[]))"
    assert digest(db, "communications", f"{old_rows} AND {untouched}") == digest(db, "baseline", untouched)
    # verified in a snapshot while the writer ran on: every old row, and the writer's rows up to then
    kept_writer_rows = db.scalar("SELECT count(*) FROM public.communications_unpartitioned WHERE subject = 'writer'")
    assert ROWS - len(deleted) < result.rows <= ROWS - len(deleted) + kept_writer_rows
    assert db.scalar("SELECT count(*) FROM public.communications WHERE id = ANY(%s)", (deleted,)) == 0
    assert db.scalar("SELECT count(*) FROM public.communications WHERE subject = 'moved'") == len(updated_early)
    assert db.scalar(
        "SELECT bool_and(n.created_at = b.created_at + interval '40 days') FROM public.communications n "
        "JOIN public.baseline b USING (id) WHERE n.subject = 'moved'"
    )
    assert db.scalar("SELECT count(*) FROM public.communications WHERE subject = 'late'") == len(updated_late)

    # rows outside the premade window are in their month's partition; far-future ones wait in default
    assert db.scalar(
        "SELECT bool_and(tableoid = 'public.communications_p2001_03'::regclass) FROM public.communications "
        "WHERE created_at < '2001-04-01'"
    )
    assert db.rows(
        "SELECT tableoid::regclass::text, count(*) FROM public.communications "
        "WHERE created_at >= '2001-04-01' AND created_at < '2002-01-01' GROUP BY 1"
    ) == [("communications_p2001_04", len(strays))]
    in_default = db.scalar("SELECT count(*) FROM ONLY public.communications_default")
    assert in_default == db.scalar("SELECT count(*) FROM public.communications WHERE created_at >= '2099-01-01'")
    assert in_default >= ROWS // 400
    assert not [name for name in result.partitions if name.startswith("communications_p2099")]
    assert "communications_p2001_04" in result.partitions
    made = partitions(db, "communications")
    assert {name: state for name, state in made.items() if state != (True, True, OWNER)} == {}
    # the partitions that held the strays have the table's trigger once, enabled, as every other one
    assert db.rows(
        "SELECT DISTINCT array_agg(t.tgname::text || ':' || t.tgenabled::text ORDER BY t.tgname) FROM pg_inherits i "
        "JOIN pg_trigger t ON t.tgrelid = i.inhrelid AND NOT t.tgisinternal "
        "WHERE i.inhparent = 'public.communications'::regclass GROUP BY i.inhrelid"
    ) == [(["communications_set_updated_at:O"],)]

    # the new table carries the old one's names: primary key, index, policy, trigger, grant, view
    assert db.scalar("SELECT to_regclass('public.communications_pkey')::text") == "communications_pkey"
    assert (
        db.scalar(
            "SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = 'public.communications_pkey'::regclass"
        )
        == "communications"
    )
    assert (
        db.scalar(
            "SELECT indrelid::regclass::text FROM pg_index "
            "WHERE indexrelid = 'public.communications_company_created_idx'::regclass"
        )
        == "communications"
    )
    assert db.rows(
        "SELECT policyname FROM pg_policies WHERE schemaname = 'public' AND tablename = 'communications'"
    ) == [("communications_tenant_select",)]
    assert (
        db.scalar(
            "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'communications_set_updated_at' "
            "AND tgrelid = 'public.communications'::regclass"
        )
        == "communications"
    )
    assert db.scalar("SELECT has_table_privilege('authenticated', 'public.communications', 'UPDATE')")
    assert result.views_repointed == ["public.communications_emails"]
    assert db.scalar("SELECT count(*) FROM public.communications_emails") == db.scalar(
        "SELECT count(*) FROM public.communications WHERE type = 'email'"
    )
    assert (
        db.scalar(
            "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
            "WHERE r.ev_class = 'public.communications_emails'::regclass "
            "AND d.refobjid = 'public.communications_unpartitioned'::regclass"
        )
        == 0
    )

    # the kept table is frozen: a late write to it (a prepared statement's) lands in the new table
    late = str(uuid.uuid4())
    db.execute(
        "INSERT INTO public.communications_unpartitioned (id, company_id, type, direction, created_at) "
        "VALUES (%s, %s, 'note', 'internal', now())",
        (late, COMPANY_A),
    )
    assert db.scalar("SELECT count(*) FROM public.communications WHERE id = %s", (late,)) == 1
    assert db.scalar("SELECT count(*) FROM public.communications_unpartitioned WHERE id = %s", (late,)) == 0

    # converting again changes nothing; then the verified old table may go
    with db.connect() as conn:
        assert convert_to_partitioned(conn, spec, Timeouts("2s")) is None
        assert drop_unpartitioned(conn, spec, Timeouts("2s"))
        assert not drop_unpartitioned(conn, spec, Timeouts("2s"))
    assert db.scalar("SELECT to_regclass('public.communications_unpartitioned')") is None
    assert db.scalar("SELECT count(*) FROM public.communications WHERE id = %s", (late,)) == 1
