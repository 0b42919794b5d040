"""Scheduled jobs, retention procedures and monitoring views against a real PostgreSQL with pg_cron
preloaded: the CronJob kind creates, observes, drifts, repairs and deletes; every job of sql/jobs.yaml and
every procedure of sql/maintenance.yaml runs for real (retention deletes only what it should, in
batches that each commit); every view of sql/monitoring.yaml returns what the server really shows; and
one job runs from pg_cron itself, read back from cron.job_run_details."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.database.declared.access import load_access
from components.database.declared.jobs import JobData, load_jobs
from components.database.declared.model import TABLE_SCHEMA, load_schema
from components.database.declared.operations import cron_job_spec, load_maintenance, load_monitoring
from components.database.kinds.cron_job import CronJobKind, CronJobSpec, CronJobStatus
from components.database.kinds.function import FunctionKind, FunctionStatus
from components.database.kinds.table import TableKind
from components.database.kinds.view import ViewKind, ViewStatus
from components.kind import Observed
from tests.integration.conftest import (
    DATABASE,
    SUPERUSER_PASSWORD,
    Primary,
    eventually,
    running_replica,
)
from tests.integration.databases import Database, changes, declared, local_connection, recorded

OWNER = "thorbis_owner"
#: The tables the procedures and jobs touch, made from the schema data (their foreign keys left out:
#: the rows here need no parents).
TABLES = ["webhook_logs", "notification_queue", "background_jobs", "api_rate_limits"]
SETUP_SQL = """
CREATE ROLE thorbis_owner NOLOGIN;
CREATE ROLE reporting LOGIN;
CREATE SCHEMA app AUTHORIZATION thorbis_owner;
CREATE SCHEMA extensions AUTHORIZATION thorbis_owner;
CREATE SCHEMA partman;
CREATE SCHEMA reporting AUTHORIZATION thorbis_owner;
CREATE SCHEMA monitoring AUTHORIZATION thorbis_owner;
CREATE EXTENSION pg_cron;
CREATE EXTENSION pg_stat_statements SCHEMA extensions;
CREATE EXTENSION pg_partman SCHEMA partman;
"""
#: Test instrumentation: every deleted row records the transaction that deleted it.
DELETE_LOG_SQL = """
CREATE TABLE it_deletions (table_name text, txid bigint);
CREATE FUNCTION it_log_deletion() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO public.it_deletions VALUES (TG_TABLE_NAME, pg_catalog.txid_current()); RETURN OLD; END $$;
"""
OLD = datetime.now(UTC) - timedelta(days=400)
RECENT = datetime.now(UTC) - timedelta(days=1)


@pytest.fixture(scope="module")
def database(primary: Primary) -> Database:
    db = Database(local_connection(primary.port, DATABASE, SUPERUSER_PASSWORD))
    db.execute(SETUP_SQL)
    db.execute(DELETE_LOG_SQL)
    schema = load_schema()
    tables = db.kind(TableKind)
    for name in TABLES:
        spec = schema.table(name).table_spec(OWNER).model_copy(update={"foreign_keys": []})
        tables.create(spec)
        db.execute(
            sql.SQL("CREATE TRIGGER it_log AFTER DELETE ON {} FOR EACH ROW EXECUTE FUNCTION it_log_deletion()").format(
                sql.Identifier(TABLE_SCHEMA, name)
            )
        )
    procedures = db.kind(FunctionKind)
    securing = next(function for function in load_access().functions if function.name == "secure_partitions")
    procedures.create(securing.function_spec(OWNER))  # what the partition maintenance job calls
    for procedure in load_maintenance().procedure_specs(OWNER):
        procedures.create(procedure)
    return db


def job(name: str, **overrides: Any) -> JobData:
    """One job of sql/jobs.yaml, with its parameters resolved (overrides as the stack's config gives them)."""
    return next(job for job in load_jobs().resolved({}, overrides) if job.name == name)


def job_id_of(status: CronJobStatus) -> int:
    assert status.job_id is not None, "pg_cron gave the job no id"
    return status.job_id


def run(database: Database, command: str) -> None:
    """A job's command as pg_cron runs it: one statement, outside a transaction block."""
    database.execute(command)


# --- CronJob ------------------------------------------------------------------------------------------


def test_cron_job_creates_observes_drifts_repairs_and_deletes(database: Database) -> None:
    kind = database.kind(CronJobKind)
    spec = CronJobSpec(name="it-nightly", schedule="0 4 * * *", command="SELECT 1", database=DATABASE)
    resource_id, outputs = kind.create(spec)
    assert resource_id == "it-nightly"
    job_id = outputs.job_id
    assert outputs == CronJobStatus(job_id=job_id, adopted=False) and job_id is not None
    assert kind.observe(resource_id, spec) == Observed(declared(spec), CronJobStatus(job_id=job_id))
    assert database.scalar("SELECT schedule FROM cron.job WHERE jobid = %s", (job_id,)) == "0 4 * * *"

    database.execute("SELECT cron.alter_job(%s, schedule => '*/5 * * * *', command => 'SELECT 2', active => false)",
                     (job_id,))  # fmt: skip
    drifted = kind.observe(resource_id, spec)
    assert drifted is not None
    assert (drifted.inputs["schedule"], drifted.inputs["command"], drifted.inputs["active"]) == (
        "*/5 * * * *",
        "SELECT 2",
        False,
    )
    assert changes(kind, spec, drifted) == ["schedule", "command", "active"]
    assert kind.update(resource_id, recorded(spec, drifted), spec) == CronJobStatus(job_id=job_id)  # same job
    assert kind.observe(resource_id, spec) == Observed(declared(spec), CronJobStatus(job_id=job_id))

    database.execute("SELECT cron.unschedule(%s)", (job_id,))
    assert kind.observe(resource_id, spec) is None  # refresh: gone, so the next `up` creates it again
    _, outputs = kind.create(spec)
    assert outputs.adopted is False
    again = CronJobStatus(job_id=outputs.job_id)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), again)

    paused = spec.model_copy(update={"schedule": "30 4 * * 1", "command": "SELECT 3", "active": False})
    kind.update(resource_id, declared(spec), paused)
    assert kind.observe(resource_id, paused) == Observed(declared(paused), again)
    adopted = CronJobStatus(job_id=outputs.job_id, adopted=True)
    assert kind.create(paused)[1] == adopted  # an existing job is adopted

    kind.delete(resource_id, paused)
    assert kind.observe(resource_id, paused) is None
    assert database.scalar("SELECT count(*) FROM cron.job WHERE jobname = 'it-nightly'") == 0
    kind.delete(resource_id, paused)  # already gone: nothing to do


