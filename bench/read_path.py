"""The application's data path, measured on one throwaway stack with two replicas (local platform).

1. Read throughput: pgbench through PgBouncer's write pool (the primary alone) and its read pool with one
   replica (the other stopped: the router moves the slots) and with two, for a point read and a scan of
   one company's customers. All servers share this machine's cores: see the report for what that means.
2. The cache: thorbis_client's `cached` under a read-heavy mix (Zipf-popular keys over the review's
   families, 5 % writes that invalidate): hit rate, database reads saved, latency of hits and misses,
   against the same reads without the cache.
3. Replica lag under write load: pgbench writers on the write pool while pg_stat_replication is sampled,
   and callers that read their own write at once (how often read-your-writes went to the primary).

    source scripts/pulumi-env.sh && python -m bench.read_path [--seconds 15] [--customers 20000]
Results: bench/results/read_path.json and bench/results/READ_PATH.md. Longer than 2 minutes: run it under
the shared lock (`flock /work/coord/heavy.lock python -m bench.read_path`).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.connections import PGBENCH, percentile, raise_file_limit, read_log, summary_number
from components.connection import LOOPBACK
from components.database.declared.model import load_schema
from components.platform.local import process
from components.platform.local.platform import router_dir, server_dir
from components.platform.local.postgres_files import ServerDir
from testbed.stacks import LiveStack, throwaway_stack
from tests.e2e.rows import Synthesizer
from thorbis_client import ThorbisClient, Transaction

RESULTS = Path(__file__).resolve().parent / "results"
#: Read-your-writes: one caller's customer (its id is md5('<company>:<n>'), as `seed` made the rows).
WRITE_NAME = "UPDATE customers SET display_name = %s WHERE id = md5(%s)::uuid"
READ_NAME = "SELECT display_name FROM customers WHERE id = md5(%s)::uuid"
CLAIMS = """SELECT set_config('request.jwt.claims', '{{"company_id": "{company}"}}', true),
       set_config('role', 'authenticated', true);"""
SCRIPTS = {
    "point read": "SELECT id, display_name, email FROM customers WHERE id = CAST(md5('{company}:' || :n) AS uuid);",
    "company scan": "SELECT count(*), max(display_name) FROM customers WHERE email LIKE 'c' || :n || '%';",
}
#: The review's families, weighted for a read-heavy application (customers and schedules most read).
FAMILY_WEIGHTS = {"customers": 50, "schedules": 20, "jobs:status": 10, "companies": 10, "settings": 10}


@dataclass(frozen=True)
class Tenant:
    company: str
    user: str


def admin(live: LiveStack, port: int | None = None) -> psycopg.Connection[Any]:
    return psycopg.connect(**live.admin(port), autocommit=True)  # type: ignore[arg-type]


def seed(live: LiveStack, companies: int, customers: int) -> list[Tenant]:
    """`companies` companies (one valid row in every table each) with `customers` customers each, whose
    ids pgbench can compute: md5('<company>:<n>')."""
    synthesizer = Synthesizer(load_schema())
    tenants = []
    with admin(live) as conn:
        for _ in range(companies):
            with conn.transaction():
                world = synthesizer.world(conn)
            company = str(world[synthesizer.tenant_table.name]["id"])
            conn.execute(
                """INSERT INTO customers (id, company_id, customer_number, first_name, display_name, email)
                   SELECT md5(%(c)s || ':' || g)::uuid, %(c)s::uuid, 'B' || g, 'First' || g, 'Customer ' || g,
                          'c' || g || '@mail.example'
                   FROM generate_series(1, %(n)s) g""",
                {"c": company, "n": customers},
            )
            tenants.append(Tenant(company, str(world["users"]["id"])))
        conn.execute("VACUUM ANALYZE customers")
    return tenants


# --- 1. read throughput ------------------------------------------------------------------------------


def pgbench(live: LiveStack, database: str, script: str, clients: int, seconds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="thorbis-pgbench-") as tmp:
        work = Path(tmp)
        (work / "script.sql").write_text(script)
        command = [
            str(PGBENCH), "-n", "-M", "simple", "-h", LOOPBACK, "-p", str(live.pgbouncer_port),
            "-U", "authenticator", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(work / "script.sql"),
            "--log", f"--log-prefix={work / 'pgbench_log'}", database,
        ]  # fmt: skip
        environment = {**os.environ, "PGPASSWORD": live.passwords["authenticatorPassword"]}
        done = subprocess.run(
            command, capture_output=True, text=True, env=environment, preexec_fn=raise_file_limit, check=False
        )
        latencies, failed = read_log(work)
    return {
        "tps": summary_number(done.stdout, r"tps = ([0-9.]+)"),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p95_ms": round(percentile(latencies, 0.95), 3),
        "failed": failed,
        "exit_code": done.returncode,
    }


def script_for(name: str, company: str, customers: int) -> str:
    body = SCRIPTS[name].format(company=company)
    return f"\\set n random(1, {customers})\nBEGIN;\n{CLAIMS.format(company=company)}\n{body}\nEND;\n"


def routes(live: LiveStack) -> list[str]:
    return list(json.loads((router_dir(live.state_dir) / "routes.json").read_text())["readTargets"])


def wait_for_reads_on(live: LiveStack, wanted: list[str]) -> None:
    process.wait_until(lambda: routes(live) == wanted, 30, f"reads on {wanted}")


def stop_replica(live: LiveStack, index: int) -> None:
    data = ServerDir(server_dir(live.state_dir, index)).data
    process.run(process.as_service_user([process.pg_tool("pg_ctl"), "-D", str(data), "stop", "-m", "fast"]), "stop")


def throughput_run(
    live: LiveStack, target: str, database: str, script: str, tenant: Tenant, size: tuple[int, int, int]
) -> dict[str, Any]:
    customers, clients, seconds = size
    run = pgbench(live, database, script_for(script, tenant.company, customers), clients, seconds)
    print(f"  {script:<13} {target:<14} tps {run['tps'] or 0:>8.0f}  p95 {run['p95_ms']:>6.2f} ms", flush=True)
    return {"target": target, "script": script, **run}


def read_throughput(live: LiveStack, tenant: Tenant, size: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Each script on each target, twice, the targets interleaved (noise shows as the spread);
    `size` is (customers, clients, seconds)."""
    plan = [("2 replicas", "thorbis_read"), ("primary alone", "thorbis")]
    runs = [
        throughput_run(live, target, database, script, tenant, size)
        for _ in range(2)
        for script in SCRIPTS
        for target, database in plan
    ]
    stop_replica(live, 1)
    wait_for_reads_on(live, ["replica-0"])
    runs += [throughput_run(live, "1 replica", "thorbis_read", s, tenant, size) for _ in range(2) for s in SCRIPTS]
    live.stack.refresh()  # the stopped replica is drift: refresh records it, up starts it again
    assert live.stack.up().summary.result == "succeeded"
    wait_for_reads_on(live, ["replica-0", "replica-1"])
    return runs


