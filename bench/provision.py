"""Provisioning benchmark: a full `pulumi up` from nothing, a no-change `preview` and a no-change `up`,
against the floor of `psql -f` applying the same DDL. The preview and the up read every live object first
(Pulumi.yaml `refresh: always`); the no-change preview of the whole stack is meant to stay under 15 s.

The floor: the provisioned database's schema is dumped (pg_dump --schema-only, less pg_cron, which can
live in one database only) and applied with `psql -f` into an empty database of the same server, timed.
Prints the resource count and the figures (and their ratios to the floor), and writes them to
bench/results/provisioning.json. A benchmark, not a test: it asserts nothing about time.

    source scripts/pulumi-env.sh && python -m bench.provision [--replicas N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from psycopg import sql

from components.connection import ConnectionSpec
from ops.stack import read_connection
from testbed.stacks import throwaway_stack
from testbed.support import copy_project

RESULTS = Path(__file__).resolve().parent / "results"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
FLOOR_DATABASE = "thorbis_psql_floor"
CRON = re.compile(r"\b(pg_)?cron\b")
PREVIEW_TARGET_SECONDS = 15.0
T = TypeVar("T")


def timed(step: str, action: Callable[[], T], figures: dict[str, float]) -> T:
    started = time.perf_counter()
    result = action()
    figures[step] = round(time.perf_counter() - started, 2)
    print(f"{step:<24} {figures[step]:>8.2f} s", flush=True)
    return result


def libpq_env(connection: ConnectionSpec) -> dict[str, str]:
    """pg_dump's, pg_restore's and psql's environment: the admin connection to the primary."""
    primary = connection.primary
    return {
        **os.environ,
        "PGHOST": primary.host,
        "PGPORT": str(primary.port),
        "PGUSER": connection.admin_user,
        "PGPASSWORD": connection.admin_password,
    }


def views_reading_cron(connection: ConnectionSpec) -> set[str]:
    """Names of the views outside `cron` whose query reads one of pg_cron's tables."""
    with psycopg.connect(**connection.conninfo()) as conn:
        rows = conn.execute(
            "SELECT DISTINCT v.relname FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
            "JOIN pg_class v ON v.oid = r.ev_class JOIN pg_class t ON t.oid = d.refobjid "
            "WHERE t.relnamespace = 'cron'::regnamespace AND v.relnamespace <> 'cron'::regnamespace"
        ).fetchall()
    return {name for (name,) in rows}


def psql_floor(connection: ConnectionSpec, work: Path) -> dict[str, Any]:
    """Dump the schema of the provisioned database, then time `psql -f` of it into an empty database."""
    env = libpq_env(connection)
    database = connection.database
    archive, listing, script = work / "schema.dump", work / "schema.list", work / "schema.sql"
    subprocess.run([PG_BIN / "pg_dump", "-Fc", "--schema-only", "-f", archive, database], env=env, check=True)
    entries = subprocess.run(
        [PG_BIN / "pg_restore", "-l", archive], env=env, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    # pg_cron lives in one database only: leave out the extension, what names its `cron` schema, and the
    # views that read its tables
    cron_readers = views_reading_cron(connection)
    kept = [
        entry
        for entry in entries
        if not CRON.search(entry) and not any(f" {view} " in f"{entry} " for view in cron_readers)
    ]
    listing.write_text("\n".join(kept) + "\n")
    subprocess.run([PG_BIN / "pg_restore", "-L", listing, "-f", script, archive], env=env, check=True)
    with psycopg.connect(**connection.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(FLOOR_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(FLOOR_DATABASE)))
    try:
        started = time.perf_counter()
        applied = subprocess.run(
            [PG_BIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", FLOOR_DATABASE, "-f", script],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if applied.returncode != 0:
            raise RuntimeError(f"psql -f of the dumped schema failed: {applied.stderr.strip()[-800:]}")
        seconds = round(time.perf_counter() - started, 2)
    finally:
        with psycopg.connect(**connection.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(FLOOR_DATABASE)))
    statements = sum(1 for entry in kept if entry and not entry.startswith(";"))
    print(f"{'psql -f floor':<24} {seconds:>8.2f} s  ({statements} dump entries)", flush=True)
    return {"seconds": seconds, "dump_entries": statements, "script_bytes": script.stat().st_size}


def measure(replicas: int = 0) -> dict[str, Any]:
    """Up from nothing, no-change preview and up, the psql floor, refresh, destroy, on a throwaway stack."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backend = Path(tmp) / "backend"
        backend.mkdir()
        project = copy_project(Path(tmp) / "project")
        with throwaway_stack(backend, "bench", replicas=replicas, work_dir=project) as live:
            stack = live.stack
            created = timed("up from nothing", stack.up, figures)
            timed("no-change preview", lambda: stack.preview(expect_no_changes=True), figures)
            timed("no-change up", stack.up, figures)
            with tempfile.TemporaryDirectory(prefix="thorbis-floor-") as work:
                try:
                    floor = psql_floor(read_connection(stack), Path(work))
                except (RuntimeError, subprocess.CalledProcessError) as error:  # reported, the run goes on
                    print(f"psql floor failed: {error}", flush=True)
                    floor = {"seconds": None, "error": str(error)}
            timed("refresh", stack.refresh, figures)
            timed("destroy", stack.destroy, figures)
    resources = cast(dict[str, int], dict(created.summary.resource_changes or {})).get("create", 0)
    engine = subprocess.run(["pulumi", "version"], capture_output=True, text=True, check=True).stdout.strip()
    ratios = {
        step: round(figures[step] / floor["seconds"], 1)
        for step in ("up from nothing", "no-change preview", "no-change up")
        if floor["seconds"]
    }
    print(f"{'resources':<24} {resources:>8}")
    verdict = "within" if figures["no-change preview"] < PREVIEW_TARGET_SECONDS else "OVER"
    print(f"no-change preview (refreshes all {resources}): {verdict} the {PREVIEW_TARGET_SECONDS:.0f} s target")
    return {
        "resources": resources,
        "replicas": replicas,
        "pulumi": engine,
        "seconds": figures,
        "psql_floor": floor,
        "ratio_to_floor": ratios,
        "preview_target_seconds": PREVIEW_TARGET_SECONDS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=0)
    args = parser.parse_args()
    report = measure(args.replicas)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "provisioning.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