def test_every_job_of_the_data_is_accepted_by_pg_cron(database: Database) -> None:
    kind = database.kind(CronJobKind)
    specs = [cron_job_spec(job, DATABASE) for job in load_jobs().resolved({}, {})]
    try:
        for spec in specs:
            resource_id, _ = kind.create(spec)
            observed = kind.observe(resource_id, spec)
            assert observed is not None
            assert changes(kind, spec, observed) == []
    finally:
        for spec in specs:
            kind.delete(spec.name, spec)
    assert database.scalar("SELECT count(*) FROM cron.job") == 0


def test_job_schedules_and_parameters_come_from_config() -> None:
    """(Names the file does not have are refused by config: tests/unit/test_config.py, job-* cases.)"""
    resolved = load_jobs().resolved({"purge-webhook-logs": "0 1 * * *"}, {"webhookLogRetentionDays": 7})
    jobs = {job.name: job for job in resolved}
    assert jobs["purge-webhook-logs"].schedule == "0 1 * * *"
    assert re.fullmatch(r"CALL app\.purge_webhook_logs\(7, \d+\)", jobs["purge-webhook-logs"].command)
    assert all("{" not in job.command for job in jobs.values())


# --- retention procedures -----------------------------------------------------------------------------


def insert(conn: psycopg.Connection[Any], table: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                sql.Identifier(TABLE_SCHEMA, table),
                sql.SQL(", ").join(map(sql.Identifier, row)),
                sql.SQL(", ").join(sql.Placeholder() * len(row)),
            ),
            tuple(row.values()),
        )


