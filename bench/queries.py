"""The review's six query classes and ours, as an application sends them, timed, with their plans.

Each class is one concrete query of the product: the review's (a customer's job history, the dispatch
board, the customer search box, the dashboard, a month of messages, fuzzy name search) and ours (fuzzy
price book search, a technician's job list, the overdue invoices list). It is run three ways:

- `before`: the review's before database (no RLS exists there), as the owner (postgres) with an explicit
  `company_id = ...` filter on every table, as the old application did;
- `after`: after `pulumi up`, as the application: `authenticator`, claims set with
  set_config('request.jwt.claims', ..., true), SET LOCAL ROLE authenticated, no explicit company filter
  (row level security supplies it); a search whose match no index serves under RLS (lower(), pg_trgm's %)
  calls its tenant-scoped search function (sql/search.yaml), as PostgREST calls RPC;
- `after_owner`: the same after database as the owner (postgres, not subject to RLS) with the explicit
  filter: the difference to `after` is the cost of RLS.

Only the query's own statement is timed (client-side: execute and fetch), after two warm-up runs; the
transaction set-up of `after` (set_config, SET LOCAL ROLE) is not. Plans are EXPLAIN (ANALYZE, BUFFERS),
saved as text, and read (as JSON) for the rows the scans read through their index conditions and the rows
a filter threw away after reading them: a scan that filters a company's rows is a per-tenant scan.
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

from components.database.declared.model import load_schema
from components.database.declared.search import explain_matcher, load_searches

Params = dict[str, Any]
SEARCHES = load_searches(load_schema())
MODES = ("before", "after", "after_owner")
WARMUP = 2
#: Scan nodes of a plan: what reads a table (or an index of it).
SCANS = frozenset({"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan"})
EXPLAINS = ("ANALYZE, BUFFERS", "ANALYZE, FORMAT JSON")  # for people, for scan_figures


@dataclass(frozen=True)
class QueryClass:
    """A query class: its row of the review's table (None for ours) and the query an application sends."""

    key: str
    title: str
    review_before_ms: float | None
    review_after_ms: tuple[float, float] | None
    # {alias}: that table's company filter in owner runs; {name}: NAME; {columns}; {live}: `live_only`
    query: sql.SQL
    search: str | None = None  # the search (sql/search.yaml) the application calls under RLS instead
    columns: str = ""  # what the query and the search's caller select, from `c`
    live_only: str = ""  # what the search also asks, added to the after side's owner run

    def statement(self, mode: str) -> sql.Composed:
        if mode == "after" and self.search is not None:
            return self.search_call()
        fields = {name for _, name, _, _ in string.Formatter().parse(self.query.as_string()) if name}
        extras = {
            "name": NAME,
            "columns": sql.SQL(self.columns),
            "live": sql.SQL(self.live_only if mode == "after_owner" else ""),
        }
        pieces = {field: company_filter(field, mode != "after") for field in fields - set(extras)}
        return self.query.format(**pieces, **{key: value for key, value in extras.items() if key in fields})

    def search_call(self) -> sql.Composed:
        """`SELECT <columns> FROM public.<search>(%(<argument>)s, ...) AS c`, as PostgREST calls RPC."""
        search = next(search for search in SEARCHES.searches if search.name == self.search)
        arguments = sql.SQL(", ").join(sql.Placeholder(argument.name) for argument in search.arguments)
        return sql.SQL("SELECT {} FROM {}({}) AS c").format(
            sql.SQL(self.columns), sql.Identifier(SEARCHES.schema_name, search.name), arguments
        )


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
        "Customer search: the search box, by e-mail (any case) or phone",
        800,
        (50, 100),
        sql.SQL(
            "SELECT {columns} FROM customers c "
            "WHERE (lower(c.email) = lower(%(email)s) OR c.phone = %(phone)s){c}{live}"
        ),
        search="search_customers",
        columns="c.id, c.display_name, c.email, c.phone",
        live_only=" AND c.deleted_at IS NULL",
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
            "SELECT {columns} FROM customers c WHERE {name} OPERATOR(extensions.%%) %(term)s{c}{live} "
            "ORDER BY extensions.similarity({name}, %(term)s) DESC, c.id LIMIT 20"
        ),
        search="search_customers_by_name",
        columns="c.id, c.display_name",
        live_only=" AND c.deleted_at IS NULL",
    ),
    QueryClass(
        "price_book_search",
        "Fuzzy (trigram) price book search by item name, best 20",
        None,
        None,
        sql.SQL(
            "SELECT {columns} FROM price_book_items c WHERE c.name OPERATOR(extensions.%%) %(item_name)s{c} "
            "ORDER BY extensions.similarity(c.name, %(item_name)s) DESC, c.id LIMIT 20"
        ),
        search="search_price_book_items",
        columns="c.id, c.name, c.unit_price",
    ),
    QueryClass(
        "job_list",
        "List screen: a technician's completed jobs of the last 90 days, newest first, 50 a page",
        None,
        None,
        sql.SQL(
            "SELECT j.id, j.job_number, j.title, j.status, j.scheduled_start, j.customer_id FROM jobs j "
            "WHERE j.assigned_to = %(technician)s AND j.status = ANY (%(done)s) "
            "AND j.scheduled_start >= %(day)s - interval '90 days' AND j.scheduled_start < %(day)s{j} "
            "ORDER BY j.scheduled_start DESC LIMIT 50"
        ),
    ),
    QueryClass(
        "invoice_list",
        "List screen: overdue invoices due in the last year, oldest first, 50 a page",
        None,
        None,
        sql.SQL(
            "SELECT i.id, i.invoice_number, i.status, i.due_date, i.balance_amount, i.customer_id FROM invoices i "
            "WHERE i.status = 'overdue' AND i.due_date >= %(day)s::date - 365 AND i.due_date < %(day)s::date{i} "
            "ORDER BY i.due_date LIMIT 50"
        ),
    ),
)


