"""Queries at tenant scale under row level security, on the session's database stack.

The benchmark's skewed dataset (bench/generate.py, at a small scale) is loaded into the live database in
a transaction that is rolled back at the end, and analyzed. Every query class of the benchmark
(bench/queries.py) is then planned and run as the application sends it (claims, `authenticated`, no
company written; the searches through their functions): each reads its company's rows through index
conditions, never by reading them all and filtering (the cost of a scan grows with the company). At this
scale a whole small table is the cheapest read, so sequential scans are priced out: the question is
whether an index condition exists for the query under RLS, not which read is cheapest here. The same
holds for a search's matcher once its own indexes are the table's only ones: at this scale reading a
company's few dozen rows beats any index; at the benchmark's (bench/results/plans) the planner picks them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from bench import generate, queries
from components.database.declared.search import SearchData, explain_matcher
from testbed.stacks import LiveStack
from tests.e2e.plans import leave_only_indexes

pytestmark = pytest.mark.e2e
SCALE = 0.1  # 10 companies, the largest with about 900 customers; about 80,000 rows
Conn = psycopg.Connection[Any]
SEARCHES = queries.SEARCHES


@pytest.fixture(scope="module")
def dataset(database_stack: LiveStack) -> Iterator[tuple[Conn, queries.Params]]:
    """The admin connection, inside the transaction that holds the dataset, and parameters of its largest
    company (queries.sample_params)."""
    with (
        psycopg.connect(**database_stack.admin(), autocommit=True) as admin,  # type: ignore[arg-type]
        admin.transaction(force_rollback=True),
    ):
        loaded = generate.load(admin, SCALE)
        admin.execute("ANALYZE")
        admin.execute("SET LOCAL enable_seqscan = off")
        company = generate.largest_company(admin)
        params = queries.sample_params(admin, company, datetime.fromisoformat(loaded["now"]), count=1)
        yield admin, params[0]


def matcher_plan(admin: Conn, search: SearchData, params: queries.Params) -> dict[str, Any]:
    (plan,), *_ = explain_matcher(admin, SEARCHES, search, queries.claims(params), params, "ANALYZE, FORMAT JSON")
    return dict(plan[0])


@pytest.mark.parametrize("query", queries.CLASSES, ids=[query.key for query in queries.CLASSES])
def test_each_query_class_reads_its_company_through_index_conditions(
    query: queries.QueryClass, dataset: tuple[Conn, queries.Params]
) -> None:
    """The plan as the application: no scan throws away more rows than it keeps (a search's own query is
    the next test's)."""
    admin, params = dataset
    _, plan = queries.explain(admin, queries.as_authenticated, query.statement("after"), params)
    figures = queries.scan_figures(plan)
    assert figures["index_conditions"], figures


@pytest.mark.parametrize("search", SEARCHES.searches, ids=[search.name for search in SEARCHES.searches])
def test_each_search_reads_through_the_indexes_it_serves(
    search: SearchData, dataset: tuple[Conn, queries.Params]
) -> None:
    """The matcher, as it runs (its owner, planned with its values), reads through the indexes its search names, each
    with the company among its index conditions; and it finds rows (the benchmark's values are real)."""
    admin, params = dataset
    assert {argument.name for argument in search.arguments} <= set(params), "the benchmark has no values for it"
    with admin.transaction(force_rollback=True):
        leave_only_indexes(admin, search.table, search.serves)
        plan = matcher_plan(admin, search, params)
    scans = [node for node in queries.plan_nodes(plan["Plan"]) if "Index Name" in node]
    assert {node["Index Name"] for node in scans} >= set(search.serves), scans
    assert all("company_id = " in node.get("Index Cond", "") for node in scans), scans
    assert plan["Plan"]["Actual Rows"] > 0