def remaining(database: Database, table: str, column: str) -> list[str]:
    query = sql.SQL("SELECT {} FROM {} ORDER BY 1").format(sql.Identifier(column), sql.Identifier(TABLE_SCHEMA, table))
    return [row[column] for row in database.dicts(query)]


def batches(database: Database, table: str) -> list[int]:
    """Rows deleted per transaction, in the order the transactions ran."""
    rows = database.dicts(
        "SELECT count(*) AS n FROM it_deletions WHERE table_name = %s GROUP BY txid ORDER BY txid", (table,)
    )
    return [row["n"] for row in rows]


def test_webhook_log_retention_deletes_old_rows_in_committed_batches(database: Database) -> None:
    company, webhook = str(uuid.uuid4()), str(uuid.uuid4())
    with database.connect() as conn:
        insert(conn, "webhook_logs", [
            {"company_id": company, "webhook_id": webhook, "event_type": f"old-{i}", "payload": "{}",
             "status": status, "created_at": OLD}
            for i, status in enumerate(["sent", "failed", "pending", "sent", "sent", "sent", "failed"])
        ] + [
            {"company_id": company, "webhook_id": webhook, "event_type": f"recent-{i}", "payload": "{}",
             "created_at": RECENT}
            for i in range(3)
        ])  # fmt: skip
    run(database, job("purge-webhook-logs", webhookLogRetentionDays=30, retentionBatchSize=3).command)
    assert remaining(database, "webhook_logs", "event_type") == ["recent-0", "recent-1", "recent-2"]
    assert batches(database, "webhook_logs") == [3, 3, 1]  # each batch its own committed transaction


def test_queue_retention_deletes_only_finished_rows_past_their_age(database: Database) -> None:
    company, user = str(uuid.uuid4()), str(uuid.uuid4())

    def notification(tag: str, status: str, updated_at: datetime, retries: int = 0) -> dict[str, Any]:
        return {"company_id": company, "user_id": user, "notification_type": tag, "channel": "email",
                "body": "hello", "status": status, "retry_count": retries, "updated_at": updated_at}  # fmt: skip

    def background_job(tag: str, status: str, updated_at: datetime, retries: int = 0) -> dict[str, Any]:
        return {"company_id": company, "job_type": tag, "status": status, "retry_count": retries,
                "updated_at": updated_at}  # fmt: skip

    with database.connect() as conn:
        insert(conn, "notification_queue", [
            notification("gone-sent", "sent", OLD), notification("gone-delivered", "delivered", OLD),
            notification("gone-cancelled", "cancelled", OLD), notification("gone-failed", "failed", OLD, 3),
            notification("kept-retrying", "failed", OLD, 1), notification("kept-pending", "pending", OLD),
            notification("kept-sending", "sending", OLD), notification("kept-recent", "sent", RECENT),
        ])  # fmt: skip
        insert(conn, "background_jobs", [
            background_job("gone-completed", "completed", OLD), background_job("gone-cancelled", "cancelled", OLD),
            background_job("gone-failed", "failed", OLD, 3), background_job("kept-retrying", "failed", OLD, 2),
            background_job("kept-pending", "pending", OLD), background_job("kept-running", "running", OLD),
            background_job("kept-recent", "completed", RECENT),
        ])  # fmt: skip
    run(database, job("purge-notification-queue", notificationRetentionDays=30, retentionBatchSize=2).command)
    run(database, job("purge-background-jobs", backgroundJobRetentionDays=30, retentionBatchSize=2).command)
    kept = ["kept-pending", "kept-recent", "kept-retrying", "kept-sending"]
    assert remaining(database, "notification_queue", "notification_type") == kept
    assert remaining(database, "background_jobs", "job_type") == ["kept-pending", "kept-recent", "kept-retrying",
                                                                   "kept-running"]  # fmt: skip
    assert batches(database, "notification_queue") == [2, 2]
    assert batches(database, "background_jobs") == [2, 1]


