"""Every benchmark end to end on throwaway stacks, then the report.

1. Provisioning (bench/provision.py): its own stack, from nothing, against the `psql -f` floor.
2. Queries and connections, per scale: a stack whose program has an empty sql/schema (servers, roles,
   extensions only); the review's before database is built on it (testbed/before_state.py) and filled
   (bench/generate.py); the query classes are timed; the full schema is put back and `pulumi up` adopts
   the populated database; the classes are timed again (RLS and owner). At the largest scale pgbench runs
   too, and its figures and plans are the report's; the smaller scales give the curve of the after side's
   p95 per class (does a class's cost grow with the tenant?).
The stacks run with the PostgreSQL settings of Pulumi.prod.yaml (thorbis:postgres.settings: the
planner's costs of SSD storage) and a lock timeout long enough for index builds on one populated table to
wait for each other. Results: bench/results/results.json, REPORT.md, charts, plans/. Each stack is
destroyed at the end.

    source scripts/pulumi-env.sh && python -m bench.run [--scale 0.5,2,8] [--skip-provisioning]
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
import yaml
from psycopg import sql

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
PROD_CONFIG = PROJECT_ROOT / "Pulumi.prod.yaml"
#: Building the indexes of a table of millions of rows takes minutes, and builds on one table wait for each
#: other (CREATE INDEX CONCURRENTLY takes a self-conflicting lock): far beyond the default 5 s x 8 attempts.
LOCK_TIMEOUT = "30min"
#: Concurrent CREATE INDEX CONCURRENTLY builds wait for each other's snapshots and, at millions of rows,
#: deadlock more often than the Index kind retries: a failed adopting `up` is run again (README, Benchmarks).
UP_ATTEMPTS = 4


def prod_postgres_settings() -> dict[str, str]:
    """thorbis:postgres.settings of the prod stack (planner costs and the like; not its memory sizes)."""
    config = yaml.safe_load(PROD_CONFIG.read_text())["config"]
    return {name: str(value) for name, value in config["thorbis:postgres"].get("settings", {}).items()}


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
        with throwaway_stack(backend, "bench-data", work_dir=project, before_destroy=drop_adopted_tables) as live:
            settings = {f"thorbis:postgres.settings.{name}": value for name, value in prod_postgres_settings().items()}
            values = {**settings, "thorbis:lockTimeout": LOCK_TIMEOUT}
            live.stack.set_all_config({key: auto.ConfigValue(value) for key, value in values.items()}, path=True)
            yield DataStack(live, project)


def drop_adopted_tables(stack: auto.Stack) -> None:
    """The before database's tables were adopted, and a destroy keeps adopted tables (and the extensions their
    columns use): the benchmark drops them, as their owner would, before its stack's destroy."""
    with psycopg.connect(**read_connection(stack).conninfo(), autocommit=True) as conn:
        names = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        for (name,) in names:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier("public", name)))


def up_until_done(stack: auto.Stack, attempts: int = UP_ATTEMPTS) -> tuple[auto.UpResult, float, list[str]]:
    """`pulumi up`, run again while it fails (at most `attempts` runs; a failed run keeps what it finished
    and the next does the rest): its result, the seconds of all runs, and why each failed run failed."""
    failures: list[str] = []
    started = time.perf_counter()
    while True:
        try:
            return stack.up(), round(time.perf_counter() - started, 2), failures
        except auto.CommandError as error:
            if len(failures) + 1 >= attempts:
                raise
            lines = [line.strip() for line in str(error).splitlines() if "error:" in line] or ["(no error line)"]
            failures.append(lines[0][:300])
            print(f"  up failed, running it again: {failures[-1]}", flush=True)


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def vacuum_analyze(conn: psycopg.Connection[Any]) -> None:
    """Fresh statistics and visibility maps on both sides, as a database that has been running would have."""
    conn.execute("VACUUM (ANALYZE)")


def query_and_connection_benchmarks(
    scale: float, runs: int, budget: float, seconds: int | None, plans: Path
) -> dict[str, Any]:
    """The query classes before and after at one scale; pgbench too unless `seconds` is None."""
    shutil.rmtree(plans, ignore_errors=True)
    out: dict[str, Any] = {}
    with data_stack() as live:
        step("up: servers, roles, extensions (empty schema)")
        _, out["empty_up_seconds"], out["empty_up_failures"] = up_until_done(live.stack)
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
        step("up: the full schema adopts the populated database")
        adopted, adoption, out["adoption_failures"] = up_until_done(live.stack)
        print(f"  {adoption} s, {adopted.summary.resource_changes}", flush=True)
        with live.connect() as admin:
            vacuum_analyze(admin)
            step("query classes, after")
            with live.connect(application=True) as app:
                after = queries.run_mode(app, "after", params, plans, runs, budget, admin=admin)
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
        if seconds is None:
            step("destroy")
            return out
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


def scales(text: str) -> list[float]:
    """`0.5,2,8` -> [0.5, 2.0, 8.0], ascending: the largest runs last and is the report's."""
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"--scale {text!r}: expected positive numbers separated by commas")
    return values


def curve_point(out: dict[str, Any]) -> dict[str, Any]:
    """One scale's dataset and the after side's figures per class."""
    dataset, after = out["dataset"], out["queries"]["after"]
    keep = ("median_ms", "p95_ms", "rows_kept", "rows_filtered")
    return {
        "scale": dataset["scale"],
        "total_rows": dataset["total_rows"],
        "largest_company_customers": dataset["largest_company_customers"],
        "after": {key: {name: figures[name] for name in keep} for key, figures in after.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scale", type=scales, default=[generate.DEFAULT_SCALE], help="one scale, or several for the curve: 0.5,2,8"
    )
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
    *smaller, largest = args.scale
    curve = []
    for scale in smaller:
        step(f"scale {scale} (for the curve)")
        with tempfile.TemporaryDirectory(prefix="thorbis-bench-plans-") as plans:
            curve.append(curve_point(query_and_connection_benchmarks(scale, args.runs, args.budget, None, Path(plans))))
    step(f"scale {largest}")
    results.update(
        query_and_connection_benchmarks(largest, args.runs, args.budget, args.pgbench_seconds, RESULTS / "plans")
    )
    results["curve"] = [*curve, curve_point(results)]
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nreport: {report.render(results, RESULTS)} ({results['total_seconds']} s in all)")


if __name__ == "__main__":
    main()