# --- 2. the cache ------------------------------------------------------------------------------------------


class Zipf:
    """Ranks 1..n drawn with weight 1/rank^s: a few keys are hot, most are cold."""

    def __init__(self, n: int, s: float, seed: int) -> None:
        weights = [1 / (rank**s) for rank in range(1, n + 1)]
        total = sum(weights)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))
        self.random = random.Random(seed)

    def draw(self) -> int:
        return min(bisect.bisect_left(self.cumulative, self.random.random()), len(self.cumulative) - 1) + 1


def loader(family: str, key: int) -> Callable[[Transaction], Any]:
    """What a miss reads: a customer by id, or a small query standing for the family's entry."""
    if family == "customers":

        def customer(tx: Transaction) -> Any:
            query = (
                "SELECT display_name, email FROM customers WHERE id = md5(app.current_company_id() || ':' || %s)::uuid"
            )
            return list(tx.execute(query, (str(key),)).fetchone() or [])

        return customer

    def entry(tx: Transaction) -> Any:
        row = tx.execute("SELECT count(*) FROM customers WHERE customer_number = %s", (f"B{key}",)).fetchone()
        return [family, key, row[0] if row else 0]

    return entry


def cache_mix(
    outputs: dict[str, Any], tenants: list[Tenant], customers: int, threads: int, seconds: int, cached: bool
) -> dict[str, Any]:
    """`threads` callers for `seconds`: 95 % reads of Zipf-popular keys, 5 % writes that invalidate."""
    families = list(FAMILY_WEIGHTS)
    weights = list(FAMILY_WEIGHTS.values())
    latencies: dict[str, list[float]] = {"hit": [], "waited": [], "miss": [], "uncached": []}
    second_half: Counter[str] = Counter()  # the same kinds, once the cache has warmed for half the run
    lock = threading.Lock()
    halfway, deadline = time.monotonic() + seconds / 2, time.monotonic() + seconds
    with ThorbisClient.from_outputs(outputs, pool_max_size=threads) as client:

        def caller(number: int) -> None:
            chooser = random.Random(number)
            keys = Zipf(customers, 1.1, seed=number)
            while time.monotonic() < deadline:
                tenant = tenants[chooser.randrange(len(tenants))]
                family = chooser.choices(families, weights)[0]
                key = keys.draw()
                if chooser.random() < 0.05:
                    with client.transaction(tenant.company, tenant.user) as tx:
                        tx.execute(
                            "UPDATE customers SET notes = now()::text WHERE id = md5(%s || ':' || %s)::uuid",
                            (tenant.company, str(key)),
                        )
                        tx.invalidate(family, key)
                    continue
                started = time.perf_counter()
                if cached:
                    source = client.fetch(tenant.company, tenant.user, family, key, loader(family, key)).source
                    kind = {"cache": "hit", "waited": "waited"}.get(source, "miss")
                else:
                    client.run(tenant.company, tenant.user, loader(family, key), read_only=True)
                    kind = "uncached"
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies[kind].append(elapsed)
                    if time.monotonic() > halfway:
                        second_half[kind] += 1

        run_callers(caller, threads)
        counts = client.stats.snapshot()
    reads = sum(len(values) for values in latencies.values())
    loads = counts.get("cache_loads", 0) if cached else reads
    return {
        "cached": cached,
        "threads": threads,
        "seconds": seconds,
        "reads": reads,
        "reads_per_second": round(reads / seconds, 1),
        "writes": counts.get("writes", 0),
        "hit_rate": round(counts.get("cache_hits", 0) / reads, 4) if cached and reads else None,
        "database_reads": loads,
        "database_reads_saved": round(1 - loads / reads, 4) if reads else None,
        "second_half": {
            "reads": sum(second_half.values()),
            "hit_rate": share(second_half["hit"], second_half),
            "database_reads_saved": 1 - share(second_half["miss"] + second_half["uncached"], second_half),
        },
        "stampede_waits": counts.get("cache_waits", 0),
        "latency_ms": {kind: summary(values) for kind, values in latencies.items() if values},
    }