HOSTILE_OPERATOR_SQL = """
CREATE SCHEMA IF NOT EXISTS it_hostile;
CREATE OR REPLACE FUNCTION it_hostile.always(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS 'SELECT true';
DO $$ BEGIN
  CREATE OPERATOR it_hostile.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = it_hostile.always);
EXCEPTION WHEN duplicate_function THEN NULL; END $$;
"""


RETENTION = [spec.name for spec in load_maintenance().procedure_specs(OWNER) if spec.name.startswith("purge_")]


@pytest.mark.parametrize("procedure", RETENTION)
def test_retention_runs_with_its_own_search_path_whatever_the_callers(database: Database, procedure: str) -> None:
    """A caller whose search_path puts a schema of its own before pg_catalog offers its `<` for
    timestamps ("every row is old"): the procedure resolves none of its names or operators there, and the
    caller's search_path is as it was afterwards. Its data: one row of each table, changed long ago."""
    database.execute(HOSTILE_OPERATOR_SQL)
    company = str(uuid.uuid4())
    recent = {  # table: (the column that names the row, the row)
        "webhook_logs": ("event_type", {"company_id": company, "webhook_id": str(uuid.uuid4()),
                                        "event_type": "recent", "payload": "{}", "status": "sent",
                                        "created_at": RECENT}),
        "notification_queue": ("notification_type", {"company_id": company, "user_id": str(uuid.uuid4()),
                                                     "notification_type": "recent", "channel": "email",
                                                     "body": "hi", "status": "sent", "updated_at": RECENT}),
        "background_jobs": ("job_type", {"company_id": company, "job_type": "recent", "status": "completed",
                                         "updated_at": RECENT}),
    }  # fmt: skip
    table = procedure.removeprefix("purge_")
    column, row = recent[table]
    with database.connect() as conn:
        insert(conn, table, [row])
        conn.execute("SET search_path = it_hostile, pg_catalog, public")
        conn.execute(sql.SQL("CALL {}(30, 100)").format(sql.Identifier("app", procedure)))
        assert conn.execute("SHOW search_path").fetchone() == ("it_hostile, pg_catalog, public",)
    assert "recent" in remaining(database, table, column)


def test_retention_refuses_a_non_positive_age(database: Database) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="must be positive"):
        database.execute("CALL app.purge_background_jobs(0, 100)")


def test_procedures_from_the_data_observe_as_declared(database: Database) -> None:
    kind = database.kind(FunctionKind)
    for spec in load_maintenance().procedure_specs(OWNER):
        assert spec.kind == "procedure"
        assert kind.observe("", spec) == Observed(declared(spec), FunctionStatus())


# --- the other jobs, run directly ---------------------------------------------------------------------


def newest_partition(database: Database, parent: str) -> str:
    row = database.dicts("SELECT * FROM partman.show_partitions(%s, 'DESC') LIMIT 1", (parent,))[0]
    return f"{row['partition_schemaname']}.{row['partition_tablename']}"


