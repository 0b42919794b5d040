"""Every benchmark end to end on throwaway stacks, then the report.

1. Provisioning (bench/provision.py): its own stack, from nothing, against the `psql -f` floor.
2. Queries and connections: a stack whose program has an empty sql/schema (servers, roles, extensions
   only); the review's before database is built on it (testbed/before_state.py) and filled
   (bench/generate.py); the six query classes are timed; the full schema is put back and `pulumi up`
   adopts the populated database; the classes are timed again (RLS and owner), then pgbench runs.
Results: bench/results/results.json, REPORT.md, charts, plans/. Each stack is destroyed at the end.

    source scripts/pulumi-env.sh && python -m bench.run [--scale 2] [--skip-provisioning]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto

from bench import connections, generate, provision, queries, report
from components.connection import ConnectionSpec
from ops.stack import read_connection
from testbed.before_state import build_before_state
from testbed.stacks import LiveStack, throwaway_stack
from testbed.support import PROJECT_ROOT, copy_project_without_tables

RESULTS = Path(__file__).resolve().parent / "results"
POOL_SIZE = 10  # thorbis:pgbouncer.defaultPoolSize as testbed.stacks.configure sets it
#: The applications' login role (sql/access.yaml) and the config key of its password.
APPLICATION_LOGIN, APPLICATION_PASSWORD_KEY = "authenticator", "authenticatorPassword"


@dataclass
class DataStack:
    live: LiveStack
    project: Path

    @property
    def stack(self) -> auto.Stack:
        return self.live.stack

    @cached_property
    def connection(self) -> ConnectionSpec:
        """The stack's ConnectionSpec, from its outputs (the stack must be up)."""
        return read_connection(self.stack)

    @property
    def application_password(self) -> str:
        return self.live.passwords[APPLICATION_PASSWORD_KEY]

    def connect(self, application: bool = False) -> psycopg.Connection[Any]:
        """The admin connection, or the applications' login (RLS applies once it sets its claims)."""
        connection = self.connection
        conninfo = (
            connection.conninfo(user=APPLICATION_LOGIN, password=self.application_password)
            if application
            else connection.conninfo()
        )
        conninfo["connect_timeout"] = 30
        return psycopg.connect(**conninfo, autocommit=True, prepare_threshold=None)


def restore_schema(project: Path) -> None:
    shutil.rmtree(project / "sql")
    shutil.copytree(PROJECT_ROOT / "sql", project / "sql")


@contextmanager
def data_stack() -> Iterator[DataStack]:
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project_without_tables(Path(tmp) / "project")
        backend = Path(tmp) / "backend"
        backend.mkdir()
        with throwaway_stack(backend, "bench-data", work_dir=project) as live:
            yield DataStack(live, project)


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def vacuum_analyze(conn: psycopg.Connection[Any]) -> None:
    """Fresh statistics and visibility maps on both sides, as a database that has been running would have."""
    conn.execute("VACUUM (ANALYZE)")


def query_and_connection_benchmarks(scale: float, runs: int, budget: float, seconds: int) -> dict[str, Any]:
    plans = RESULTS / "plans"
    shutil.rmtree(plans, ignore_errors=True)
    out: dict[str, Any] = {}
    with data_stack() as live:
        started = step("up: servers, roles, extensions (empty schema)")
        try:
            live.stack.up()
        except auto.CommandError as error:  # e.g. the DefaultPrivileges race on pg_default_acl: retried once
            print(f"  first up failed, retrying once: {str(error).splitlines()[-1][:200]}", flush=True)
            out["empty_up_retried"] = True
            live.stack.up()
        out["empty_up_seconds"] = round(time.perf_counter() - started, 2)
        with live.connect() as admin:
            step("before state and dataset")
            build_before_state(admin)
            dataset = generate.load(admin, scale, trust_foreign_keys=True)
            print(f"  {dataset['total_rows']:,} rows in {dataset['load_seconds']} s", flush=True)
            vacuum_analyze(admin)
            company = generate.largest_company(admin)
            params = queries.sample_params(admin, company, datetime.fromisoformat(dataset["now"]))
            step("query classes, before (owner, explicit company filter)")
            before = queries.run_mode(admin, "before", params, plans, runs, budget)
        out["dataset"] = dataset
        restore_schema(live.project)
        started = step("up: the full schema adopts the populated database")
        adopted = live.stack.up()
        adoption = round(time.perf_counter() - started, 2)
        print(f"  {adoption} s, {adopted.summary.resource_changes}", flush=True)
        with live.connect() as admin:
            vacuum_analyze(admin)
            step("query classes, after")
            with live.connect(application=True) as app:
                after = queries.run_mode(app, "after", params, plans, runs, budget)
            owner = queries.run_mode(admin, "after_owner", params, plans, runs, budget)
            settings = dict(
                admin.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('max_connections', 'superuser_reserved_connections')"
                ).fetchall()
            )
            in_use = admin.execute("SELECT count(*) FROM pg_stat_activity").fetchone()
        out["queries"] = {
            "company": company,
            "runs": runs,
            "adoption_seconds": adoption,
            "before": before,
            "after": after,
            "after_owner": owner,
            "comparison": queries.compare(before, after, owner),
        }
        step("connection scale (pgbench)")
        limit = connections.direct_capacity(
            int(settings["max_connections"]),
            int(settings["superuser_reserved_connections"]),
            int(in_use[0]) if in_use else 0,
        )
        runs_ = connections.run_all(
            connections.routes(live.connection, APPLICATION_LOGIN, live.application_password),
            company,
            dataset["largest_company_customers"],
            limit,
            seconds=seconds,
        )
        out["connections"] = {
            "max_connections": int(settings["max_connections"]),
            "pool_size": POOL_SIZE,
            "direct_limit": limit,
            "runs": runs_,
        }
        step("destroy")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=generate.DEFAULT_SCALE)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query class and mode")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per class and mode (at least 5 runs)")
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument("--skip-provisioning", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "host": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "notes": [
            "Before-side queries run as the owner with an explicit company filter: RLS does not exist before.",
            "The dataset is loaded with session_replication_role = replica (per-row FK triggers skipped); "
            "tests/integration/test_bench.py loads the same generator with every FK and CHECK enforced, and the "
            "adopting `up` validates every new CHECK on the loaded rows.",
        ],
    }
    started = time.perf_counter()
    if not args.skip_provisioning:
        step("provisioning")
        results["provisioning"] = provision.measure()
        (RESULTS / "provisioning.json").write_text(json.dumps(results["provisioning"], indent=2) + "\n")
    results.update(query_and_connection_benchmarks(args.scale, args.runs, args.budget, args.pgbench_seconds))
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nreport: {report.render(results, RESULTS)} ({results['total_seconds']} s in all)")


if __name__ == "__main__":
    main()
