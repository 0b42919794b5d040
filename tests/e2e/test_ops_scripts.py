"""scripts/verify, scripts/pr-preview and scripts/drift on a real stack, run as a reviewer or operator would.

One throwaway stack with one replica (its own, not the shared database stack: a replica is stopped here).
The tests run in file order, each on the state the one before left: a fresh stack verifies; an unchanged
one previews with no change; changes made by hand behind its back are drift and fail verification; a
program that drops a column previews as destructive; a plain `preview` (which reads the live servers first)
fails on the drift and a plain `up` repairs it all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
import pytest
import redis
from psycopg import sql

from components.connection import LOOPBACK
from components.database.base import qualified
from components.database.declared.access import load_access
from components.database.declared.jobs import load_jobs
from components.database.declared.model import TableData, load_schema
from components.database.declared.reporting import load_reporting
from components.database.kinds import function, view
from components.database.table_shape import ColumnSpec
from components.platform.local import process
from components.platform.local.pgbouncer import AUTH_ROLE, CONSOLE_DATABASE
from components.platform.local.redis import memory_bytes
from config.settings import RedisSettings
from ops import EXIT_DESTRUCTIVE, EXIT_DRIFT, EXIT_FAILED, EXIT_OK
from ops.events import EventLog
from testbed.stacks import LiveStack, throwaway_stack
from testbed.support import copy_project, listening
from tests.conftest import ROOT
from tests.e2e.test_adopt_existing_database import edited_table, without_column

pytestmark = pytest.mark.e2e
SCHEMA, ACCESS, REPORTING = load_schema(), load_access(), load_reporting()
JOBS_INDEX = next(index for index in SCHEMA.table("jobs").foreign_key_indexes())
JOBS_FK = next(fk.name for fk in SCHEMA.table("jobs").foreign_key_constraints if fk.columns == JOBS_INDEX.keys)
#: The plain tables no other hand-made change touches, in the declared order: each change below takes its own.
SPARE_TABLES = iter(
    [
        data
        for data in SCHEMA.tables
        if not data.partition and data.name not in {"jobs", "customers", "invoices", "estimates"}
    ]
)
CHECKED = next(data for data in SPARE_TABLES if data.table_spec(ACCESS.owner).checks)
KEYED = next(data for data in SPARE_TABLES if data.foreign_key_constraints)
DEFAULTED = next(
    data for data in SPARE_TABLES if any(c.type == "uuid" and c.default for c in data.table_spec(ACCESS.owner).columns)
)
TRIGGERED = next(data for data in SPARE_TABLES if data.updated_at_trigger() is not None)
UNFORCED = next(SPARE_TABLES)
GIVEN_AWAY = next(SPARE_TABLES)
REPLACED_FUNCTION = ACCESS.functions[0].function_spec(ACCESS.owner)
LEAKY_VIEW = REPORTING.tenant_view_specs()[0]
DROPPED_MATVIEW = REPORTING.materialized_view_specs()[-1]
RESCHEDULED_JOB, UNSCHEDULED_JOB = load_jobs().jobs[0], load_jobs().jobs[-1]
HAND_MADE_UUID = "00000000-0000-0000-0000-000000000000"
HAND_MADE_MAXMEMORY = "1mb"


def first_check(data: TableData) -> str:
    return data.table_spec(ACCESS.owner).checks[0].name


def uuid_default(data: TableData) -> ColumnSpec:
    return next(c for c in data.table_spec(ACCESS.owner).columns if c.type == "uuid" and c.default)


#: What change_behind_the_stacks_back does, as (resource, property) the drift report names.
DRIFT = [
    (f"index-{JOBS_INDEX.name}", "(the object)"),
    ("row-security-customers", "enabled"),
    ("policy-invoices_tenant_select", "using"),
    ("row-security-estimates", "undeclaredPolicies"),
    ("exact-privileges", "undeclared"),
    ("thorbis-replica-0", "streaming"),
    ("thorbis-pgbouncer", "defaultPoolSize"),
    ("thorbis-redis", "passwordRequired"),
    ("thorbis-primary", "pgHba"),
    ("thorbis-primary", "alteredSystem"),
    ("role-anon", "memberOf"),
    ("role-authenticated", "members"),
    ("role-authenticated", "bypassRls"),
    (f"row-security-{UNFORCED.name}", "enabled"),
    (f"table-{CHECKED.name}", "checks"),
    (f"table-{KEYED.name}", "foreignKeys"),
    (f"table-{DEFAULTED.name}", "columns"),
    (f"trigger-{TRIGGERED.name}-updated-at", "(the object)"),
    (f"function-{REPLACED_FUNCTION.schema_name}-{REPLACED_FUNCTION.name}", "body"),
    (f"view-{LEAKY_VIEW.schema_name}-{LEAKY_VIEW.name}", "query"),
    (f"cron-job-{RESCHEDULED_JOB.name}", "schedule"),
    (f"cron-job-{UNSCHEDULED_JOB.name}", "(the object)"),
    (f"materialized-view-{DROPPED_MATVIEW.name}", "(the object)"),
    (f"table-{GIVEN_AWAY.name}", "owner"),
    ("thorbis-redis", "maxmemory"),
]


@dataclass
class Run:
    code: int
    output: str
    seconds: float


@pytest.fixture(scope="module")
def ops_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with throwaway_stack(tmp_path_factory.mktemp("backend"), "e2e-ops", replicas=1) as live:
        assert live.stack.up().summary.result == "succeeded"
        yield live


def script(live: LiveStack, name: str, *args: str) -> Run:
    """bash scripts/<name> STACK ..., with the tests' environment (scripts/pulumi-env.sh) and the stack's backend."""
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{live.backend}"}
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / name), live.stack.name, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    output = done.stdout + done.stderr
    for password in live.passwords.values():
        assert password not in output, f"scripts/{name} printed a password"
    return Run(done.returncode, output, time.monotonic() - started)


def admin(live: LiveStack) -> psycopg.Connection[Any]:
    conninfo: dict[str, Any] = live.admin()
    return psycopg.connect(**conninfo, autocommit=True)


def redis_client(live: LiveStack, password: str | None) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=live.redis_port, password=password, socket_timeout=5)


def primary_hba(live: LiveStack) -> Path:
    return live.state_dir / "postgres-primary" / "data" / "pg_hba.conf"


def check_row(output: str, check: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(check))


def test_verify_passes_on_a_fresh_stack(ops_stack: LiveStack) -> None:
    run = script(ops_stack, "verify")
    assert run.code == EXIT_OK, run.output
    assert check_row(run.output, "replicas streaming").split()[2] == "PASS"
    assert "replica_0: streaming" in run.output
    assert "FAIL" not in run.output


def test_connect_info_says_where_each_server_listens_from_the_stacks_connection(ops_stack: LiveStack) -> None:
    run = script(ops_stack, "connect-info")  # `script` fails the test if a password is printed
    assert run.code == EXIT_OK, run.output
    assert f"PostgreSQL primary : {LOOPBACK}:{ops_stack.postgres_port}  database thorbis, user postgres" in run.output
    assert f"PgBouncer          : {LOOPBACK}:{ops_stack.pgbouncer_port}" in run.output
    assert "database thorbis writes to the primary, thorbis_read reads from the replicas" in run.output
    assert f"Read replicas      : {LOOPBACK}:{ops_stack.replica_ports[0]}" in run.output
    assert f"Redis              : {LOOPBACK}:{ops_stack.redis_port}" in run.output


def test_connect_info_hands_out_the_admin_dsn_and_redis_password_only_when_asked(ops_stack: LiveStack) -> None:
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{ops_stack.backend}"}
    asked = {
        flag: subprocess.run(
            ["bash", str(ROOT / "scripts" / "connect-info"), ops_stack.stack.name, flag],
            capture_output=True, text=True, env=env, timeout=120, check=True,
        ).stdout.strip()
        for flag in ("--admin-dsn", "--redis-password")
    }  # fmt: skip
    with psycopg.connect(asked["--admin-dsn"]) as conn:  # a libpq connection string, as psql takes it
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("postgres", "thorbis")
    assert asked["--redis-password"] == ops_stack.passwords["redisPassword"]


def test_pr_preview_of_an_unchanged_stack_says_no_changes(ops_stack: LiveStack, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    run = script(ops_stack, "pr-preview", "--out", str(summary))
    assert run.code == EXIT_OK, run.output + summary.read_text()
    text = summary.read_text()
    assert text.splitlines()[0] == f"## thorbis-db preview of stack `{ops_stack.stack.name}`: no risk found"
    assert "**No changes**" in text and "Drift" not in text and "Destructive" not in text


def change_the_catalog_by_hand(conn: psycopg.Connection[Any]) -> None:
    """What a careless or hostile operator does with psql, one table (or role, job, view) each."""

    def table(data: TableData) -> sql.Composable:
        return qualified("public", data.name)

    conn.execute("GRANT authenticated TO anon")
    conn.execute("ALTER ROLE authenticated BYPASSRLS")
    conn.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(table(UNFORCED)))
    conn.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table(CHECKED), sql.Identifier(first_check(CHECKED)))
    )
    fk = KEYED.foreign_key_constraints[0].name
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table(KEYED), sql.Identifier(fk)))
    conn.execute(
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}::uuid").format(
            table(DEFAULTED), sql.Identifier(uuid_default(DEFAULTED).name), sql.Literal(HAND_MADE_UUID)
        )
    )
    trigger = TRIGGERED.updated_at_trigger()
    assert trigger is not None
    conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger.name), table(TRIGGERED)))
    replaced = REPLACED_FUNCTION.model_copy(update={"body": REPLACED_FUNCTION.body + "-- replaced by hand\n"})
    conn.execute(function.create_statement(replaced, qualified(replaced.schema_name, replaced.name)))
    read = next(mv for mv in REPORTING.materialized_view_specs() if mv.name in LEAKY_VIEW.query)
    every_company = f"SELECT * FROM {qualified(read.schema_name, read.name).as_string(conn)}"
    conn.execute(view.create_statement(LEAKY_VIEW.model_copy(update={"query": every_company}), replace=True))
    conn.execute(
        "SELECT cron.alter_job(jobid, schedule => '0 0 1 1 *') FROM cron.job WHERE jobname = %s",
        (RESCHEDULED_JOB.name,),
    )
    conn.execute("SELECT cron.unschedule(%s)", (UNSCHEDULED_JOB.name,))
    matview = qualified(DROPPED_MATVIEW.schema_name, DROPPED_MATVIEW.name)
    conn.execute(sql.SQL("DROP MATERIALIZED VIEW {} CASCADE").format(matview))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO anon").format(table(GIVEN_AWAY)))
    schemas = [sql.Identifier("public"), sql.Identifier(ACCESS.schemas[0].name)]
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA {} TO anon").format(sql.SQL(", ").join(schemas)))


def change_behind_the_stacks_back(live: LiveStack) -> None:
    with admin(live) as conn:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("public", JOBS_INDEX.name)))
        conn.execute("ALTER TABLE public.customers DISABLE ROW LEVEL SECURITY")
        conn.execute("ALTER POLICY invoices_tenant_select ON public.invoices USING (true)")
        conn.execute("GRANT TRUNCATE ON public.jobs TO anon")
        conn.execute("CREATE POLICY backdoor ON public.estimates FOR ALL TO authenticated USING (true)")
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("SELECT pg_reload_conf()")
        change_the_catalog_by_hand(conn)
    hba = primary_hba(live)
    hba.write_text("host all all 127.0.0.1/32 trust\n" + hba.read_text())
    console = psycopg.connect(
        host=LOOPBACK, port=live.pgbouncer_port, dbname=CONSOLE_DATABASE, user=AUTH_ROLE,
        password=live.passwords["pgbouncerAuthPassword"], autocommit=True, cursor_factory=psycopg.ClientCursor,
        prepare_threshold=None,
    )  # fmt: skip
    with console:
        console.execute("SET default_pool_size = 7")
    with redis_client(live, live.passwords["redisPassword"]) as cache:
        cache.config_set("maxmemory", HAND_MADE_MAXMEMORY)
        cache.config_set("requirepass", "")
    replica_data = live.state_dir / "postgres-replica-0" / "data"
    stop = [process.pg_tool("pg_ctl"), "stop", "-D", str(replica_data), "-m", "fast", "-w"]
    process.run(process.as_service_user(stop), "pg_ctl stop of the replica")


def test_drift_made_by_hand_is_reported_with_exit_3(ops_stack: LiveStack) -> None:
    change_behind_the_stacks_back(ops_stack)
    run = script(ops_stack, "drift")
    assert run.code == EXIT_DRIFT, run.output
    rows = run.output.splitlines()
    for name, property_ in DRIFT:
        assert any(name in row and property_ in row for row in rows), f"{name} {property_} not in:\n{run.output}"
    pool_row = next(row for row in rows if "defaultPoolSize" in row)
    assert pool_row.split()[-2:] == ["10", "7"]


def test_verify_fails_naming_the_failed_checks(ops_stack: LiveStack) -> None:
    run = script(ops_stack, "verify")
    assert run.code == EXIT_FAILED, run.output
    checks = (
        "replicas streaming",
        "FK index coverage",
        "RLS on every table",
        "API roles within RLS",
        "Redis with auth",
    )
    for check in checks:
        assert check_row(run.output, check).split()[len(check.split())] == "FAIL", run.output
    assert "0 of 1 not streaming" not in run.output and "1 of 1 not streaming" in run.output
    assert f"jobs.{JOBS_FK}" in run.output
    assert "anon holds TRUNCATE on jobs" in run.output and "policy backdoor on estimates" in run.output
    assert "anon is a member of authenticated" in run.output and "authenticated bypasses RLS" in run.output
    assert "anon may act as authenticated, which bypasses RLS" in run.output
    assert "without: ANSWERED (no password required)" in check_row(run.output, "Redis with auth")
    failed = "RLS on every table, API roles within RLS, FK index coverage, replicas streaming, Redis with auth"
    assert f"FAILED: {failed}" in run.output


def test_a_destructive_change_is_said_at_the_top_with_exit_2(
    ops_stack: LiveStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    project = copy_project(tmp_path_factory.mktemp("ops-program") / "project")
    shutil.copy(ROOT / f"Pulumi.{ops_stack.stack.name}.yaml", project)
    backend = auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{ops_stack.backend}"})
    copy = auto.select_stack(ops_stack.stack.name, work_dir=str(project), opts=backend)
    copy.set_config("thorbis:allowDataLoss", auto.ConfigValue("false"))  # in the copy's stack file only
    summary = project / "summary.md"
    with edited_table(project / "sql" / "schema", "customers", without_column("notes")):
        run = script(ops_stack, "pr-preview", "--work-dir", str(project), "--out", str(summary))
    text = summary.read_text()
    assert run.code == EXIT_DESTRUCTIVE, run.output + text  # destructive wins over the drift still there
    top = text.split("### ", 1)[0]
    assert text.splitlines()[0].endswith(": destructive change")
    assert "column customers.notes would be dropped (refused: thorbis:allowDataLoss is false)" in top
    assert top.index("Destructive change") < top.index("**Drift**")


def test_a_plain_preview_sees_the_drift_and_fails_expecting_no_changes(ops_stack: LiveStack) -> None:
    """`pulumi preview` with no --refresh (what `make preview` runs) reads the live servers first."""
    log = EventLog()
    with pytest.raises(auto.CommandError):
        ops_stack.stack.preview(expect_no_changes=True, on_event=log)
    drifted = {name for name, _ in DRIFT}
    assert {change.name for change in log.drift} >= drifted, log.drift
    assert {change.name for change in log.listed} >= drifted, log.listed  # and it plans their repair


def test_a_plain_up_repairs_it_all_and_the_next_plain_preview_is_clean(ops_stack: LiveStack) -> None:
    assert ops_stack.stack.up().summary.result == "succeeded"
    with admin(ops_stack) as conn:
        rls = conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.customers'::regclass").fetchone()
        assert rls == (True,)
        assert conn.execute("SELECT to_regclass(%s)", (f"public.{JOBS_INDEX.name}",)).fetchone() != (None,)
        assert conn.execute("SELECT count(*) FROM pg_policy WHERE polname = 'backdoor'").fetchone() == (0,)
        truncate = conn.execute("SELECT has_table_privilege('anon', 'public.jobs', 'TRUNCATE')").fetchone()
        assert truncate == (False,)
        assert conn.execute("SHOW log_statement").fetchone() == ("none",)
        assert_catalog_repaired(conn)
    assert "trust" not in primary_hba(ops_stack).read_text()
    with redis_client(ops_stack, None) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with redis_client(ops_stack, ops_stack.passwords["redisPassword"]) as cache:
        assert int(cache.config_get("maxmemory")["maxmemory"]) == memory_bytes(RedisSettings().maxmemory)
    ops_stack.stack.preview(expect_no_changes=True)
    drift = script(ops_stack, "drift")
    assert drift.code == EXIT_OK, drift.output
    run = script(ops_stack, "verify")
    assert run.code == EXIT_OK, run.output


def one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None, query
    return row[0]


def assert_catalog_repaired(conn: psycopg.Connection[Any]) -> None:
    """Each change of change_the_catalog_by_hand undone, read back from the catalog."""
    assert one(conn, "SELECT pg_has_role('anon', 'authenticated', 'MEMBER')") is False
    assert one(conn, "SELECT rolbypassrls FROM pg_roles WHERE rolname = 'authenticated'") is False
    assert one(conn, "SELECT relforcerowsecurity FROM pg_class WHERE oid = %s::regclass", f"public.{UNFORCED.name}")
    constraint = "SELECT convalidated FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s"
    assert one(conn, constraint, f"public.{CHECKED.name}", first_check(CHECKED)) is True
    assert one(conn, constraint, f"public.{KEYED.name}", KEYED.foreign_key_constraints[0].name) is True
    column = uuid_default(DEFAULTED)
    default = "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = %s::regclass AND adnum = %s"
    number = one(conn, "SELECT attnum FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
                 f"public.{DEFAULTED.name}", column.name)  # fmt: skip
    assert one(conn, default, f"public.{DEFAULTED.name}", number) == column.default
    trigger = TRIGGERED.updated_at_trigger()
    assert trigger is not None
    triggers = "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s"
    assert one(conn, triggers, f"public.{TRIGGERED.name}", trigger.name) == 1
    body = "SELECT prosrc FROM pg_proc WHERE oid = %s::regproc"
    assert one(conn, body, f"{REPLACED_FUNCTION.schema_name}.{REPLACED_FUNCTION.name}") == REPLACED_FUNCTION.body
    leaky = qualified(LEAKY_VIEW.schema_name, LEAKY_VIEW.name)
    definition = one(conn, "SELECT pg_get_viewdef(%s::regclass)", leaky.as_string(conn))
    assert definition == view.canonical_definition(conn, LEAKY_VIEW)
    schedule = "SELECT schedule FROM cron.job WHERE jobname = %s"
    assert one(conn, schedule, RESCHEDULED_JOB.name) == RESCHEDULED_JOB.schedule
    assert one(conn, schedule, UNSCHEDULED_JOB.name) == UNSCHEDULED_JOB.schedule
    for relation in (
        qualified(DROPPED_MATVIEW.schema_name, DROPPED_MATVIEW.name),
        *(qualified(v.schema_name, v.name) for v in REPORTING.tenant_view_specs()),
    ):
        assert one(conn, "SELECT to_regclass(%s)", relation.as_string(conn)) is not None, relation
    owner = "SELECT relowner::regrole::text FROM pg_class WHERE oid = %s::regclass"
    assert one(conn, owner, f"public.{GIVEN_AWAY.name}") == ACCESS.owner
    for schema in ("public", ACCESS.schemas[0].name):
        assert one(conn, "SELECT has_schema_privilege('anon', %s, 'CREATE')", schema) is False


def test_adding_a_replica_previews_as_the_replica_alone(ops_stack: LiveStack) -> None:
    """The database layer waits on the primary only: a new replica (unknown until created) leaves every
    database object as it is in the preview."""
    port = ops_stack.replica_ports[-1] + 1
    if listening(port) or port in ops_stack.all_ports:
        pytest.skip(f"port {port}, the second replica's, is taken on this host")
    ops_stack.stack.set_config("thorbis:replicas.count", auto.ConfigValue("2"), path=True)
    log = EventLog()
    try:
        ops_stack.stack.preview(on_event=log)
    finally:
        ops_stack.stack.set_config("thorbis:replicas.count", auto.ConfigValue("1"), path=True)
    assert [change.name for change in log.listed if change.type.startswith("thorbisdb:db:")] == []
    assert "thorbis-replica-1" in {change.name for change in log.listed if change.op == "create"}
    assert len(log.listed) < 10, [(change.op, change.name) for change in log.listed]