def test_partition_maintenance_job_premakes_what_monitoring_shows_missing(database: Database) -> None:
    database.execute("CREATE TABLE public.it_events (id bigint GENERATED ALWAYS AS IDENTITY, "
                     "created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at)")  # fmt: skip
    database.execute(
        "SELECT partman.create_parent('public.it_events', 'created_at', 'native', 'monthly', p_premake => 3)"
    )
    views = declare_views(database, ["partitions_missing_ahead", "default_partition_rows"])
    assert missing_ahead(database) == {}

    database.execute(
        sql.SQL("DROP TABLE {}").format(sql.Identifier(*newest_partition(database, "public.it_events").split(".")))
    )
    database.execute("INSERT INTO public.it_events (created_at) VALUES ('2000-01-01'), (now())")  # a stray, a current
    assert missing_ahead(database) == {"public.it_events": 1}
    database.execute("SELECT pg_stat_force_next_flush()")  # the view counts by the statistics: sent at once
    assert database.dicts("SELECT * FROM monitoring.default_partition_rows") == [
        {"default_table": "public.it_events_default", "row_count": 1}
    ]

    run(database, job("partman-maintenance").command)
    assert missing_ahead(database) == {}
    assert views  # declared through the View kind


def missing_ahead(database: Database) -> dict[str, int]:
    return {
        row["parent_table"]: row["missing"]
        for row in database.dicts("SELECT * FROM monitoring.partitions_missing_ahead")
    }


def test_refresh_jobs_refresh_the_reporting_views_concurrently(database: Database) -> None:
    refreshes = [job for job in load_jobs().jobs if job.name.startswith("refresh-")]
    assert len(refreshes) == 3
    for refresh in refreshes:  # stand-ins for the views sql/reporting.yaml declares, with their unique index
        match = re.fullmatch(r"REFRESH MATERIALIZED VIEW CONCURRENTLY (\w+)\.(\w+)", refresh.command)
        assert match, refresh.command
        view = sql.Identifier(*match.groups())
        database.execute(
            sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT count(*) AS n, 1 AS id FROM public.background_jobs").format(
                view
            )
        )
        database.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (id)").format(view))
        database.execute(
            "INSERT INTO public.background_jobs (company_id, job_type) VALUES (gen_random_uuid(), 'refresh')"
        )
        run(database, refresh.command)
        assert database.scalar(sql.SQL("SELECT n FROM {}").format(view).as_string()) == database.scalar(
            "SELECT count(*) FROM public.background_jobs"
        )


def test_vacuum_and_cron_history_jobs_run(database: Database) -> None:
    database.execute("SELECT pg_stat_reset()")
    run(database, job("vacuum-analyze-busy-tables").command)

    def vacuumed() -> set[str]:
        query = "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
        return {row["relname"] for row in database.dicts(query)}

    eventually(lambda: set(TABLES) <= vacuumed(), 15, "VACUUM ANALYZE of every busy table")

    database.execute("INSERT INTO cron.job_run_details (jobid, runid, command, status, start_time, end_time) "
                     "VALUES (0, -1, 'SELECT 1', 'succeeded', now() - interval '1 year', now() - interval '1 year'),"
                     " (0, -2, 'SELECT 1', 'succeeded', now(), now())")  # fmt: skip
    run(database, job("purge-cron-history").command)
    assert database.scalar("SELECT array_agg(runid) FROM cron.job_run_details WHERE runid < 0") == [-2]
    database.execute("DELETE FROM cron.job_run_details WHERE runid < 0")


# --- monitoring views ---------------------------------------------------------------------------------


def declare_views(database: Database, names: list[str]) -> list[str]:
    """The named views of sql/monitoring.yaml, made by the View kind and observed exactly as declared."""
    kind = database.kind(ViewKind)
    made = []
    for spec in load_monitoring().view_specs(OWNER):
        if spec.name in names:
            resource_id, _ = kind.create(spec)
            assert kind.observe(resource_id, spec) == Observed(declared(spec), ViewStatus())
            made.append(spec.name)
    assert sorted(made) == sorted(names)
    return made


def view_rows(database: Database, view: str) -> list[dict[str, Any]]:
    return database.dicts(sql.SQL("SELECT * FROM {}").format(sql.Identifier("monitoring", view)))