# --- parameters ---------------------------------------------------------------------------------------


def sample_params(conn: psycopg.Connection[Any], company: str, now: datetime, count: int = 40) -> list[Params]:
    """Parameter sets of one company, drawn the same way for every run (seeded): a customer with jobs,
    an e-mail and a phone of customers, a day (today), one of the last 24 months, a misspelt name, a
    technician with jobs, a misspelt item of the price book."""
    customers = conn.execute(
        "SELECT c.id, c.email, c.phone, c.first_name, c.last_name FROM public.customers c "
        "WHERE c.company_id = %s AND EXISTS (SELECT FROM public.jobs j WHERE j.customer_id = c.id "
        "AND j.company_id = c.company_id) ORDER BY md5(c.id::text) LIMIT %s",
        (company, count),
    ).fetchall()
    technicians = [
        technician
        for (technician,) in conn.execute(
            "SELECT DISTINCT j.assigned_to FROM public.jobs j WHERE j.company_id = %s AND j.assigned_to IS NOT NULL "
            "ORDER BY 1",
            (company,),
        )
    ]
    items = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM public.price_book_items WHERE company_id = %s ORDER BY md5(id::text) LIMIT %s",
            (company, count),
        )
    ]
    if not customers or not technicians or not items:
        raise RuntimeError(f"company {company} has no customer with jobs or no price book: load the dataset first")
    rng = random.Random(11)
    day = now.replace(hour=0, minute=0, second=0)
    months = [(day.replace(day=1) - timedelta(days=31 * k)).replace(day=1) for k in range(1, 24)]
    params = []
    for i in range(count):
        customer, email, _, first, last = customers[i % len(customers)]
        other = customers[(i * 7 + 3) % len(customers)]
        term = misspelt(f"{first} {last}".lower(), rng)
        params.append(
            {
                "company": company,
                "customer": customer,
                "email": email.upper() if i % 2 else email,
                "phone": other[2],
                "day": day,
                "month": rng.choice(months),
                "term": term,
                "item_name": misspelt(items[i % len(items)], rng),
                "technician": rng.choice(technicians),
                "done": ["completed", "invoiced"],
            }
        )
    return params


def misspelt(text: str, rng: random.Random) -> str:
    """The text with one letter left out, as someone typing fast would."""
    cut = rng.randrange(1, len(text) - 1)
    return text[:cut] + text[cut + 1 :]


# --- plans --------------------------------------------------------------------------------------------


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def scan_figures(*plans: dict[str, Any]) -> dict[str, Any]:
    """From an EXPLAIN (ANALYZE, FORMAT JSON) plan: the rows the scans kept, the rows a scan's filter threw
    away after reading them (its company's other rows, when a condition could not be an index condition),
    and the relations read whole. `index_conditions` holds when no scan threw away more than it kept."""
    kept = removed = 0
    whole: list[str] = []
    for node in (node for plan in plans for node in plan_nodes(plan["Plan"])):
        if node["Node Type"] not in SCANS:
            continue
        loops = node.get("Actual Loops", 1)
        kept += node.get("Actual Rows", 0) * loops
        removed += node.get("Rows Removed by Filter", 0) * loops
        if node["Node Type"] == "Seq Scan":
            whole.append(node.get("Relation Name", "?"))
    return {
        "rows_kept": kept,
        "rows_filtered": removed,
        "seq_scans": sorted(set(whole)),
        "index_conditions": not whole and removed <= kept,
    }


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


def claims(params: Params) -> str:
    return json.dumps({"company_id": str(params["company"])})


