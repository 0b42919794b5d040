"""The review's six query classes as an application sends them, timed, with their plans.

Each class is one concrete query of the product (a customer's job history, the dispatch board, the
customer search box, the dashboard, a month of messages, fuzzy name search). It is run three ways:

- `before`: the review's before database (no RLS exists there), as the owner (postgres) with an explicit
  `company_id = ...` filter on every table, as the old application did;
- `after`: after `pulumi up`, as the application: `authenticator`, claims set with
  set_config('request.jwt.claims', ..., true), SET LOCAL ROLE authenticated, no explicit company filter
  (row level security supplies it);
- `after_owner`: the same after database as the owner (postgres, not subject to RLS) with the explicit
  filter: the difference to `after` is the cost of RLS.

Only the query's own statement is timed (client-side: execute and fetch), after two warm-up runs; the
transaction set-up of `after` (set_config, SET LOCAL ROLE) is not. Plans are EXPLAIN (ANALYZE, BUFFERS).
"""

from __future__ import annotations

import json
import random
import statistics
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

Params = dict[str, Any]
MODES = ("before", "after", "after_owner")
WARMUP = 2


@dataclass(frozen=True)
class QueryClass:
    """One of the review's query classes: its row of the review's table and the query an app sends."""

    key: str
    title: str
    review_before_ms: float
    review_after_ms: tuple[float, float]
    query: sql.SQL  # {alias} placeholders: where that table's company filter goes in owner runs

    def statement(self, explicit_filter: bool) -> sql.Composed:
        fields = {name for _, name, _, _ in string.Formatter().parse(self.query.as_string()) if name}
        pieces = {field: company_filter(field, explicit_filter) for field in fields - {"name"}}
        return self.query.format(**pieces, **({"name": NAME} if "name" in fields else {}))


def company_filter(alias: str, explicit: bool) -> sql.Composable:
    """` AND <alias>.company_id = %(company)s` for the owner's runs; nothing under RLS."""
    if not explicit:
        return sql.SQL("")
    return sql.SQL(" AND {} = %(company)s").format(sql.Identifier(alias, "company_id"))


#: The expression customers_name_trgm_idx is built on (sql/schema/customers.yaml), as the app writes it.
NAME = sql.SQL(
    "(coalesce(c.first_name, '') || ' ' || coalesce(c.last_name, '') || ' ' || coalesce(c.company_name, ''))"
)

