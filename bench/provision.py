"""Provisioning benchmark: a full `pulumi up` from nothing, a no-change `preview` and a no-change `up`.

Prints the resource count and the figures, and writes them to bench/results/provisioning.json. A
benchmark, not a test: it asserts nothing about time.

    source scripts/pulumi-env.sh && python -m bench.provision [--replicas N]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import pulumi.automation as auto

from tests.support import free_ports, reachable_state_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PASSWORD_KEYS = (
    "postgresPassword",
    "replicationPassword",
    "pgbouncerAuthPassword",
    "redisPassword",
    "authenticatorPassword",
    "reportingPassword",
)


def timed(step: str, action, figures: dict[str, float]):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = action()
    figures[step] = round(time.perf_counter() - started, 2)
    print(f"{step:<24} {figures[step]:>8.2f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=0)
    args = parser.parse_args()
    figures: dict[str, float] = {}
    name = f"bench-{secrets.token_hex(3)}"
    with reachable_state_dir("thorbis-bench-") as state_dir, tempfile.TemporaryDirectory() as backend:
        ports = free_ports(3 + args.replicas)
        stack = auto.create_stack(
            name,
            work_dir=str(ROOT),
            opts=auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{backend}"}),
        )
        try:
            values = {
                "thorbis:stateDir": str(state_dir),
                "thorbis:allowDataLoss": "true",
                "thorbis:postgres.port": str(ports[0]),
                "thorbis:pgbouncer.port": str(ports[1]),
                "thorbis:redis.port": str(ports[2]),
                "thorbis:replicas.count": str(args.replicas),
            }
            stack.set_all_config({k: auto.ConfigValue(v) for k, v in values.items()}, path=True)
            stack.set_all_config(
                {f"thorbis:{k}": auto.ConfigValue(secrets.token_urlsafe(18), secret=True) for k in PASSWORD_KEYS}
            )
            created = timed("up from nothing", stack.up, figures)
            timed("no-change preview", lambda: stack.preview(expect_no_changes=True), figures)
            timed("no-change up", stack.up, figures)
            timed("refresh", stack.refresh, figures)
            timed("destroy", stack.destroy, figures)
        finally:
            stack.workspace.remove_stack(name, force=True)
            (ROOT / f"Pulumi.{name}.yaml").unlink(missing_ok=True)
    resources = (created.summary.resource_changes or {}).get("create", 0)
    engine = subprocess.run(["pulumi", "version"], capture_output=True, text=True, check=True).stdout.strip()
    report = {"resources": resources, "replicas": args.replicas, "pulumi": engine, "seconds": figures}
    print(f"{'resources':<24} {resources:>8}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "provisioning.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