@contextmanager
def as_authenticated(conn: psycopg.Connection[Any], params: Params) -> Iterator[None]:
    """The application's transaction: claims for this transaction only, then the `authenticated` role."""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims(params),))
        conn.execute("SET LOCAL ROLE authenticated")
        yield


@contextmanager
def as_owner(conn: psycopg.Connection[Any], params: Params) -> Iterator[None]:
    with conn.transaction(force_rollback=True):
        yield


def explain(
    conn: psycopg.Connection[Any], session: Session, statement: sql.Composed, params: Params
) -> tuple[str, Any]:
    """The plan as text (for people) and as JSON (for scan_figures), each from its own run."""
    outputs = []
    for options in EXPLAINS:
        with session(conn, params):
            outputs.append(
                conn.execute(sql.SQL("EXPLAIN ({}) {}").format(sql.SQL(options), statement), params).fetchall()
            )
    return "\n".join(str(line) for (line,) in outputs[0]), outputs[1][0][0][0]


def time_class(
    conn: psycopg.Connection[Any],
    query: QueryClass,
    mode: str,
    params: list[Params],
    runs: int,
    budget_s: float,
    plans: Path,
    admin: psycopg.Connection[Any] | None = None,
) -> dict[str, Any]:
    """Warm up, time up to `runs` runs (at least 5, fewer when the budget in seconds is spent), save the plan
    (and the plan of the search the application calls, which runs inside it: `admin` EXPLAINs it)."""
    statement = query.statement(mode)
    session = as_authenticated if mode == "after" else as_owner
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
    text, plan = explain(conn, session, statement, params[0])
    plans.mkdir(parents=True, exist_ok=True)
    (plans / f"{query.key}-{mode}.txt").write_text(f"-- {query.title} ({mode})\n{text}\n")
    inner = []
    if mode == "after" and query.search is not None and admin is not None:
        search = next(search for search in SEARCHES.searches if search.name == query.search)
        matcher = [explain_matcher(admin, SEARCHES, search, claims(params[0]), params[0], o) for o in EXPLAINS]
        lines = "\n".join(str(line) for (line,) in matcher[0])
        (plans / f"{query.key}-{mode}-matcher.txt").write_text(
            f"-- {query.title}: {SEARCHES.matcher_schema}.{search.matcher_name}, as it runs inside {search.name}\n"
            f"{search.matcher_query().as_string(conn)}\n{lines}\n"
        )
        inner = [matcher[1][0][0][0]]
    figures = scan_figures(plan, *inner)
    return {**Timing(samples, rows).summary(), **figures, "sql": statement.as_string(conn)}


def run_mode(
    conn: psycopg.Connection[Any],
    mode: str,
    params: list[Params],
    plans: Path,
    runs: int = 30,
    budget_s: float = 20.0,
    admin: psycopg.Connection[Any] | None = None,
) -> dict[str, Any]:
    """Every class in one mode; prints a line per class."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    results = {}
    for query in CLASSES:
        results[query.key] = time_class(conn, query, mode, params, runs, budget_s, plans, admin)
        figures = results[query.key]
        print(
            f"  {mode:<12} {query.key:<16} median {figures['median_ms']:>9.2f} ms  p95 {figures['p95_ms']:>9.2f} ms"
            f"  ({figures['runs']} runs, {figures['rows_first_run']} rows; scans kept {figures['rows_kept']}, "
            f"filtered out {figures['rows_filtered']})",
            flush=True,
        )
    return results


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


def compare(before: dict[str, Any], after: dict[str, Any], owner: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class: before/after ratios of median and p95, the RLS overhead (after vs after_owner), and what
    the after side's plan read."""
    rows = []
    for query in CLASSES:
        b, a, o = before[query.key], after[query.key], owner[query.key]
        overhead = ratio(a["median_ms"], o["median_ms"])
        rows.append(
            {
                "key": query.key,
                "title": query.title,
                "review_before_ms": query.review_before_ms,
                "review_after_ms": list(query.review_after_ms) if query.review_after_ms else None,
                "before_median_ms": b["median_ms"],
                "before_p95_ms": b["p95_ms"],
                "after_median_ms": a["median_ms"],
                "after_p95_ms": a["p95_ms"],
                "owner_median_ms": o["median_ms"],
                "owner_p95_ms": o["p95_ms"],
                "speedup_median": ratio(b["median_ms"], a["median_ms"]),
                "speedup_p95": ratio(b["p95_ms"], a["p95_ms"]),
                "rls_overhead_pct": round((overhead - 1) * 100, 1) if overhead is not None else None,
                "rls_overhead_ms": round(a["median_ms"] - o["median_ms"], 3),
                "rows_kept": a.get("rows_kept"),
                "rows_filtered": a.get("rows_filtered"),
                "index_conditions": a.get("index_conditions"),
            }
        )
    return rows