CLASSES = (
    QueryClass(
        "fk_joins",
        "Foreign-key joins: a customer's jobs with property, invoices and payments",
        500,
        (25, 50),
        sql.SQL(
            "SELECT j.id, j.job_number, j.status, j.scheduled_start, p.address_line1, i.invoice_number, "
            "i.total_amount, i.balance_amount, pay.amount, pay.received_at "
            "FROM jobs j JOIN properties p ON p.id = j.property_id{p} "
            "LEFT JOIN invoices i ON i.job_id = j.id{i} "
            "LEFT JOIN payments pay ON pay.invoice_id = i.id{pay} "
            "WHERE j.customer_id = %(customer)s{j} ORDER BY j.scheduled_start DESC NULLS LAST"
        ),
    ),
    QueryClass(
        "company_filter",
        "Company filtering: the dispatch board, open jobs of the next 7 days",
        200,
        (10, 20),
        sql.SQL(
            "SELECT j.id, j.job_number, j.title, j.status, j.scheduled_start, j.assigned_to FROM jobs j "
            "WHERE j.status IN ('scheduled', 'in_progress') AND j.scheduled_start >= %(day)s "
            "AND j.scheduled_start < %(day)s + interval '7 days'{j} ORDER BY j.scheduled_start"
        ),
    ),
    QueryClass(
        "customer_search",
        "Customer search: the search box, by e-mail or phone",
        800,
        (50, 100),
        sql.SQL(
            "SELECT c.id, c.display_name, c.email, c.phone FROM customers c "
            "WHERE (lower(c.email) = lower(%(email)s) OR c.phone = %(phone)s){c}"
        ),
    ),
    QueryClass(
        "dashboard",
        "Dashboard: today's jobs, this week's visits, open balance, collected this month",
        2000,
        (100, 200),
        sql.SQL(
            "SELECT (SELECT count(*) FROM jobs j WHERE j.status IN ('scheduled', 'in_progress') "
            "AND j.scheduled_start >= %(day)s AND j.scheduled_start < %(day)s + interval '1 day'{j}) AS jobs_today, "
            "(SELECT count(*) FROM schedules s WHERE s.start_time >= %(day)s "
            "AND s.start_time < %(day)s + interval '7 days'{s}) AS visits_this_week, "
            "(SELECT coalesce(sum(i.balance_amount), 0) FROM invoices i "
            "WHERE i.status IN ('sent', 'viewed', 'partially_paid', 'overdue'){i}) AS open_balance, "
            "(SELECT coalesce(sum(pay.amount), 0) FROM payments pay WHERE pay.status = 'completed' "
            "AND pay.received_at >= date_trunc('month', %(day)s){pay}) AS collected_this_month"
        ),
    ),
    QueryClass(
        "time_series",
        "Time series: one month of a company's messages per day and type",
        1500,
        (150, 300),
        sql.SQL(
            "SELECT date_trunc('day', c.created_at) AS day, c.type, count(*) FROM communications c "
            "WHERE c.created_at >= %(month)s AND c.created_at < %(month)s + interval '1 month'{c} "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ),
    ),
    QueryClass(
        "fuzzy_search",
        "Full-text search: fuzzy (trigram) customer name search, best 20",
        3000,
        (200, 400),
        sql.SQL(
            "SELECT c.id, c.display_name, extensions.similarity({name}, %(term)s) AS score "
            "FROM customers c WHERE {name} OPERATOR(extensions.%%) %(term)s{c} "
            "ORDER BY score DESC LIMIT 20"
        ),
    ),
)


# --- parameters ---------------------------------------------------------------------------------------


def sample_params(conn: psycopg.Connection[Any], company: str, now: datetime, count: int = 40) -> list[Params]:
    """Parameter sets of one company, drawn the same way for every run (seeded): a customer with jobs,
    an e-mail and a phone of customers, a day (today), one of the last 24 months, a misspelt name."""
    customers = conn.execute(
        "SELECT c.id, c.email, c.phone, c.first_name, c.last_name FROM public.customers c "
        "WHERE c.company_id = %s AND EXISTS (SELECT FROM public.jobs j WHERE j.customer_id = c.id "
        "AND j.company_id = c.company_id) ORDER BY md5(c.id::text) LIMIT %s",
        (company, count),
    ).fetchall()
    if not customers:
        raise RuntimeError(f"company {company} has no customer with jobs: load the dataset first")
    rng = random.Random(11)
    day = now.replace(hour=0, minute=0, second=0)
    months = [(day.replace(day=1) - timedelta(days=31 * k)).replace(day=1) for k in range(1, 24)]
    params = []
    for i in range(count):
        customer, email, _, first, last = customers[i % len(customers)]
        other = customers[(i * 7 + 3) % len(customers)]
        term = f"{first} {last}".lower()
        cut = rng.randrange(1, len(term) - 1)
        params.append(
            {
                "company": company,
                "customer": customer,
                "email": email.upper() if i % 2 else email,
                "phone": other[2],
                "day": day,
                "month": rng.choice(months),
                "term": term[:cut] + term[cut + 1 :],
            }
        )
    return params


# --- running ------------------------------------------------------------------------------------------


@dataclass
class Timing:
    samples_ms: list[float]
    rows: int

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.samples_ms)
        p95 = statistics.quantiles(ordered, n=20, method="inclusive")[-1] if len(ordered) > 1 else ordered[0]
        return {
            "runs": len(ordered),
            "median_ms": round(statistics.median(ordered), 3),
            "p95_ms": round(p95, 3),
            "min_ms": round(ordered[0], 3),
            "max_ms": round(ordered[-1], 3),
            "rows_first_run": self.rows,
        }