def share(part: int, counts: Counter[str]) -> float:
    total = sum(counts.values())
    return round(part / total, 4) if total else 0.0


def run_callers(caller: Callable[[int], None], threads: int) -> None:
    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 0.50), 3),
        "p95": round(percentile(ordered, 0.95), 3),
        "p99": round(percentile(ordered, 0.99), 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


# --- 3. lag under write load ----------------------------------------------------------------------------

WRITE_SCRIPT = """\\set n random(1, {customers})
BEGIN;
{claims}
UPDATE customers SET notes = repeat(md5(random()::text), 8) WHERE id = CAST(md5('{company}:' || :n) AS uuid);
END;
"""


@contextmanager
def sampling_lag(live: LiveStack, every: float = 0.1) -> Iterator[list[tuple[int, float]]]:
    """(bytes behind, replay_lag ms) of every replica, sampled on the primary while the block runs."""
    samples: list[tuple[int, float]] = []
    done = threading.Event()

    def sample() -> None:
        with admin(live) as conn:
            while not done.is_set():
                for behind, lag in conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                    "coalesce(extract(epoch FROM replay_lag) * 1000, 0) FROM pg_stat_replication"
                ):
                    samples.append((int(behind or 0), float(lag)))
                time.sleep(every)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def read_your_writes(outputs: dict[str, Any], tenants: list[Tenant], seconds: int, threads: int) -> dict[str, Any]:
    """Callers that rename a customer and read it back at once; every read must see its write."""
    deadline = time.monotonic() + seconds
    stale = 0
    lock = threading.Lock()
    with ThorbisClient.from_outputs(outputs, pool_max_size=threads) as client:

        def caller(number: int) -> None:
            nonlocal stale
            tenant = tenants[number % len(tenants)]
            customer = f"{tenant.company}:{number + 1}"
            rounds = 0
            while time.monotonic() < deadline:
                rounds += 1
                name = f"ryw {number} {rounds}"
                with client.transaction(tenant.company, tenant.user) as tx:
                    tx.execute(WRITE_NAME, (name, customer))
                seen = client.run(
                    tenant.company,
                    tenant.user,
                    lambda tx: tx.execute(READ_NAME, (customer,)).fetchone(),
                    read_only=True,
                )
                if seen is None or seen[0] != name:
                    with lock:
                        stale += 1

        run_callers(caller, threads)
        counts = client.stats.snapshot()
    reads = counts.get("replica_reads", 0) + counts.get("primary_reads", 0)
    fallbacks = counts.get("read_your_writes_fallbacks", 0)
    return {
        "reads_after_own_write": reads,
        "fell_back_to_primary": fallbacks,
        "fallback_rate": round(fallbacks / reads, 4) if reads else None,
        "stale_reads": stale,
    }


