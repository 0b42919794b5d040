"""What keeps the database in shape, on the session's live stack: pg_partman's partition sets, the pg_cron
jobs (each command run for real, as pg_cron runs it), the monitoring views read as `reporting`, and the
reporting views' figures per company."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.database.declared.jobs import load_jobs
from components.database.declared.model import load_schema
from components.database.declared.operations import load_monitoring
from components.database.declared.reporting import load_reporting
from testbed.stacks import LiveStack

pytestmark = pytest.mark.e2e
PARTITIONED = [table.name for table in load_schema().tables if table.partition]
JOBS = load_jobs().resolved({}, {})
PREMAKE = 4  # thorbis:partitioning.premake's default, which this stack keeps
Conn = psycopg.Connection[Any]


def login(stack: LiveStack, user: str, password_key: str) -> dict[str, Any]:
    return {**stack.admin(), "user": user, "password": stack.passwords[password_key]}


@pytest.fixture(scope="module")
def admin(database_stack: LiveStack) -> Iterator[Conn]:
    with psycopg.connect(**database_stack.admin(), autocommit=True) as conn:  # type: ignore[arg-type]
        yield conn


def test_a_refresh_finds_what_up_made_and_a_preview_then_proposes_nothing(database_stack: LiveStack) -> None:
    """What pg_partman and the jobs create after `up` (partitions, template tables) is not drift."""
    database_stack.stack.refresh()
    database_stack.stack.preview(expect_no_changes=True)


def test_every_partitioned_table_is_kept_by_pg_partman_with_months_made_ahead(admin: Conn) -> None:
    configs = dict(
        admin.execute(
            "SELECT parent_table, (premake, partition_interval, infinite_time_partitions) FROM partman.part_config"
        ).fetchall()
    )
    assert sorted(configs) == sorted(f"public.{name}" for name in PARTITIONED)
    for name in PARTITIONED:
        ahead = admin.execute(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass "
            "AND pg_get_expr(c.relpartbound, c.oid) LIKE '%%FROM (''' || "
            "to_char(date_trunc('month', now()) + make_interval(months => %s), 'YYYY-MM-DD') || '%%'",
            (f"public.{name}", PREMAKE),
        ).fetchone()
        assert ahead == (1,), f"{name}: no partition {PREMAKE} months ahead"


def test_every_partition_is_secured_by_row_level_security(admin: Conn) -> None:
    unsecured = admin.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relispartition "
        "AND c.relkind = 'r' AND NOT (c.relrowsecurity AND c.relforcerowsecurity)"
    ).fetchall()
    partitions = admin.execute("SELECT count(*) FROM pg_class WHERE relispartition AND relkind = 'r'").fetchone()
    assert partitions is not None and partitions[0] >= len(PARTITIONED) * (PREMAKE + 1)
    assert unsecured == []


def test_the_jobs_of_sql_jobs_yaml_are_scheduled_as_declared(admin: Conn) -> None:
    scheduled = {name: (schedule, command) for name, schedule, command in admin.execute(
        "SELECT jobname, schedule, command FROM cron.job WHERE active"
    )}  # fmt: skip
    assert scheduled == {job.name: (job.schedule, job.command) for job in JOBS}


@pytest.mark.parametrize("command", [job.command for job in JOBS], ids=[job.name for job in JOBS])
def test_each_job_command_runs(command: str, admin: Conn) -> None:
    """As pg_cron runs it: one statement outside a transaction block (CALLs commit, VACUUM is allowed). It
    completes with its own command tag, which pg_cron records as the run's return_message on success."""
    done = admin.execute(sql.SQL(command)).statusmessage
    assert done is not None and done.split()[0] == command.split()[0].upper(), done


def row_count(conn: Conn, view: str) -> int:
    return len(conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier("monitoring", view))).fetchall())


@pytest.mark.parametrize("view", [view.name for view in load_monitoring().views])
def test_each_monitoring_view_answers_the_reporting_role(view: str, admin: Conn, database_stack: LiveStack) -> None:
    """`reporting` (the views' reader) sees every row the admin sees: its grants reach whatever
    each view reads. Counted between two reads of the admin, so rows that come or go meanwhile do not count."""
    conninfo = {
        **database_stack.admin(),
        "user": "reporting",
        "password": database_stack.passwords["reportingPassword"],
    }
    before = row_count(admin, view)
    with psycopg.connect(**conninfo, autocommit=True) as conn:  # type: ignore[arg-type]
        seen = row_count(conn, view)
    after = row_count(admin, view)
    assert min(before, after) <= seen <= max(before, after), (before, seen, after)


def test_reporting_views_show_each_company_its_own_figures_only(admin: Conn, database_stack: LiveStack) -> None:
    """Two companies with a paid invoice each; after a refresh, the tenant view shows A's lifetime value
    only to A's claims, and the materialized view holds both for `reporting`."""
    reporting = load_reporting()
    with admin.transaction():
        companies = [
            admin.execute(
                "INSERT INTO companies (name, slug) VALUES (%s, %s) RETURNING id", (f"Op {tag}", f"op-{tag}")
            ).fetchone()[0]  # type: ignore[index]
            for tag in ("a", "b")
        ]
        for company, amount in zip(companies, ("100.00", "250.00"), strict=True):
            customer = admin.execute(
                "INSERT INTO customers (company_id, customer_number, first_name) VALUES (%s, 'C-1', 'Op') RETURNING id",
                (company,),
            ).fetchone()[0]  # type: ignore[index]
            admin.execute(
                "INSERT INTO invoices (company_id, customer_id, invoice_number, status, subtotal, total_amount, "
                "balance_amount) VALUES (%s, %s, 'I-1', 'sent', %s, %s, %s)",
                (company, customer, amount, amount, amount),
            )
    for view in reporting.materialized_views:
        admin.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(
            sql.Identifier(reporting.schema_name, view.name)))  # fmt: skip
    app = {
        **database_stack.admin(),
        "user": "authenticator",
        "password": database_stack.passwords["authenticatorPassword"],
    }
    with psycopg.connect(**app) as conn:  # type: ignore[arg-type]
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"company_id": str(companies[0])}),)
        )
        conn.execute("SET LOCAL ROLE authenticated")
        seen = {row[0] for row in conn.execute("SELECT company_id FROM public.customer_lifetime_value")}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM reporting.mv_customer_lifetime_value")
    assert seen == {companies[0]}
    both = admin.execute(
        "SELECT count(DISTINCT company_id) FROM reporting.mv_customer_lifetime_value WHERE company_id = ANY(%s)",
        (companies,),
    ).fetchone()
    assert both == (2,)
