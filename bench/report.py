"""Render bench/results/results.json as REPORT.md and PNG charts (matplotlib, headless).

python -m bench.report [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SPEEDUP = 10.0
TARGET_P95_MS = 50.0
TARGET_RLS_PCT = 10.0
TARGET_POOLED_P95_MS = 20.0
TARGET_PREVIEW_S = 15.0


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def review_cell(row: dict[str, Any]) -> str:
    if not row.get("review_after_ms"):
        return "(ours)"
    low, high = row["review_after_ms"]
    return f"{row['review_before_ms']:.0f} → {low:.0f}-{high:.0f} ms"


def scans_cell(row: dict[str, Any]) -> str:
    """What the after side's plan read: rows its scans kept through index conditions, rows filtered out."""
    if row.get("rows_kept") is None:
        return "n/a"
    return f"{row['rows_kept']:,} / {row['rows_filtered']:,}"


def query_table(comparison: list[dict[str, Any]]) -> str:
    lines = [
        "| Query class | Review (before → after) | Before median / p95 (ms) | After median / p95 (ms) "
        "| Speed-up (median) | RLS overhead | After plan: rows kept / filtered out |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in comparison:
        lines.append(
            f"| {row['key'].replace('_', ' ')} | {review_cell(row)} "
            f"| {fmt(row['before_median_ms'])} / {fmt(row['before_p95_ms'])} "
            f"| {fmt(row['after_median_ms'])} / {fmt(row['after_p95_ms'])} "
            f"| {fmt(row['speedup_median'], 1)}x | {fmt(row['rls_overhead_pct'], 1)} % "
            f"({row.get('rls_overhead_ms', 0):+.2f} ms) | {scans_cell(row)} |"
        )
    return "\n".join(lines)


def class_targets(comparison: list[dict[str, Any]]) -> str:
    """Per class: the issue's targets, each met or not (the 10x only for the review's classes)."""
    lines = [
        f"| Query class | After p95 < {TARGET_P95_MS:.0f} ms | RLS overhead < {TARGET_RLS_PCT:.0f} % "
        f"| ≥ {TARGET_SPEEDUP:.0f}x faster (review's classes) | Index conditions under RLS |",
        "|---|---|---|---|---|",
    ]
    for row in comparison:
        speedup = row["speedup_median"]
        overhead = row["rls_overhead_pct"]
        tenfold = verdict(speedup is not None and speedup >= TARGET_SPEEDUP) if row.get("review_after_ms") else "n/a"
        lines.append(
            f"| {row['key'].replace('_', ' ')} | {verdict(row['after_p95_ms'] < TARGET_P95_MS)} "
            f"| {verdict(overhead is not None and overhead < TARGET_RLS_PCT)} ({fmt(overhead, 1)} %) "
            f"| {tenfold} ({fmt(speedup, 1)}x) | {verdict(row.get('index_conditions'))} |"
        )
    return "\n".join(lines)


def curve_table(curve: list[dict[str, Any]]) -> str:
    """After-side p95 per class at each scale: flat where a class's cost does not grow with the tenant."""
    header = " | ".join(
        f"scale {point['scale']:g}: {point['total_rows']:,} rows, largest {point['largest_company_customers']:,}"
        for point in curve
    )
    lines = [f"| Query class | {header} |", "|---|" + "---|" * len(curve)]
    for key in curve[-1]["after"]:
        cells = " | ".join(fmt(point["after"].get(key, {}).get("p95_ms")) for point in curve)
        lines.append(f"| {key.replace('_', ' ')} | {cells} |")
    return "\n".join(lines)


def connection_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| Path | Clients | Pacing | TPS | p50 / p95 / p99 (ms) | Failed tx | Errors | pgbench exit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        latency = run["latency_ms"]
        pacing = f"{run['rate_limit_tps']} tx/s" if run["rate_limit_tps"] else "unpaced"
        note = f" ({run['first_errors'][0][:90]})" if run["errors"] and run["first_errors"] else ""
        lines.append(
            f"| {run['target']} | {run['clients']} | {pacing} | {fmt(run['tps'], 1)} "
            f"| {fmt(latency['p50'])} / {fmt(latency['p95'])} / {fmt(latency['p99'])} "
            f"| {run['failed_transactions']} | {run['errors']}{note} | {run['exit_code']} |"
        )
    return "\n".join(lines)


def provisioning_table(provisioning: dict[str, Any]) -> str:
    seconds, ratios = provisioning["seconds"], provisioning.get("ratio_to_floor", {})
    floor = provisioning.get("psql_floor", {}).get("seconds")
    lines = ["| Step | Seconds | x psql -f floor |", "|---|---|---|"]
    for step, value in seconds.items():
        lines.append(f"| {step} | {value:.2f} | {fmt(ratios.get(step), 1) if step in ratios else ''} |")
    if floor is None:
        error = str(provisioning.get("psql_floor", {}).get("error", "not measured")).splitlines()[0]
        lines.append(f"| psql -f of the dumped schema (floor) | not measured: {error} | |")
    else:
        lines.append(f"| psql -f of the dumped schema (floor) | {fmt(floor)} | 1.0 |")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> str:
    comparison = results.get("queries", {}).get("comparison", [])
    runs = results.get("connections", {}).get("runs", [])
    provisioning = results.get("provisioning")
    review = [row for row in comparison if row.get("review_after_ms")]
    slowest = min((row["speedup_median"] or 0 for row in review), default=None)
    worst_p95 = max((row["after_p95_ms"] for row in comparison), default=None)
    worst_rls = max((row["rls_overhead_pct"] or 0 for row in comparison), default=None)
    pooled = [run for run in runs if run["target"] == "pgbouncer" and run["clients"] >= 1000]
    paced = next((run for run in pooled if run["rate_limit_tps"]), None)
    pooled_errors = sum(run["errors"] + run["failed_transactions"] for run in pooled) if pooled else None
    preview = provisioning["seconds"].get("no-change preview") if provisioning else None
    rows = [
        ("Each review class ≥ 10x faster after", f"slowest {fmt(slowest, 1)}x", slowest and slowest >= TARGET_SPEEDUP),
        ("After p95 < 50 ms", f"worst p95 {fmt(worst_p95)} ms", worst_p95 is not None and worst_p95 < TARGET_P95_MS),
        ("RLS overhead < 10 %", f"worst {fmt(worst_rls, 1)} %", worst_rls is not None and worst_rls < TARGET_RLS_PCT),
        (
            "Index conditions under RLS, every class",
            f"{sum(bool(row.get('index_conditions')) for row in comparison)} of {len(comparison)} classes",
            all(row.get("index_conditions") for row in comparison) if comparison else None,
        ),
        ("1,000 pooled clients, no errors", f"{pooled_errors} errors/failures", pooled_errors == 0 if pooled else None),
        (
            "Pooled simple read p95 < 20 ms (paced)",
            f"p95 {fmt(paced['latency_ms']['p95']) if paced else 'n/a'} ms",
            paced["latency_ms"]["p95"] < TARGET_POOLED_P95_MS if paced else None,
        ),
        ("No-change preview < 15 s", f"{fmt(preview)} s", preview < TARGET_PREVIEW_S if preview is not None else None),
    ]
    lines = ["| Target | Measured | |", "|---|---|---|"]
    lines += [
        f"| {name} | {measured} | {verdict(bool(ok) if ok is not None else None)} |" for name, measured, ok in rows
    ]
    return "\n".join(lines)


def dataset_table(dataset: dict[str, Any]) -> str:
    lines = ["| Table | Rows |", "|---|---|"]
    lines += [f"| {table} | {count:,} |" for table, count in dataset["rows"].items()]
    lines.append(f"| **total** | **{dataset['total_rows']:,}** |")
    return "\n".join(lines)


def charts(results: dict[str, Any], out: Path) -> list[str]:
    """Before/after per query class, pooled vs direct latency percentiles, provisioning times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    comparison = results.get("queries", {}).get("comparison", [])
    if comparison:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        keys = [row["key"].replace("_", "\n") for row in comparison]
        positions = range(len(keys))
        width = 0.27
        for offset, (column, label) in enumerate(
            (("before_median_ms", "before (owner + filter)"), ("after_median_ms", "after (RLS)"),
             ("owner_median_ms", "after (owner + filter)"))
        ):  # fmt: skip
            ax.bar(
                [p + (offset - 1) * width for p in positions], [row[column] for row in comparison], width, label=label
            )
        ax.set_yscale("log")
        ax.set_xticks(list(positions), keys)
        ax.set_ylabel("median latency (ms, log scale)")
        ax.set_title("Query classes before and after `pulumi up`")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "queries.png", dpi=110)
        plt.close(fig)
        made.append("queries.png")
    curve = results.get("curve", [])
    if len(curve) > 1:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        sizes = [point["largest_company_customers"] for point in curve]
        for key in curve[-1]["after"]:
            ax.plot(sizes, [point["after"].get(key, {}).get("p95_ms") for point in curve], marker="o", label=key)
        ax.axhline(TARGET_P95_MS, color="grey", linestyle="--", linewidth=1, label="50 ms target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("customers of the largest company (log scale)")
        ax.set_ylabel("after-side p95 (ms, log scale)")
        ax.set_title("Query classes as the application, by tenant size")
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        fig.savefig(out / "curve.png", dpi=110)
        plt.close(fig)
        made.append("curve.png")
    runs = [run for run in results.get("connections", {}).get("runs", []) if run["transactions"]]
    if runs:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        labels = [
            f"{run['target']}\n{run['clients']} cl.\n"
            + (f"{run['rate_limit_tps']} tx/s" if run["rate_limit_tps"] else "unpaced")
            for run in runs
        ]
        width = 0.27
        for offset, percentile in enumerate(("p50", "p95", "p99")):
            ax.bar(
                [p + (offset - 1) * width for p in range(len(runs))],
                [run["latency_ms"][percentile] for run in runs],
                width,
                label=percentile,
            )
        ax.axhline(TARGET_POOLED_P95_MS, color="grey", linestyle="--", linewidth=1, label="20 ms target")
        ax.set_yscale("log")
        ax.set_xticks(list(range(len(runs))), labels)
        ax.set_ylabel("transaction latency (ms, log scale)")
        ax.set_title("Simple read with claims: PgBouncer vs direct")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        made.append("latency.png")
    provisioning = results.get("provisioning")
    if provisioning:
        floor = provisioning["psql_floor"].get("seconds")
        steps = {**provisioning["seconds"], **({"psql -f floor": floor} if floor is not None else {})}
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.barh(list(steps), list(steps.values()), color="tab:blue")
        ax.axvline(TARGET_PREVIEW_S, color="grey", linestyle="--", linewidth=1, label="15 s preview target")
        ax.set_xlabel("seconds")
        ax.set_title(f"Provisioning ({provisioning['resources']} resources)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "provisioning.png", dpi=110)
        plt.close(fig)
        made.append("provisioning.png")
    return made


def render(results: dict[str, Any], out: Path = RESULTS) -> Path:
    """Write REPORT.md and the charts into `out`; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    images = charts(results, out)
    dataset = results.get("dataset")
    queries = results.get("queries")
    connections = results.get("connections")
    provisioning = results.get("provisioning")
    parts = [
        "# thorbis-db benchmarks",
        "",
        f"Run {results.get('started', '')} on {results.get('host', 'this host')}; "
        f"scale {dataset['scale'] if dataset else 'n/a'}. Benchmarks print figures; they pass or fail nothing.",
        "",
        "## Targets (issues 8 and 14)",
        "",
        targets(results),
    ]
    if dataset:
        parts += [
            "",
            "## Dataset",
            "",
            f"{dataset['companies']} companies of Zipf-skewed sizes (largest {dataset['largest_company_customers']:,} "
            f"customers, median {dataset['median_company_customers']:,}); two years of history; loaded with COPY "
            f"in {dataset['load_seconds']} s. Queries run for the largest company.",
            "",
            dataset_table(dataset),
        ]
    if queries:
        parts += [
            "",
            "## Query classes: before and after `pulumi up`",
            "",
            "*Before* is the review's database (42 tables, no RLS, no FK/composite/trigram indexes, no "
            "partitions). RLS does not exist there, so the before queries run as the owner (postgres) with an "
            "explicit `company_id = ...` filter on every table. *After* runs as the application does: "
            "`authenticator`, claims via `set_config('request.jwt.claims', ..., true)`, `SET LOCAL ROLE "
            "authenticated`, no explicit filter; the search box and the fuzzy search call their search functions "
            "(`sql/search.yaml`), as PostgREST calls RPC. *RLS overhead* compares *after* with the owner running "
            "the same query with the explicit filter on the same after database. Client-side time of the statement "
            f"only; {queries.get('runs', 'n')} runs (fewer when slow) after 2 warm-ups. Plans: `plans/` "
            "(`<class>-after-matcher.txt`: the search's own query, as it runs inside the function). *Rows kept / "
            "filtered out*: rows the after plan's scans returned, and rows a scan read and then threw away (a "
            "condition that was not an index condition: a scan of the company's rows).",
            "",
            query_table(queries["comparison"]),
            "",
            "### Targets per class",
            "",
            class_targets(queries["comparison"]),
        ]
        if queries.get("adoption_seconds") is not None:
            failures = results.get("adoption_failures") or []
            reruns = (
                f", in {len(failures) + 1} runs (a failed run keeps what it finished; each failed with: "
                + "; ".join(f"`{failure}`" for failure in failures)
                + ")"
                if failures
                else ""
            )
            parts += [
                "",
                f"The adopting `pulumi up` on the populated before database took {queries['adoption_seconds']} s"
                f"{reruns}.",
            ]
        if results.get("curve"):
            parts += [
                "",
                "## Scale curve: after-side p95 (ms) per class",
                "",
                "The same classes at each scale (as the application, RLS on), for the largest company of each "
                "dataset: a class read through a tenant-scoped index stays flat while its company grows, "
                "beyond the rows it returns.",
                "",
                curve_table(results["curve"]),
            ]
    if connections:
        parts += [
            "",
            "## Connection scale: PgBouncer (transaction pooling) vs direct",
            "",
            "pgbench, `-M simple`, one transaction = claims + `SET LOCAL ROLE authenticated` + a read of one "
            "customer by primary key; percentiles from `--log`. *Paced* runs (`-R`) hold the total rate (1 "
            "transaction per client per second at 1,000 clients) and count latency from the scheduled start; "
            "*unpaced* runs are closed loops, whose latency is clients / throughput. "
            f"Server max_connections {connections.get('max_connections')}, PgBouncer default_pool_size "
            f"{connections.get('pool_size')}.",
            "",
            connection_table(connections["runs"]),
        ]
    if provisioning:
        parts += [
            "",
            "## Provisioning",
            "",
            f"{provisioning['resources']} resources, {provisioning['replicas']} replicas, {provisioning['pulumi']}. "
            "The floor is `psql -f` of the provisioned database's `pg_dump --schema-only` (less pg_cron) into an "
            "empty database of the same server.",
            "",
            provisioning_table(provisioning),
        ]
    if results.get("notes"):
        parts += ["", "## Notes", "", *[f"- {note}" for note in results["notes"]]]
    if images:
        parts += ["", "## Charts", "", *[f"![{image}]({image})" for image in images]]
    report = out / "REPORT.md"
    report.write_text("\n".join(parts) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = json.loads((args.results / "results.json").read_text())
    print(render(results, args.results))


if __name__ == "__main__":
    main()