def lag_under_writes(
    live: LiveStack, outputs: dict[str, Any], tenants: list[Tenant], customers: int, seconds: int
) -> dict[str, Any]:
    tenant = tenants[0]
    script = WRITE_SCRIPT.format(
        customers=customers, company=tenant.company, claims=CLAIMS.format(company=tenant.company)
    )
    result: dict[str, Any] = {}
    excluded: list[list[str]] = []

    def writers() -> None:
        result["writers"] = pgbench(live, "thorbis", script, 8, seconds)

    def watch_routes() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            excluded.append(routes(live))
            time.sleep(0.2)

    with sampling_lag(live) as samples:
        background = [threading.Thread(target=writers), threading.Thread(target=watch_routes)]
        for thread in background:
            thread.start()
        result["read_your_writes"] = read_your_writes(outputs, tenants[1:] or tenants, seconds, threads=2)
        for thread in background:
            thread.join()
    behind = sorted(float(b) for b, _ in samples)
    lag_ms = sorted(ms for _, ms in samples)
    result["lag_bytes"] = {"p50": percentile(behind, 0.5), "p95": percentile(behind, 0.95), "max": behind[-1]}
    result["replay_lag_ms"] = {"p50": percentile(lag_ms, 0.5), "p95": percentile(lag_ms, 0.95), "max": lag_ms[-1]}
    result["read_pool_samples_without_both_replicas"] = sum(r != ["replica-0", "replica-1"] for r in excluded)
    result["read_pool_samples"] = len(excluded)
    return result


# --- all of it -------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, throwaway_stack(Path(tmp), "bench-read", replicas=2) as live:
        started = time.monotonic()
        up = live.stack.up()
        print(f"stack up in {time.monotonic() - started:.0f} s", flush=True)
        outputs = {name: value.value for name, value in up.outputs.items()}
        tenants = seed(live, args.companies, args.customers)
        print("1. read throughput", flush=True)
        throughput = read_throughput(live, tenants[0], (args.customers, args.clients, args.seconds))
        print("2. cache", flush=True)
        without = cache_mix(outputs, tenants, args.customers, args.threads, args.seconds, cached=False)
        with_cache = cache_mix(outputs, tenants, args.customers, args.threads, args.seconds * 2, cached=True)
        print(json.dumps(with_cache, indent=1), flush=True)
        print("3. lag under write load", flush=True)
        lag = lag_under_writes(live, outputs, tenants, args.customers, args.seconds)
        print(json.dumps(lag, indent=1), flush=True)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "parameters": vars(args),
        "read_throughput": throughput,
        "cache": {"without": without, "with": with_cache},
        "lag": lag,
    }


