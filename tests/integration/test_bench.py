"""The benchmark's dataset is valid and its report renders: bench/generate.py loads at a tiny scale, with
every constraint checked, into the full schema (made by the Table kind) and into the review's before
database; the six query classes run on both; the report is written from results of that shape."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from bench import connections, generate, queries, report
from components.database.declared.model import load_schema
from components.database.kinds.table import TableKind
from testbed.before_state import build_before_state
from tests.integration.databases import Database, database_server

DATABASE = "thorbis_bench"
BEFORE = "thorbis_bench_before"
PASSWORD = "bench-it-0123"
SCALE = 0.02


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    """A server with the full schema (every table, check and foreign key) and a before database beside it."""
    with database_server(DATABASE, PASSWORD) as db:
        db.execute("CREATE ROLE thorbis_owner NOLOGIN")
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BEFORE)))
        for name in (DATABASE, BEFORE):
            with db.connect(dbname=name) as conn:
                conn.execute("CREATE SCHEMA extensions")
                for extension in ("ltree", "pg_trgm"):
                    conn.execute(sql.SQL("CREATE EXTENSION {} SCHEMA extensions").format(sql.Identifier(extension)))
        kind = db.kind(TableKind)
        for table in load_schema().in_dependency_order():
            kind.create(table.table_spec("thorbis_owner"))
        yield db


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    found = {}
    for table in generate.TABLES:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
        found[table] = int(row[0]) if row else 0
    return found


def run_classes(conn: psycopg.Connection[Any], loaded: dict[str, Any], mode: str, plans: Path) -> dict[str, Any]:
    company = generate.largest_company(conn)
    params = queries.sample_params(conn, company, datetime.fromisoformat(loaded["now"]), count=3)
    return queries.run_mode(conn, mode, params, plans, runs=1, budget_s=0.1)


def test_the_dataset_loads_into_the_full_schema_with_every_constraint_checked(
    database: Database, tmp_path: Path
) -> None:
    with database.connect() as conn:
        loaded = generate.load(conn, SCALE)
        assert loaded["foreign_keys_checked_during_load"]
        assert counts(conn) == loaded["rows"]
        assert all(count > 0 for count in loaded["rows"].values())
        unvalidated = conn.execute("SELECT conname FROM pg_constraint WHERE NOT convalidated").fetchall()
        assert unvalidated == []
        sizes = generate.company_sizes(SCALE)
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[len(sizes) // 2], "sizes are skewed"
        customer = conn.execute(
            "SELECT count(*) FROM customers WHERE id = %s", (generate.customer_id(0, sizes[0] - 1),)
        ).fetchone()
        assert customer == (1,), "the pgbench script names customers by customer_id(0, n)"
        results = run_classes(conn, loaded, "after_owner", tmp_path / "plans")
    assert set(results) == {query.key for query in queries.CLASSES}
    assert len(list((tmp_path / "plans").glob("*-after_owner.txt"))) == len(queries.CLASSES)


def test_the_dataset_loads_into_the_before_database_and_the_queries_run_there(
    database: Database, tmp_path: Path
) -> None:
    with database.connect(dbname=BEFORE) as conn:
        build_before_state(conn)
        fixture_rows = counts(conn)  # testbed/before_rows.sql
        loaded = generate.load(conn, SCALE)
        assert counts(conn) == {table: fixture_rows[table] + loaded["rows"][table] for table in generate.TABLES}
        results = run_classes(conn, loaded, "before", tmp_path / "plans")
    assert all(result["runs"] == 1 for result in results.values())


def load_in_thread(conn: psycopg.Connection[Any], seconds: float = 120) -> BaseException | None:
    """generate.load at SCALE in a thread: what it raised (None if nothing); fails if it is still running."""
    raised: list[BaseException] = []

    def attempt() -> None:
        try:
            generate.load(conn, SCALE)
        except BaseException as error:
            raised.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the load is still running after {seconds} s: it hangs"
    return raised[0] if raised else None


def test_a_failed_copy_stops_the_load_with_its_error(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first COPY fails while the generator thread has batches ready: the load raises the COPY's error
    (before, it joined a producer blocked on its full queue and hung for ever)."""
    monkeypatch.setattr(generate, "BATCH_ROWS", 1)  # a batch per company: the queue of batches fills up
    with database.connect() as conn:
        conn.execute("ALTER TABLE public.companies ADD CONSTRAINT bench_refuses_rows CHECK (false) NOT VALID")
        try:
            raised = load_in_thread(conn)
        finally:
            conn.execute("ALTER TABLE public.companies DROP CONSTRAINT bench_refuses_rows")
    assert isinstance(raised, psycopg.errors.CheckViolation), raised


