"""The cost of resetting every pooled server connection after each transaction (PgBouncer's
`server_reset_query = DISCARD ALL` with `server_reset_query_always = 1`, README "Security").

One throwaway stack with the full schema and a small dataset; the pooled pgbench runs of bench/connections.py
(1,000 clients, unpaced and paced), alternately with the reset always on (the stack's setting) and off (set
on PgBouncer's admin console, as PgBouncer's default for transaction pooling), so the machine's load drifts
into both sides alike. Figures go to bench/results/reset-cost.json.

    python -m bench.reset_cost [--rounds 2] [--seconds 15] [--scale 0.05]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from bench import connections, generate
from bench.run import APPLICATION_LOGIN, APPLICATION_PASSWORD_KEY, RESULTS
from ops.stack import read_connection
from testbed.stacks import LiveStack, throwaway_stack

OUTPUT = RESULTS / "reset-cost.json"


def set_reset_always(live: LiveStack, on: bool) -> None:
    """Online, on PgBouncer's admin console (its auth user is an admin there)."""
    with live.pgbouncer_console() as console:
        console.execute(f"SET server_reset_query_always = {int(on)}")
        shown = {row[0]: row[1] for row in console.execute("SHOW CONFIG").fetchall()}
    assert shown["server_reset_query_always"] == str(int(on)), shown["server_reset_query_always"]


def measure(rounds: int, seconds: int, scale: float, clients: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, throwaway_stack(Path(tmp), "bench-reset") as live:
        live.stack.up()
        connection = read_connection(live.stack)
        with psycopg.connect(**connection.conninfo(), autocommit=True) as admin:
            dataset = generate.load(admin, scale, trust_foreign_keys=True)
            admin.execute("VACUUM (ANALYZE)")
            company = generate.largest_company(admin)
        pooled, _ = connections.routes(connection, APPLICATION_LOGIN, live.passwords[APPLICATION_PASSWORD_KEY])
        for number in range(rounds):
            for on in (True, False):
                set_reset_always(live, on)
                for rate in (None, clients):  # unpaced: the most it does; paced: 1 transaction/client/s
                    run = connections.run_pgbench(
                        pooled, company, dataset["largest_company_customers"], clients, seconds, rate
                    )
                    run |= {"reset_always": on, "round": number}
                    print(f"reset {'on ' if on else 'off'}", end="")
                    connections.print_run(run)
                    runs.append(run)
        result = {"clients": clients, "seconds": seconds, "scale": scale, "runs": runs, "summary": summarise(runs)}
        RESULTS.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(json.dumps(result, indent=2) + "\n")  # kept whatever the destroy does
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting and pacing: the median TPS and p95 over the rounds."""
    out: dict[str, Any] = {}
    for on in (True, False):
        for paced in (False, True):
            chosen = [r for r in runs if r["reset_always"] == on and bool(r["rate_limit_tps"]) == paced]
            tps = sorted(r["tps"] or 0.0 for r in chosen)
            p95 = sorted(r["latency_ms"]["p95"] for r in chosen)
            out[f"reset_{'on' if on else 'off'}_{'paced' if paced else 'unpaced'}"] = {
                "tps_median": tps[len(tps) // 2] if tps else None,
                "p95_ms_median": p95[len(p95) // 2] if p95 else None,
                "failed": sum(r["failed_transactions"] for r in chosen),
                "errors": sum(r["errors"] for r in chosen),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--clients", type=int, default=1000)
    arguments = parser.parse_args()
    result = measure(arguments.rounds, arguments.seconds, arguments.scale, arguments.clients)
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