def throughput_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| Script | Target | tps (each run) | p95 ms (each run) |", "|---|---|---|---|"]
    for script in SCRIPTS:
        for target in ("primary alone", "1 replica", "2 replicas"):
            mine = [run for run in runs if run["script"] == script and run["target"] == target]
            tps = " / ".join(f"{run['tps'] or 0:.0f}" for run in mine)
            p95 = " / ".join(f"{run['p95_ms']:.2f}" for run in mine)
            lines.append(f"| {script} | {target} | {tps} | {p95} |")
    return lines


def cache_table(cache: dict[str, Any]) -> list[str]:
    without, cached = cache["without"], cache["with"]
    warm = cached["second_half"]
    latency = cached["latency_ms"]
    hit, miss, uncached = latency.get("hit", {}), latency.get("miss", {}), without["latency_ms"].get("uncached", {})
    return [
        "| | Without cache | With cache |",
        "|---|---|---|",
        f"| reads per second | {without['reads_per_second']} | {cached['reads_per_second']} |",
        f"| database reads | {without['database_reads']} of {without['reads']} | "
        f"{cached['database_reads']} of {cached['reads']} |",
        f"| database reads saved | 0 % | {100 * (cached['database_reads_saved'] or 0):.1f} % |",
        f"| hit rate | | {100 * (cached['hit_rate'] or 0):.1f} % |",
        f"| second half of the run (warm): hit rate, database reads saved | | {100 * warm['hit_rate']:.1f} %, "
        f"{100 * warm['database_reads_saved']:.1f} % |",
        f"| p50 / p95 / p99 ms | {uncached.get('p50')} / {uncached.get('p95')} / {uncached.get('p99')} | hits "
        f"{hit.get('p50')} / {hit.get('p95')} / {hit.get('p99')}; misses {miss.get('p50')} / {miss.get('p95')} / "
        f"{miss.get('p99')} |",
    ]


def render(results: dict[str, Any]) -> str:
    lag, ryw = results["lag"], results["lag"]["read_your_writes"]
    parameters = results["parameters"]
    return "\n".join(
        [
            "# The application's data path: measured",
            "",
            f"{results['when']}, {results['machine']['cpus']} CPUs, one host for every server; "
            f"{parameters['companies']} companies of {parameters['customers']} customers; `python -m bench.read_path` "
            f"(runs of {parameters['seconds']} s, {parameters['clients']} pgbench clients, "
            f"{parameters['threads']} cache callers).",
            "",
            "## Read throughput (pgbench through PgBouncer, as `authenticator` with claims)",
            "",
            *throughput_table(results["read_throughput"]),
            "",
            "## The cache (thorbis_client, read-heavy mix: Zipf keys over the review's families, 5 % writes)",
            "",
            *cache_table(results["cache"]),
            "",
            "## Replica lag under write load, and read-your-writes",
            "",
            f"8 pgbench writers for {parameters['seconds']} s: writes {lag['writers']['tps'] or 0:.0f} tps; "
            f"replay behind the primary p50 {lag['lag_bytes']['p50']:.0f} B, p95 {lag['lag_bytes']['p95']:.0f} B, "
            f"max {lag['lag_bytes']['max']:.0f} B; replay_lag p95 {lag['replay_lag_ms']['p95']:.1f} ms, "
            f"max {lag['replay_lag_ms']['max']:.1f} ms; the read pool lacked a replica in "
            f"{lag['read_pool_samples_without_both_replicas']} of {lag['read_pool_samples']} samples.",
            f"Callers reading their own write at once: {ryw['reads_after_own_write']} reads, "
            f"{ryw['fell_back_to_primary']} went to the primary "
            f"({100 * (ryw['fallback_rate'] or 0):.1f} %), {ryw['stale_reads']} saw an older value.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=16, help="pgbench clients of each throughput run")
    parser.add_argument("--threads", type=int, default=8, help="thorbis_client callers of the cache mix")
    parser.add_argument("--companies", type=int, default=10)
    parser.add_argument("--customers", type=int, default=20000, help="customers per company")
    results = measure(parser.parse_args())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "read_path.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "READ_PATH.md").write_text(render(results))
    print(f"wrote {RESULTS / 'read_path.json'} and READ_PATH.md")


if __name__ == "__main__":
    main()
