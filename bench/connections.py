"""Connection scale: pgbench with 1,000 clients through PgBouncer (transaction pooling) against direct.

Every transaction is what an application sends for a simple read: its claims for this transaction only,
SET LOCAL ROLE authenticated, and one customer of one company read by primary key (RLS on). Latency
percentiles come from pgbench's per-transaction log (--log), errors from its summary and its stderr.
Direct connections are capped by the server's max_connections: 1,000 direct clients are tried and what
happens is reported, then the most direct clients the server accepts.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.connection import ConnectionSpec

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
SCRIPT = """\\set n random(0, {last})
BEGIN;
SELECT set_config('request.jwt.claims', '{{"company_id": "{company}"}}', true);
SET LOCAL ROLE authenticated;
SELECT id, display_name, email, phone FROM customers WHERE id = CAST(md5('customer:0:' || :n) AS uuid);
END;
"""
NOFILE = 8192  # 1,000 clients need more descriptors than the usual soft limit of 1,024


@dataclass(frozen=True)
class Route:
    """One way pgbench reaches the database, by name: libpq's keywords for PgBouncer or for the primary."""

    name: str
    conninfo: dict[str, Any] = field(repr=False)


def routes(connection: ConnectionSpec, user: str, password: str) -> tuple[Route, Route]:
    """Pooled (through PgBouncer) and direct (to the primary), both as `user`."""
    if connection.pooler is None:
        raise ValueError(f"the {connection.platform} platform has no PgBouncer to benchmark")
    return (
        Route("pgbouncer", connection.conninfo(connection.pooler, user=user, password=password)),
        Route("direct", connection.conninfo(user=user, password=password)),
    )


def raise_file_limit() -> None:
    """`ulimit -n` for pgbench: the soft limit up to NOFILE (or the hard limit, if lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def read_log(directory: Path) -> tuple[list[float], int]:
    """Latencies in ms of the logged transactions, and how many were logged as failed."""
    latencies: list[float] = []
    failed = 0
    for path in directory.glob("pgbench_log*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            if fields[2].isdigit():
                latencies.append(int(fields[2]) / 1000)
            else:  # "failed", "serialization" or "deadlock" in place of the time
                failed += 1
    latencies.sort()
    return latencies, failed


def summary_number(output: str, pattern: str) -> float | None:
    found = re.search(pattern, output)
    return float(found.group(1)) if found else None


def run_pgbench(
    route: Route, company: str, customers: int, clients: int, seconds: int, rate: int | None = None
) -> dict[str, Any]:
    """One pgbench run; its figures, or what went wrong, as a dict."""
    login = route.conninfo
    with tempfile.TemporaryDirectory(prefix="thorbis-pgbench-") as tmp:
        work = Path(tmp)
        script = work / "read_customer.sql"
        script.write_text(SCRIPT.format(last=customers - 1, company=company))
        command = [
            str(PGBENCH), "-n", "-M", "simple", "-h", login["host"], "-p", str(login["port"]), "-U", login["user"],
            "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(script), "--log",
            f"--log-prefix={work / 'pgbench_log'}", "--failures-detailed", login["dbname"],
        ]  # fmt: skip
        if rate:
            command[1:1] = ["-R", str(rate)]
        environment = {**os.environ, "PGPASSWORD": login["password"], "PGCONNECT_TIMEOUT": "30"}
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=environment,
            preexec_fn=raise_file_limit,
            timeout=seconds + 300,
            check=False,
        )
        latencies, failed_logged = read_log(work)
    output = done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "fatal" in line.lower()]
    return {
        "target": route.name,
        "clients": clients,
        "seconds": seconds,
        "rate_limit_tps": rate,
        "exit_code": done.returncode,
        "tps": summary_number(output, r"tps = ([0-9.]+)"),
        "transactions": len(latencies),
        "failed_transactions": max(
            int(summary_number(output, r"number of failed transactions: (\d+)") or 0), failed_logged
        ),
        "aborted_clients": sum("aborted" in line for line in errors),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "initial_connection_ms": summary_number(output, r"initial connection time = ([0-9.]+) ms"),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p95": round(percentile(latencies, 0.95), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
        },
    }


def print_run(run: dict[str, Any]) -> None:
    latency = run["latency_ms"]
    rate = f"-R {run['rate_limit_tps']}" if run["rate_limit_tps"] else "unpaced"
    print(
        f"  {run['target']:<9} {run['clients']:>5} clients {rate:<9} tps {run['tps'] or 0:>9.1f}  "
        f"p50 {latency['p50']:>8.2f}  p95 {latency['p95']:>8.2f}  p99 {latency['p99']:>8.2f} ms  "
        f"failed {run['failed_transactions']}  errors {run['errors']} (exit {run['exit_code']})",
        flush=True,
    )


def direct_capacity(max_connections: int, reserved: int, in_use: int, headroom: int = 10) -> int:
    """How many more ordinary clients the server admits now, less some headroom for the stack's own."""
    return max(1, max_connections - reserved - in_use - headroom)


def run_all(
    pooled_and_direct: tuple[Route, Route],
    company: str,
    customers: int,
    direct_limit: int,
    clients: int = 1000,
    seconds: int = 20,
    rate: int = 1000,
) -> list[dict[str, Any]]:
    """Pooled and direct, unpaced (the most each does) and paced at `rate` transactions per second in all
    (1 per client per second at 1,000 clients): the latency an application sees at that load."""
    runs = []
    pooled, direct = pooled_and_direct
    plan: list[tuple[Route, int, int | None, int]] = [
        (pooled, clients, None, seconds),
        (pooled, clients, rate, seconds),
        (direct, clients, None, max(5, seconds // 2)),
        (direct, direct_limit, None, seconds),
        (direct, direct_limit, rate, seconds),
    ]
    for route, count, paced, duration in plan:
        run = run_pgbench(route, company, customers, count, duration, paced)
        print_run(run)
        runs.append(run)
    return runs