def test_every_monitoring_view_is_valid_on_this_server(database: Database) -> None:
    """Made as declared (declare_views), and each one answers on this server's catalogs and extensions:
    a view can be created and still fail when read (a function of another version, a missing privilege)."""
    names = [view.name for view in load_monitoring().views]
    declare_views(database, names)
    failures: dict[str, str] = {}
    for name in names:
        try:
            view_rows(database, name)
        except psycopg.Error as error:
            failures[name] = str(error).strip()
    assert failures == {}


def test_cache_hit_ratio_is_a_ratio(database: Database) -> None:
    declare_views(database, ["cache_hit_ratio"])
    database.execute("SELECT count(*) FROM public.webhook_logs")

    def ratio() -> Any:
        return view_rows(database, "cache_hit_ratio")[0]["hit_ratio"]

    eventually(lambda: ratio() is not None, 15, "a block read counted")
    [row] = view_rows(database, "cache_hit_ratio")
    assert row["database_name"] == DATABASE
    assert 0 < row["hit_ratio"] <= 1
    assert row["blks_hit"] > 0


def test_index_usage_and_unused_indexes(database: Database) -> None:
    declare_views(database, ["index_usage", "unused_indexes"])
    database.execute("CREATE TABLE public.it_indexed (id int PRIMARY KEY, tag text)")
    database.execute("CREATE INDEX it_indexed_tag_idx ON public.it_indexed (tag)")
    database.execute("INSERT INTO public.it_indexed SELECT g, 't' || g FROM generate_series(1, 1000) g")
    with database.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT * FROM public.it_indexed WHERE id = 7").fetchall()

    def scans(index: str) -> Any:
        rows = [row for row in view_rows(database, "index_usage") if row["index_name"] == index]
        return rows[0]["idx_scan"] if rows else None

    eventually(lambda: scans("it_indexed_pkey") == 1, 15, "the primary key scan counted")
    assert scans("it_indexed_tag_idx") == 0
    unused = {row["index_name"] for row in view_rows(database, "unused_indexes")}
    assert "it_indexed_tag_idx" in unused
    assert not unused & {"it_indexed_pkey", "webhook_logs_pkey", "webhook_logs_webhook_event_key"}


def test_table_bloat_estimate_tells_a_bloated_table_from_a_packed_one(database: Database) -> None:
    declare_views(database, ["table_bloat"])
    for table in ("it_packed", "it_bloated"):
        database.execute(sql.SQL("CREATE TABLE {} (id int, filler text) WITH (autovacuum_enabled = off)").format(
            sql.Identifier("public", table)))  # fmt: skip
        database.execute(sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, 20000) g").format(
            sql.Identifier("public", table)))  # fmt: skip
    database.execute("DELETE FROM public.it_bloated WHERE id % 10 <> 0")  # 90% gone, pages kept
    database.execute("ANALYZE public.it_packed, public.it_bloated")
    bloat = {row["table_name"]: row for row in view_rows(database, "table_bloat")}
    assert bloat["it_packed"]["bloat_ratio"] < 0.25
    assert bloat["it_bloated"]["bloat_ratio"] > 0.7
    assert bloat["it_bloated"]["table_bytes"] == bloat["it_packed"]["table_bytes"]


def test_slow_statements_shows_a_slow_query(database: Database) -> None:
    declare_views(database, ["slow_statements"])
    database.execute("SELECT pg_sleep(0.3)")
    slow = [row for row in view_rows(database, "slow_statements") if "pg_sleep" in row["query"]]
    assert slow, "pg_sleep is not among the slow statements"
    assert slow[0]["mean_ms"] >= 300
    assert slow[0]["calls"] >= 1
    assert slow[0]["role_name"] == "postgres"