def test_a_failed_batch_stops_the_load_with_its_error(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generating a batch fails in the generator's thread: the load raises that error (before, the thread
    died, the load ended as if the dataset were complete and returned its partial counts)."""

    def broken(*args: object) -> None:
        raise RuntimeError("no customer today")

    monkeypatch.setattr(generate.Generator, "customer", broken)
    with database.connect() as conn:
        raised = load_in_thread(conn)
    assert isinstance(raised, RuntimeError) and str(raised) == "no customer today", raised


def test_the_report_renders_tables_and_charts(tmp_path: Path) -> None:
    timing = {
        "runs": 5, "median_ms": 2.0, "p95_ms": 3.0, "min_ms": 1.0, "max_ms": 4.0, "rows_first_run": 1,
        "rows_kept": 5, "rows_filtered": 0, "index_conditions": True,
    }  # fmt: skip
    slow = {**timing, "median_ms": 40.0, "p95_ms": 60.0}
    before = {query.key: slow for query in queries.CLASSES}
    after = {query.key: timing for query in queries.CLASSES}
    scanning = {**after, "job_list": {**timing, "p95_ms": 70.0, "rows_filtered": 900, "index_conditions": False}}
    curve = [
        {"scale": scale, "total_rows": rows, "largest_company_customers": rows // 10, "after": figures}
        for scale, rows, figures in ((0.5, 1000, after), (2.0, 4000, scanning))
    ]
    run = {
        "target": "pgbouncer", "clients": 1000, "seconds": 20, "rate_limit_tps": 1000, "exit_code": 0, "tps": 990.0,
        "transactions": 19800, "failed_transactions": 0, "aborted_clients": 0, "errors": 0, "first_errors": [],
        "initial_connection_ms": 900.0, "latency_ms": {"p50": 1.0, "p95": 4.0, "p99": 9.0, "mean": 1.5},
    }  # fmt: skip
    results = {
        "started": "2026-01-01T00:00:00+00:00",
        "dataset": {
            "scale": SCALE, "companies": 5, "largest_company_customers": 300, "median_company_customers": 60,
            "rows": dict.fromkeys(generate.TABLES, 10), "total_rows": 100, "load_seconds": 1.0,
        },
        "queries": {"runs": 5, "comparison": queries.compare(before, scanning, after), "adoption_seconds": 12.0},
        "curve": curve,
        "adoption_failures": ["error: index x: deadlock"],
        "connections": {"max_connections": 200, "pool_size": 10, "runs": [run, {**run, "target": "direct"}]},
        "provisioning": {
            "resources": 900, "replicas": 0, "pulumi": "v3.260.0", "psql_floor": {"seconds": 2.0},
            "seconds": {"up from nothing": 100.0, "no-change preview": 10.0, "no-change up": 20.0},
            "ratio_to_floor": {"up from nothing": 50.0, "no-change preview": 5.0, "no-change up": 10.0},
        },
        "notes": ["a note"],
    }  # fmt: skip
    written = report.render(json.loads(json.dumps(results)), tmp_path)
    text = written.read_text()
    assert "| fk joins | 500 → 25-50 ms | 40.00 / 60.00 | 2.00 / 3.00 | 20.0x | 0.0 % (+0.00 ms) | 5 / 0 |" in text
    assert "| fk joins | met | met (0.0 %) | met (20.0x) | met |" in text
    assert "| job list | **not met** | met (0.0 %) | n/a (20.0x) | **not met** |" in text
    assert "| Index conditions under RLS, every class | 8 of 9 classes | **not met** |" in text
    assert "| job list | 3.00 | 70.00 |" in text  # the curve: p95 at scale 0.5, then 2
    assert "took 12.0 s, in 2 runs (a failed run keeps what it finished; each failed with: `error: index x" in text
    assert "| Pooled simple read p95 < 20 ms (paced) | p95 4.00 ms | met |" in text
    charts = {"queries.png", "latency.png", "provisioning.png", "curve.png"}
    assert charts <= {path.name for path in tmp_path.glob("*.png")}
    assert connections.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
