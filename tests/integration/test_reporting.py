"""The reporting views (sql/reporting.yaml) and the MaterializedView kind against a real PostgreSQL.

The tables are made from the schema model by the Table kind (RLS enabled and forced, as in a stack), filled
with two companies' rows (a job with several visits, invoices and payments: the fan-out case), and the
materialized views, tenant views and grants are made by their kinds. Then: a company sees only its own
figures and, without claims, none; `authenticated` and `anon` cannot read the materialized views, `reporting`
reads them whole; every figure equals the same aggregate computed in Python from the base rows; concurrent
refresh works beside readers; and the kind's create / observe / drift / repair / delete cycle.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.rows import dict_row

from components.database.declared.access import load_access
from components.database.declared.model import load_schema
from components.database.declared.reporting import REPORTING_FILE, ReportingModel, load_reporting
from components.database.declared.tenancy import read_all_policy
from components.database.kinds.function import FunctionKind
from components.database.kinds.grant import GrantKind, GrantSpec
from components.database.kinds.materialized_view import (
    MaterializedViewKind,
    MaterializedViewSpec,
    MaterializedViewStatus,
)
from components.database.kinds.policy import PolicyKind
from components.database.kinds.schema import SchemaKind, SchemaSpec
from components.database.kinds.table import TableKind
from components.database.kinds.view import ViewKind, ViewStatus
from components.kind import Observed, ProviderError
from tests.integration.databases import Database, changes, database_server, declared, recorded

DATABASE = "thorbis_reporting_it"
PASSWORD = "it-Report'super:0123"
LOGIN_PASSWORD = "it-Report-login-0123"
OWNER = "thorbis_owner"
TABLES = ["companies", "users", "team_members", "customers", "jobs", "schedules", "invoices", "payments"]
TABLES += ["customer_reviews"]
ROLES_SQL = """
CREATE ROLE thorbis_owner NOLOGIN;
CREATE ROLE anon NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
CREATE ROLE service_role NOLOGIN BYPASSRLS;
CREATE ROLE reporting_owner NOLOGIN;
CREATE ROLE search_owner NOLOGIN;
CREATE ROLE reporting LOGIN PASSWORD {password};
CREATE ROLE authenticator LOGIN NOINHERIT PASSWORD {password} IN ROLE anon, authenticated, service_role;
CREATE SCHEMA app AUTHORIZATION thorbis_owner;
GRANT USAGE ON SCHEMA app TO anon, authenticated, service_role, reporting;
"""
Row = dict[str, Any]


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    """A server with the stack's roles, the RLS helper and the tables the reports read (RLS forced)."""
    with database_server(DATABASE, PASSWORD) as db:
        db.execute(sql.SQL(ROLES_SQL).format(password=sql.Literal(LOGIN_PASSWORD)))
        make_helper(db)
        make_tables(db)
        yield db


def make_helper(db: Database) -> None:
    helper = next(f for f in load_access().functions if f.name == "current_company_id")
    db.kind(FunctionKind).create(helper.function_spec(OWNER))


def make_tables(db: Database) -> None:
    """The tables the reports read and those their foreign keys need, as the layer makes them."""
    schema = load_schema()
    needed: set[str] = set()
    pending = list(TABLES)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending += [fk.ref_table for fk in schema.table(name).foreign_key_constraints]
    tables, policies = db.kind(TableKind), db.kind(PolicyKind)
    for data in schema.in_dependency_order():
        if data.name in needed:
            tables.create(data.table_spec(OWNER))
            policies.create(read_all_policy(data, load_access().read_all))  # what the readers see every row by
    # what access.yaml's table_privileges give (plus the reports' owner: it reads every table to refresh)
    db.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reporting, reporting_owner")


# --- the rows: company A (New York) with the fan-out job, company B (UTC) -----------------------------


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC"))


@dataclass
class Seed:
    """Ids of the rows the tests name."""

    company_a: str
    company_b: str
    ids: dict[str, str]


def insert_statement(table: str, columns: list[str]) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier("public", table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )


class Rows:
    """The rows to insert, built with short helpers; ids by key, made on first use."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = defaultdict(lambda: str(uuid.uuid4()))
        self.pending: list[tuple[str, dict[str, Any]]] = []

    def add(self, table: str, **values: Any) -> None:
        self.pending.append((table, values))

    def customer(self, key: str, company: str, **extra: Any) -> None:
        self.add("customers", id=self.ids[key], company_id=company, **extra)
        home = {"address_line1": "1 Main St", "city": "Springfield"}
        self.add("properties", id=self.ids[f"{key}-home"], company_id=company, customer_id=self.ids[key], **home)

    def job(self, key: str, company: str, customer: str, status: str, lead: str, **extra: Any) -> None:
        where = {"customer_id": self.ids[customer], "property_id": self.ids[f"{customer}-home"]}
        self.add("jobs", id=self.ids[key], company_id=company, job_number=key, title=key, status=status, **where,
                 assigned_to=self.ids[lead], **extra)  # fmt: skip

    def visit(self, job: str, company: str, customer: str, tech: str, start: str, hours: float, status: str) -> None:
        where = {"customer_id": self.ids[customer], "property_id": self.ids[f"{customer}-home"]}
        begin = utc(start)
        times = {"start_time": begin, "end_time": begin + timedelta(hours=hours)}
        self.add("schedules", company_id=company, job_id=self.ids[job], assigned_to=self.ids[tech], title=job,
                 status=status, **where, **times)  # fmt: skip

    def invoice(
        self, key: str, company: str, customer: str, job: str | None, total: str, paid: str, **extra: Any
    ) -> None:
        amounts = {"subtotal": Decimal(total), "total_amount": Decimal(total), "paid_amount": Decimal(paid)}
        amounts["balance_amount"] = Decimal(total) - Decimal(paid)
        self.add("invoices", id=self.ids[key], company_id=company, customer_id=self.ids[customer],
                 job_id=self.ids[job] if job else None, invoice_number=key, **amounts, **extra)  # fmt: skip

    def payment(self, company: str, customer: str, amount: str, received: str, **extra: Any) -> None:
        links = {f"{name}_id": self.ids[extra.pop(name)] for name in ("job", "invoice") if name in extra}
        self.add("payments", company_id=company, customer_id=self.ids[customer], amount=Decimal(amount),
                 payment_method="credit_card", received_at=utc(received), **links, **extra)  # fmt: skip


def seed(db: Database) -> Seed:
    """Company A (New York) with the fan-out job J1, company B (UTC); rows that must not count, too."""
    rows = Rows()
    a, b = rows.ids["A"], rows.ids["B"]
    rows.add("companies", id=a, name="Alpha HVAC", slug="alpha-hvac", timezone="America/New_York")
    rows.add("companies", id=b, name="Beta Plumbing", slug="beta-plumbing", timezone="UTC")
    for key, company, role, name in [
        ("tech1", a, "technician", "Tess One"),
        ("tech2", a, "lead_technician", "Theo Two"),
        ("tech3", a, "office_staff", "Tara Three"),  # a technician by team membership only
        ("manager", a, "manager", "Max Manager"),  # not a technician: no row
        ("techB", b, "technician", "Bob Beta"),
    ]:
        rows.add("users", id=rows.ids[key], company_id=company, email=f"{key.lower()}@example.com", full_name=name,
                 role=role)  # fmt: skip
    rows.add("team_members", company_id=a, user_id=rows.ids["tech3"], is_technician=True)
    rows.add("team_members", company_id=a, user_id=rows.ids["manager"], is_technician=False)
    rows.customer("cust1", a, first_name="Ada", last_name="Lovelace")
    rows.customer("cust2", a, display_name="Hopper & Co", company_name="Grace Hopper Ltd", customer_type="commercial")
    rows.customer("cust3", a, first_name="Gone", deleted_at=utc("2026-01-20 00:00"))  # soft-deleted
    rows.customer("custB", b, first_name="Bea")

    rows.job("J1", a, "cust1", "completed", "tech1", actual_start=utc("2026-02-10 14:00"),
             actual_end=utc("2026-02-10 18:00"))  # fmt: skip
    # J2 ends at 02:30 UTC on 1 March: still 28 February in New York, the company's month
    rows.job("J2", a, "cust1", "invoiced", "tech2", actual_start=utc("2026-03-01 00:30"),
             actual_end=utc("2026-03-01 02:30"))  # fmt: skip
    rows.job("J3", a, "cust2", "scheduled", "tech1", scheduled_start=utc("2026-04-01 13:00"),
             scheduled_end=utc("2026-04-01 15:00"))  # fmt: skip
    rows.job("J4", a, "cust2", "cancelled", "tech2", cancelled_at=utc("2026-02-01 10:00"))
    rows.job("J5", a, "cust1", "completed", "tech1", deleted_at=utc("2026-02-11 10:00"),
             actual_start=utc("2026-02-11 08:00"), actual_end=utc("2026-02-11 09:00"))  # fmt: skip
    rows.job("JB1", b, "custB", "completed", "techB", actual_start=utc("2026-02-03 09:00"),
             actual_end=utc("2026-02-03 14:00"))  # fmt: skip

    rows.visit("J1", a, "cust1", "tech1", "2026-02-10 14:00", 2, "completed")  # tech1 twice on J1
    rows.visit("J1", a, "cust1", "tech1", "2026-02-10 16:00", 2, "completed")
    rows.visit("J1", a, "cust1", "tech2", "2026-02-10 15:00", 3, "completed")
    rows.visit("J2", a, "cust1", "tech2", "2026-03-01 00:30", 1.5, "completed")
    rows.visit("J2", a, "cust1", "tech3", "2026-03-01 00:30", 1, "cancelled")
    rows.visit("J3", a, "cust2", "tech1", "2026-04-01 13:00", 2, "scheduled")
    rows.visit("JB1", b, "custB", "techB", "2026-02-03 09:00", 5, "completed")

    issued = {"issue_date": date(2026, 2, 12)}
    rows.invoice("I1", a, "cust1", "J1", "1000.00", "600.00", status="partially_paid", **issued)
    rows.invoice("I2", a, "cust1", "J1", "200.00", "200.00", status="paid", paid_at=utc("2026-03-10 12:00"), **issued)
    rows.invoice("I3", a, "cust1", "J2", "500.00", "0", status="sent", issue_date=date(2026, 3, 2))
    rows.invoice("I5", a, "cust2", None, "999.00", "0", status="void", voided_at=utc("2026-02-02 00:00"), **issued)
    rows.invoice("I6", a, "cust2", None, "888.00", "0", status="draft", **issued)
    rows.invoice("I7", a, "cust2", None, "777.00", "0", status="sent", deleted_at=utc("2026-02-13 00:00"), **issued)
    rows.invoice("IB1", b, "custB", "JB1", "9999.00", "9999.00", status="paid", paid_at=utc("2026-02-05 00:00"),
                 issue_date=date(2026, 2, 4))  # fmt: skip

    rows.payment(a, "cust1", "300.00", "2026-02-15 15:00", status="completed", job="J1", invoice="I1")
    rows.payment(a, "cust1", "300.00", "2026-03-01 03:00", status="completed", invoice="I1")  # J1 by its invoice
    rows.payment(a, "cust1", "200.00", "2026-03-10 12:00", status="completed", job="J1", invoice="I2")
    rows.payment(a, "cust1", "100.00", "2026-03-11 12:00", status="pending", job="J1")  # not received
    rows.payment(a, "cust1", "50.00", "2026-02-20 12:00", status="refunded", job="J1", refunded_amount=Decimal(50))
    rows.payment(a, "cust2", "75.00", "2026-01-15 12:00", status="completed")  # on account
    rows.payment(b, "custB", "9999.00", "2026-02-05 00:00", status="completed", job="JB1", invoice="IB1")

    for tech, rating, moderation in [
        ("tech1", 5, "approved"),
        ("tech1", 4, "pending"),
        ("tech1", 1, "rejected"),  # not counted
        ("tech2", 3, "approved"),
        ("techB", 2, "approved"),
    ]:
        company, customer = (b, "custB") if tech == "techB" else (a, "cust1")
        rows.add("customer_reviews", company_id=company, customer_id=rows.ids[customer],
                 technician_id=rows.ids[tech], rating=rating, moderation_status=moderation)  # fmt: skip
    with db.connect() as conn:
        for table, values in rows.pending:
            conn.execute(insert_statement(table, list(values)), tuple(values.values()))
    return Seed(a, b, dict(rows.ids))


@dataclass(frozen=True)
class Reports:
    model: ReportingModel
    seed: Seed


@pytest.fixture(scope="module")
def reports(database: Database) -> Reports:
    """sql/reporting.yaml made by its kinds, in the order the layer must follow, over seeded rows."""
    model = load_reporting()
    rows = seed(database)
    database.kind(SchemaKind).create(SchemaSpec(name=model.schema_name, owner=model.schema_owner))
    grants = database.kind(GrantKind)
    owner_grant, *reader_grants = model.grant_specs()
    grants.create(owner_grant)  # before the views: giving them to their owner needs its CREATE on the schema
    matviews, views = database.kind(MaterializedViewKind), database.kind(ViewKind)
    for spec in model.materialized_view_specs():
        assert matviews.create(spec)[1] == MaterializedViewStatus(adopted=False, populated=True)
        assert matviews.observe("", spec) == Observed(
            declared(spec), MaterializedViewStatus(populated=True)
        )  # a second `up` changes nothing
    for view in model.tenant_view_specs():
        views.create(view)
        assert views.observe("", view) == Observed(declared(view), ViewStatus())
    for grant in reader_grants:
        grants.create(grant)
    public_tables = [  # access.yaml's table_privileges: granted after the tenant views, as the layer must
        GrantSpec(grantee=grantee, privileges=privileges, object_type="all_tables_in_schema", schema_name="public")
        for grantee, privileges in [
            ("authenticated", ["SELECT", "INSERT", "UPDATE", "DELETE"]),
            ("reporting", ["SELECT"]),
        ]
    ]
    for grant in public_tables:
        grants.create(grant)
    for grant in [*model.grant_specs(), *public_tables]:
        assert changes(grants, grant, grants.observe("", grant)) == []
    return Reports(model, rows)


@contextmanager
def as_authenticated(db: Database, claims: dict[str, str] | None) -> Iterator[psycopg.Cursor[Row]]:
    """A transaction as an application would run it: log in as authenticator, SET LOCAL ROLE, claims local."""
    with db.connect("authenticator", LOGIN_PASSWORD) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        if claims is not None:
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        with conn.cursor(row_factory=dict_row) as cursor:
            yield cursor


def select_all(relation: sql.Identifier) -> sql.Composed:
    return sql.SQL("SELECT * FROM {}").format(relation)


def by_key(rows: list[Row], *key: str) -> dict[tuple[Any, ...], Row]:
    return {tuple(str(row[k]) for k in key): row for row in rows}


# --- the data --------------------------------------------------------------------------------------------


def test_reporting_data_fits_the_schema_and_the_jobs() -> None:
    """Each report is read by company (its unique index leads with company_id, which serves the tenant
    view's filter), no tenant view takes a table's name, and each has its refresh job in sql/jobs.yaml."""
    model, tables = load_reporting(), {table.name for table in load_schema().tables}
    assert model.schema_name != model.tenant_view_schema
    for report in model.materialized_views:
        assert report.unique_index[0] == "company_id", report.name
        assert report.tenant_view not in tables, report.tenant_view
    jobs_file = REPORTING_FILE.parent / "jobs.yaml"
    if jobs_file.exists():
        commands = {job["command"] for job in yaml.safe_load(jobs_file.read_text())["jobs"]}
        for report in model.materialized_views:
            assert f"REFRESH MATERIALIZED VIEW CONCURRENTLY {model.schema_name}.{report.name}" in commands


# --- access --------------------------------------------------------------------------------------------


def test_a_company_sees_only_its_own_figures_and_without_claims_none(database: Database, reports: Reports) -> None:
    model, seeded = reports.model, reports.seed
    for report, view in zip(model.materialized_views, model.tenant_view_specs(), strict=True):
        whole = database.dicts(select_all(sql.Identifier(model.schema_name, report.name)))
        assert {str(row["company_id"]) for row in whole} == {seeded.company_a, seeded.company_b}, report.name
        tenant_view = sql.Identifier(view.schema_name, view.name)
        for company in (seeded.company_a, seeded.company_b):
            with as_authenticated(database, {"company_id": company, "role": "authenticated"}) as cursor:
                seen = cursor.execute(select_all(tenant_view)).fetchall()
            assert seen, f"{view.name} shows company {company} nothing"
            assert by_key(seen, *report.unique_index) == by_key(
                [row for row in whole if str(row["company_id"]) == company], *report.unique_index
            )
        for claims in (None, {}, {"role": "authenticated"}):
            with as_authenticated(database, claims) as cursor:
                assert cursor.execute(select_all(tenant_view)).fetchall() == [], f"{view.name} with claims {claims}"


def test_a_leaky_function_in_the_callers_query_sees_no_other_company(database: Database, reports: Reports) -> None:
    """security_barrier: the caller's own predicate runs after the company filter, never before it."""
    database.execute(
        "CREATE FUNCTION public.it_leak(name text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS "
        "$$ BEGIN RAISE NOTICE 'saw %', name; RETURN true; END $$"
    )
    try:
        seen: list[str] = []
        with database.connect("authenticator", LOGIN_PASSWORD) as conn:
            conn.add_notice_handler(lambda notice: seen.append(str(notice.message_primary)))
            with conn.transaction():
                conn.execute("SET LOCAL ROLE authenticated")
                claims = json.dumps({"company_id": reports.seed.company_a})
                conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
                conn.execute("SELECT * FROM public.technician_performance WHERE public.it_leak(technician_name)")
        assert seen and "saw Bob Beta" not in seen
    finally:
        database.execute("DROP FUNCTION public.it_leak(text)")


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_application_roles_cannot_read_the_materialized_views(database: Database, reports: Reports, role: str) -> None:
    model = reports.model
    for report in model.materialized_views:
        relation = sql.Identifier(model.schema_name, report.name)
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
            assert not database.scalar(
                "SELECT has_table_privilege(%s, %s, %s)", (role, f"{model.schema_name}.{report.name}", privilege)
            )
        with (
            database.connect("authenticator", LOGIN_PASSWORD) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            conn.transaction(),
        ):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            conn.execute(select_all(relation))
    assert not database.scalar("SELECT has_schema_privilege(%s, %s, 'USAGE')", (role, model.schema_name))
    for view in model.tenant_view_specs():
        can_read = database.scalar("SELECT has_table_privilege(%s, %s, 'SELECT')", (role, f"public.{view.name}"))
        assert can_read == (role == "authenticated")


def test_reporting_reads_every_company_whole(database: Database, reports: Reports) -> None:
    model = reports.model
    with database.connect("reporting", LOGIN_PASSWORD) as conn:
        for report in model.materialized_views:
            companies = conn.execute(
                sql.SQL("SELECT DISTINCT company_id::text FROM {}").format(
                    sql.Identifier(model.schema_name, report.name)
                )
            ).fetchall()
            assert {company for (company,) in companies} == {reports.seed.company_a, reports.seed.company_b}
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():  # read-only
            conn.execute("REFRESH MATERIALIZED VIEW reporting.mv_monthly_revenue")


# --- the figures equal the aggregates computed straight from the base rows ------------------------------


def money(value: Decimal | int) -> Decimal:
    return Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


INVOICED = ("draft", "void")
OPEN = ("sent", "viewed", "partially_paid", "overdue")
RECEIVED = ("completed", "partially_refunded", "refunded")
DONE = ("completed", "invoiced")


class Base:
    """Every base row, read once as the superuser, to aggregate in Python (another shape than the views)."""

    def __init__(self, db: Database) -> None:
        self.tables = {name: db.dicts(select_all(sql.Identifier("public", name))) for name in TABLES}
        self.zones = {row["id"]: ZoneInfo(row["timezone"]) for row in self.tables["companies"]}

    def __getitem__(self, table: str) -> list[Row]:
        return self.tables[table]

    def invoices(self) -> list[Row]:
        return [i for i in self["invoices"] if i["deleted_at"] is None and i["status"] not in INVOICED]

    def payments(self) -> list[Row]:
        return [p for p in self["payments"] if p["status"] in RECEIVED]

    def live_jobs(self) -> dict[Any, Row]:
        return {j["id"]: j for j in self["jobs"] if j["deleted_at"] is None}

    def month(self, company: Any, moment: datetime) -> date:
        local = moment.astimezone(self.zones[company])
        return date(local.year, local.month, 1)


def expected_customers(base: Base) -> dict[tuple[str, ...], Row]:
    expected: dict[tuple[str, ...], Row] = {}
    for c in base["customers"]:
        if c["deleted_at"] is not None:
            continue
        jobs = [j for j in base.live_jobs().values() if j["customer_id"] == c["id"] and j["status"] != "cancelled"]
        invoices = [i for i in base.invoices() if i["customer_id"] == c["id"]]
        payments = [p for p in base.payments() if p["customer_id"] == c["id"]]
        dates = [j["actual_start"] or j["scheduled_start"] or j["created_at"] for j in jobs]
        name = c["display_name"] or c["company_name"] or " ".join(filter(None, [c["first_name"], c["last_name"]]))
        expected[(str(c["company_id"]), str(c["id"]))] = {
            "company_id": c["company_id"],
            "customer_id": c["id"],
            "customer_name": name or None,
            "customer_type": c["customer_type"],
            "job_count": len(jobs),
            "completed_job_count": sum(j["status"] in DONE for j in jobs),
            "first_job_at": min(dates, default=None),
            "last_job_at": max(dates, default=None),
            "invoice_count": len(invoices),
            "invoiced_amount": sum((i["total_amount"] for i in invoices), Decimal(0)),
            "open_amount": sum((i["balance_amount"] for i in invoices if i["status"] in OPEN), Decimal(0)),
            "average_invoice_amount": money(sum(i["total_amount"] for i in invoices) / len(invoices))
            if invoices
            else Decimal(0),
            "payment_count": len(payments),
            "collected_amount": sum((p["amount"] - p["refunded_amount"] for p in payments), Decimal(0)),
            "last_payment_at": max((p["received_at"] for p in payments), default=None),
        }
    return expected


def expected_technicians(base: Base) -> dict[tuple[str, ...], Row]:
    jobs, invoices = base.live_jobs(), {i["id"]: i for i in base["invoices"]}
    flagged = {(m["company_id"], m["user_id"]) for m in base["team_members"] if m["is_technician"]}
    expected: dict[tuple[str, ...], Row] = {}
    for u in base["users"]:
        if u["role"] not in ("technician", "lead_technician") and (u["company_id"], u["id"]) not in flagged:
            continue
        worked = {j["id"] for j in base["jobs"] if j["assigned_to"] == u["id"]} | {
            s["job_id"]
            for s in base["schedules"]
            if s["assigned_to"] == u["id"]
            and s["job_id"]
            and s["status"] not in ("cancelled", "no_show", "rescheduled")
        }
        done = {job for job in worked if job in jobs and jobs[job]["status"] in DONE}
        visits = [s for s in base["schedules"] if s["assigned_to"] == u["id"] and s["status"] == "completed"]
        reviews = [r["rating"] for r in base["customer_reviews"]
                   if r["technician_id"] == u["id"] and r["moderation_status"] != "rejected"]  # fmt: skip
        seconds = sum((s["end_time"] - s["start_time"]).total_seconds() for s in visits)
        expected[(str(u["company_id"]), str(u["id"]))] = {
            "company_id": u["company_id"],
            "technician_id": u["id"],
            "technician_name": u["full_name"],
            "jobs_completed": len(done),
            "invoiced_amount": sum((i["total_amount"] for i in base.invoices() if i["job_id"] in done), Decimal(0)),
            "collected_amount": sum(
                (
                    p["amount"] - p["refunded_amount"]
                    for p in base.payments()
                    if (p["job_id"] or invoices.get(p["invoice_id"], {}).get("job_id")) in done
                ),
                Decimal(0),
            ),
            "visits_completed": len(visits),
            "hours_on_site": money(Decimal(seconds) / 3600),
            "review_count": len(reviews),
            "average_rating": money(Decimal(sum(reviews)) / len(reviews)) if reviews else None,
        }
    return expected


def expected_months(base: Base) -> dict[tuple[str, ...], Row]:
    zero = {"invoice_count": 0, "invoiced_amount": Decimal(0), "open_amount": Decimal(0), "payment_count": 0,
            "collected_amount": Decimal(0), "jobs_completed": 0}  # fmt: skip
    months: dict[tuple[Any, date], Row] = defaultdict(lambda: dict(zero))
    for i in base.invoices():
        row = months[(i["company_id"], i["issue_date"].replace(day=1))]
        row["invoice_count"] += 1
        row["invoiced_amount"] += i["total_amount"]
        row["open_amount"] += i["balance_amount"] if i["status"] in OPEN else 0
    for p in base.payments():
        row = months[(p["company_id"], base.month(p["company_id"], p["received_at"]))]
        row["payment_count"] += 1
        row["collected_amount"] += p["amount"] - p["refunded_amount"]
    for j in base.live_jobs().values():
        if j["status"] in DONE and j["actual_end"] is not None:
            months[(j["company_id"], base.month(j["company_id"], j["actual_end"]))]["jobs_completed"] += 1
    return {
        (str(company), str(month)): {"company_id": company, "month": month, **row}
        for (company, month), row in months.items()
    }


EXPECTED = {
    "mv_customer_lifetime_value": expected_customers,
    "mv_technician_performance": expected_technicians,
    "mv_monthly_revenue": expected_months,
}


def test_figures_equal_the_aggregates_of_the_base_rows(database: Database, reports: Reports) -> None:
    base, model = Base(database), reports.model
    for report in model.materialized_views:
        rows = database.dicts(select_all(sql.Identifier(model.schema_name, report.name)))
        assert by_key(rows, *report.unique_index) == EXPECTED[report.name](base), report.name


def test_the_fan_out_job_is_counted_once(database: Database, reports: Reports) -> None:
    """Hand-computed: J1 has two invoices (1200), five payments (800 received) and three visits, two by
    tech1; a single GROUP BY over those joins would multiply each of these figures."""
    ids = reports.seed.ids
    rows = by_key(database.dicts("SELECT * FROM reporting.mv_technician_performance"), "technician_id")
    figures = ["jobs_completed", "invoiced_amount", "collected_amount", "visits_completed", "hours_on_site"]
    figures += ["review_count", "average_rating"]
    assert [rows[(ids["tech1"],)][f] for f in figures] == [1, 1200, 800, 2, Decimal("4.00"), 2, Decimal("4.50")]
    assert [rows[(ids["tech2"],)][f] for f in figures] == [2, 1700, 800, 2, Decimal("4.50"), 1, Decimal("3.00")]
    assert [rows[(ids["tech3"],)][f] for f in figures] == [0, 0, 0, 0, 0, 0, None]
    assert (ids["manager"],) not in rows
    customers = by_key(database.dicts("SELECT * FROM reporting.mv_customer_lifetime_value"), "customer_id")
    assert (customers[(ids["cust1"],)]["invoiced_amount"], customers[(ids["cust1"],)]["collected_amount"]) == (
        1700,
        800,
    )
    assert (ids["cust3"],) not in customers  # soft-deleted
    months = database.dicts(
        "SELECT month::text, invoiced_amount, collected_amount, jobs_completed FROM reporting.mv_monthly_revenue "
        "WHERE company_id = %s ORDER BY month",
        (reports.seed.company_a,),
    )
    assert [tuple(row.values()) for row in months] == [
        ("2026-01-01", 0, 75, 0),
        ("2026-02-01", 1200, 600, 2),  # the 1 March 03:00 UTC payment and J2 are February in New York
        ("2026-03-01", 500, 200, 0),
    ]


def test_refresh_concurrently_does_not_block_readers(database: Database, reports: Reports) -> None:
    seeded = reports.seed
    with database.connect() as writer:
        writer.execute(
            "INSERT INTO public.payments (company_id, customer_id, amount, payment_method, status, received_at) "
            "VALUES (%s, %s, 25, 'cash', 'completed', '2026-01-20 12:00+00')",
            (seeded.company_a, seeded.ids["cust2"]),
        )
    with database.connect() as reader, database.connect() as refresher, reader.transaction():
        reader.execute("SELECT count(*) FROM reporting.mv_customer_lifetime_value").fetchone()  # holds its lock
        refresher.execute("SET lock_timeout = '3s'")
        for report in reports.model.materialized_views:  # as the pg_cron jobs of sql/jobs.yaml run it
            relation = sql.Identifier(reports.model.schema_name, report.name)
            refresher.execute(sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {}").format(relation))
    test_figures_equal_the_aggregates_of_the_base_rows(database, reports)
    with as_authenticated(database, {"company_id": seeded.company_a}) as cursor:
        row = cursor.execute(
            "SELECT collected_amount FROM public.customer_lifetime_value WHERE customer_id = %s", (seeded.ids["cust2"],)
        ).fetchone()
    assert row == {"collected_amount": Decimal("100.00")}


# --- the kind: create, observe, drift, repair, delete ----------------------------------------------------

IT_QUERY = """
SELECT i.company_id, i.customer_id, count(*) AS invoice_count, sum(i.total_amount) AS invoiced_amount
FROM public.invoices i WHERE i.deleted_at IS NULL GROUP BY i.company_id, i.customer_id
"""


def it_spec(**changes: Any) -> MaterializedViewSpec:
    spec = MaterializedViewSpec(
        schema_name="reporting",
        name="mv_it_invoices",
        query=IT_QUERY,
        unique_index=["company_id", "customer_id"],
        owner="reporting_owner",
        comment="integration test",
    )
    return spec.model_copy(update=changes)


def test_owner_under_row_level_security_is_refused(database: Database, reports: Reports) -> None:
    kind = database.kind(MaterializedViewKind)
    spec = it_spec(owner=OWNER)  # owns the tables, under FORCE ROW LEVEL SECURITY: a refresh would store nothing
    with pytest.raises(ProviderError, match=r"subject to the row level security of invoices.*BYPASSRLS"):
        kind.create(spec)
    assert kind.observe("", spec) is None


def test_materialized_view_drifts_repairs_and_deletes(database: Database, reports: Reports) -> None:
    kind, spec = database.kind(MaterializedViewKind), it_spec()
    resource_id, outputs = kind.create(spec)
    assert outputs == MaterializedViewStatus(adopted=False, populated=True)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), MaterializedViewStatus(populated=True))
    database.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY reporting.mv_it_invoices")
    database.execute("GRANT SELECT ON reporting.mv_it_invoices TO reporting")
    database.execute("CREATE VIEW public.it_invoices WITH (security_barrier) AS SELECT * FROM reporting.mv_it_invoices")
    database.execute("ALTER VIEW public.it_invoices OWNER TO thorbis_owner")
    database.execute("GRANT SELECT ON public.it_invoices TO authenticated")

    # by hand: the index dropped, another owner and comment, emptied
    database.execute("DROP INDEX reporting.mv_it_invoices_key")
    database.execute("ALTER MATERIALIZED VIEW reporting.mv_it_invoices OWNER TO postgres")
    database.execute("COMMENT ON MATERIALIZED VIEW reporting.mv_it_invoices IS 'changed'")
    database.execute("REFRESH MATERIALIZED VIEW reporting.mv_it_invoices WITH NO DATA")
    drifted = kind.observe(resource_id, spec)
    assert drifted is not None
    assert (drifted.inputs["uniqueIndex"], drifted.inputs["owner"], drifted.inputs["comment"]) == (
        [],
        "postgres",
        "changed",
    )
    assert changes(kind, spec, drifted) == ["uniqueIndex", "owner", "comment", "populated"]
    assert kind.update(resource_id, recorded(spec, drifted), spec) == MaterializedViewStatus(populated=True)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), MaterializedViewStatus(populated=True))
    database.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY reporting.mv_it_invoices")

    # by hand: another query under the same name
    database.execute("DROP VIEW public.it_invoices")
    database.execute("DROP MATERIALIZED VIEW reporting.mv_it_invoices")
    database.execute(
        "CREATE MATERIALIZED VIEW reporting.mv_it_invoices AS SELECT company_id, id AS customer_id, 0::bigint AS "
        "invoice_count, 0::numeric AS invoiced_amount FROM public.customers"
    )
    database.execute("CREATE UNIQUE INDEX mv_it_invoices_key ON reporting.mv_it_invoices (company_id, customer_id)")
    database.execute("ALTER MATERIALIZED VIEW reporting.mv_it_invoices OWNER TO reporting_owner")
    database.execute("COMMENT ON MATERIALIZED VIEW reporting.mv_it_invoices IS 'integration test'")
    database.execute("CREATE VIEW public.it_invoices WITH (security_barrier) AS SELECT * FROM reporting.mv_it_invoices")
    database.execute("GRANT SELECT ON public.it_invoices TO authenticated")
    database.execute("GRANT SELECT ON reporting.mv_it_invoices TO reporting")
    drifted = kind.observe(resource_id, spec)
    assert drifted is not None and "FROM customers" in drifted.inputs["query"]
    assert changes(kind, spec, drifted) == ["query"]
    kind.update(resource_id, recorded(spec, drifted), spec)  # rebuilt; the view on it made again
    assert kind.observe(resource_id, spec) == Observed(declared(spec), MaterializedViewStatus(populated=True))
    assert database.scalar("SELECT sum(invoiced_amount) FROM public.it_invoices") == database.scalar(
        "SELECT sum(total_amount) FROM public.invoices WHERE deleted_at IS NULL"
    )
    assert database.scalar("SELECT has_table_privilege('authenticated', 'public.it_invoices', 'SELECT')")
    assert database.scalar("SELECT has_table_privilege('reporting', 'reporting.mv_it_invoices', 'SELECT')")
    assert database.scalar(
        "SELECT 'security_barrier=true' = ANY(reloptions) FROM pg_class WHERE oid = 'public.it_invoices'::regclass"
    )

    # a new query that keeps the view's columns; then one that drops a column the view reads: refused whole
    more = it_spec(query=IT_QUERY.replace("count(*)", "count(DISTINCT i.id)"))
    kind.update(resource_id, declared(spec), more)
    assert kind.observe(resource_id, more) == Observed(declared(more), MaterializedViewStatus(populated=True))
    fewer = it_spec(query="SELECT company_id, id AS customer_id FROM public.customers")
    with pytest.raises(ProviderError, match=r"drops a column that public\.it_invoices read"):
        kind.update(resource_id, declared(more), fewer)
    assert kind.observe(resource_id, more) == Observed(declared(more), MaterializedViewStatus(populated=True))

    with pytest.raises(ProviderError, match=r"view it_invoices depends on materialized view reporting\.mv_it_invoices"):
        kind.delete(resource_id, more)
    database.execute("DROP VIEW public.it_invoices")
    kind.delete(resource_id, more)
    assert kind.observe(resource_id, more) is None
    kind.delete(resource_id, more)  # already gone: nothing to do


def test_an_existing_materialized_view_is_adopted(database: Database, reports: Reports) -> None:
    kind, spec = database.kind(MaterializedViewKind), it_spec(name="mv_it_adopted")
    database.execute(
        sql.SQL("CREATE MATERIALIZED VIEW {} AS {}").format(sql.Identifier("reporting", spec.name), sql.SQL(IT_QUERY))
    )
    resource_id, outputs = kind.create(spec)
    assert outputs == MaterializedViewStatus(adopted=True, populated=True)
    assert kind.observe(resource_id, spec) == Observed(declared(spec), MaterializedViewStatus(populated=True))
    kind.delete(resource_id, spec)