def test_invalid_indexes_shows_a_failed_concurrent_build(database: Database) -> None:
    declare_views(database, ["invalid_indexes"])
    database.execute("CREATE TABLE public.it_dupes (v int)")
    database.execute("INSERT INTO public.it_dupes VALUES (1), (1)")
    assert view_rows(database, "invalid_indexes") == []
    with pytest.raises(psycopg.errors.UniqueViolation):
        database.execute("CREATE UNIQUE INDEX CONCURRENTLY it_dupes_v_key ON public.it_dupes (v)")
    [row] = view_rows(database, "invalid_indexes")
    assert (row["table_name"], row["index_name"]) == ("it_dupes", "it_dupes_v_key")
    database.execute("DROP INDEX public.it_dupes_v_key")
    assert view_rows(database, "invalid_indexes") == []


def test_replication_lag_and_slots_show_a_streaming_replica(database: Database, primary: Primary) -> None:
    declare_views(database, ["replication_lag", "replication_slots"])
    assert view_rows(database, "replication_lag") == []
    with running_replica(primary) as replica:
        eventually(lambda: len(view_rows(database, "replication_lag")) == 1, 30, "the replica streaming")
        database.execute("CREATE TABLE public.it_replicated AS SELECT generate_series(1, 1000) AS n")

        def caught_up() -> bool:
            [row] = view_rows(database, "replication_lag")
            return bool(row["state"] == "streaming" and row["replay_lag_bytes"] == 0)

        eventually(caught_up, 30, "the replica replaying everything")
        [row] = view_rows(database, "replication_lag")
        assert row["send_lag_bytes"] == 0
        assert row["replay_lag_seconds"] is None or 0 <= row["replay_lag_seconds"] < 30
        slots = {slot["slot_name"]: slot for slot in view_rows(database, "replication_slots")}
        assert slots[replica.spec.slot_name]["active"] is True
        assert slots[replica.spec.slot_name]["retained_bytes"] >= 0


# --- pg_cron runs a job -------------------------------------------------------------------------------


def last_run(database: Database, job_id: int) -> dict[str, Any] | None:
    rows = database.dicts(
        "SELECT status, return_message FROM cron.job_run_details "
        "WHERE jobid = %s AND status IN ('succeeded', 'failed') ORDER BY runid DESC LIMIT 1",
        (job_id,),
    )
    return rows[0] if rows else None


def test_pg_cron_runs_a_job_every_minute_and_monitoring_shows_a_failed_one(database: Database) -> None:
    declare_views(database, ["failed_cron_runs"])
    kind = database.kind(CronJobKind)
    company = str(uuid.uuid4())
    with database.connect() as conn:
        insert(conn, "webhook_logs", [{"company_id": company, "webhook_id": str(uuid.uuid4()),
                                       "event_type": "cron-old", "payload": "{}", "created_at": OLD}])  # fmt: skip
    retention = cron_job_spec(job("purge-webhook-logs"), DATABASE).model_copy(
        update={"name": "it-every-minute", "schedule": "* * * * *"}
    )
    failing = CronJobSpec(name="it-failing", schedule="* * * * *", command="SELECT 1/0", database=DATABASE)
    try:
        ids = {spec.name: job_id_of(kind.create(spec)[1]) for spec in (retention, failing)}
        eventually(lambda: all(last_run(database, job_id) for job_id in ids.values()), 75, "a run of both jobs")
        assert last_run(database, ids["it-every-minute"]) == {"status": "succeeded", "return_message": "CALL"}
        assert remaining(database, "webhook_logs", "event_type").count("cron-old") == 0
        failure = last_run(database, ids["it-failing"])
        assert failure is not None
        assert failure["status"] == "failed"
        assert "division by zero" in failure["return_message"]
        failed = {row["job_name"] for row in view_rows(database, "failed_cron_runs")}
        assert failed == {"it-failing"}
    finally:
        for spec in (retention, failing):
            kind.delete(spec.name, spec)