Session = Callable[[psycopg.Connection[Any], Params], Any]


@contextmanager
def as_authenticated(conn: psycopg.Connection[Any], params: Params) -> Iterator[None]:
    """The application's transaction: claims for this transaction only, then the `authenticated` role."""
    with conn.transaction(force_rollback=True):
        claims = json.dumps({"company_id": str(params["company"])})
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
        conn.execute("SET LOCAL ROLE authenticated")
        yield


@contextmanager
def as_owner(conn: psycopg.Connection[Any], params: Params) -> Iterator[None]:
    with conn.transaction(force_rollback=True):
        yield


def time_class(
    conn: psycopg.Connection[Any],
    query: QueryClass,
    rls: bool,
    params: list[Params],
    runs: int,
    budget_s: float,
    plans: Path,
    mode: str,
) -> dict[str, Any]:
    """Warm up, time up to `runs` runs (at least 5, fewer when the budget in seconds is spent), save the plan."""
    statement = query.statement(explicit_filter=not rls)
    session = as_authenticated if rls else as_owner
    samples: list[float] = []
    rows = 0
    started = time.perf_counter()
    for i in range(WARMUP + runs):
        values = params[i % len(params)]
        with session(conn, values):
            t0 = time.perf_counter()
            result = conn.execute(statement, values).fetchall()
            elapsed = (time.perf_counter() - t0) * 1000
        if i == WARMUP:
            rows = len(result)
        if i >= WARMUP:
            samples.append(elapsed)
            if len(samples) >= 5 and time.perf_counter() - started > budget_s:
                break
    with session(conn, params[0]):
        explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement
        plan = "\n".join(str(line) for (line,) in conn.execute(explain, params[0]).fetchall())
    plans.mkdir(parents=True, exist_ok=True)
    (plans / f"{query.key}-{mode}.txt").write_text(f"-- {query.title} ({mode})\n{plan}\n")
    return {**Timing(samples, rows).summary(), "sql": statement.as_string(conn)}


def run_mode(
    conn: psycopg.Connection[Any],
    mode: str,
    params: list[Params],
    plans: Path,
    runs: int = 30,
    budget_s: float = 20.0,
) -> dict[str, Any]:
    """Every class in one mode; prints a line per class."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    results = {}
    for query in CLASSES:
        results[query.key] = time_class(conn, query, mode == "after", params, runs, budget_s, plans, mode)
        figures = results[query.key]
        print(
            f"  {mode:<12} {query.key:<16} median {figures['median_ms']:>9.2f} ms  p95 {figures['p95_ms']:>9.2f} ms"
            f"  ({figures['runs']} runs, {figures['rows_first_run']} rows)",
            flush=True,
        )
    return results


def compare(before: dict[str, Any], after: dict[str, Any], owner: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class: before/after ratios of median and p95, and the RLS overhead (after vs after_owner)."""
    rows = []
    for query in CLASSES:
        b, a, o = before[query.key], after[query.key], owner[query.key]
        rows.append(
            {
                "key": query.key,
                "title": query.title,
                "review_before_ms": query.review_before_ms,
                "review_after_ms": list(query.review_after_ms),
                "before_median_ms": b["median_ms"],
                "before_p95_ms": b["p95_ms"],
                "after_median_ms": a["median_ms"],
                "after_p95_ms": a["p95_ms"],
                "owner_median_ms": o["median_ms"],
                "owner_p95_ms": o["p95_ms"],
                "speedup_median": round(b["median_ms"] / a["median_ms"], 2) if a["median_ms"] else None,
                "speedup_p95": round(b["p95_ms"] / a["p95_ms"], 2) if a["p95_ms"] else None,
                "rls_overhead_pct": round((a["median_ms"] / o["median_ms"] - 1) * 100, 1) if o["median_ms"] else None,
            }
        )
    return rows
