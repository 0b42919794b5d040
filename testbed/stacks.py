"""Throwaway stacks of this project on free ports, each with its own backend, state directory and
passwords: the e2e tests' and the benchmarks' (which drive the same program through the Automation API)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pulumi.automation as auto

from components.connection import LOOPBACK
from components.platform.local.pgbouncer import AUTH_ROLE
from components.platform.local.postgres_files import SUPERUSER
from config import PASSWORD_KEYS
from testbed.support import PROJECT_ROOT, free_port, free_ports, processes_under, reachable_state_dir


@dataclass
class LiveStack:
    stack: auto.Stack
    state_dir: Path
    backend: Path
    postgres_port: int
    replica_ports: list[int]
    pgbouncer_port: int
    redis_port: int
    passwords: dict[str, str] = field(repr=False)
    resources: int = 0  # how many the first `up` created

    @property
    def all_ports(self) -> list[int]:
        return [self.postgres_port, *self.replica_ports, self.pgbouncer_port, self.redis_port]

    def admin(self, port: int | None = None, dbname: str = "thorbis") -> dict[str, object]:
        return {
            "host": LOOPBACK,
            "port": port or self.postgres_port,
            "user": SUPERUSER,
            "password": self.passwords["postgresPassword"],
            "dbname": dbname,
            "connect_timeout": 5,
        }

    def pgbouncer_console(self) -> psycopg.Connection:
        """PgBouncer's admin console, as its auth user (one of its admin_users)."""
        return psycopg.connect(
            host=LOOPBACK,
            port=self.pgbouncer_port,
            dbname="pgbouncer",
            user=AUTH_ROLE,
            password=self.passwords["pgbouncerAuthPassword"],
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,  # the admin console speaks the simple protocol only
            prepare_threshold=None,
        )

    def backend_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.backend.rglob("*") if p.is_file())


def configure(
    stack: auto.Stack,
    state_dir: Path,
    ports: list[int],
    passwords: dict[str, str],
    replicas: int,
    settings: dict[str, str] | None = None,
) -> None:
    values = {
        "thorbis:platform": "local",
        "thorbis:stateDir": str(state_dir),
        "thorbis:allowDataLoss": "true",
        "thorbis:postgres.port": str(ports[0]),
        "thorbis:replicas.count": str(replicas),
        "thorbis:replicas.basePort": str(ports[1]),
        "thorbis:pgbouncer.port": str(ports[-2]),
        "thorbis:pgbouncer.defaultPoolSize": "10",
        "thorbis:pgbouncer.reservePoolSize": "2",
        "thorbis:redis.port": str(ports[-1]),
        **{f"thorbis:postgres.settings.{name}": value for name, value in (settings or {}).items()},
    }
    stack.set_all_config({key: auto.ConfigValue(value) for key, value in values.items()}, path=True)
    stack.set_all_config({f"thorbis:{key}": auto.ConfigValue(value, secret=True) for key, value in passwords.items()})


def consecutive_free_ports(count: int) -> list[int]:
    """Replicas listen on basePort + i: a run of ports that are all free."""
    start = free_port(run=count)
    return list(range(start, start + count))


@contextmanager
def throwaway_stack(
    backend: Path,
    prefix: str,
    replicas: int = 0,
    work_dir: Path = PROJECT_ROOT,
    before_destroy: Callable[[auto.Stack], object] | None = None,
    settings: dict[str, str] | None = None,
) -> Iterator[LiveStack]:
    """A stack of the program in `work_dir` on free ports, with its own backend, state directory and
    passwords (and thorbis:postgres.settings); destroyed and removed afterwards (its servers must be gone
    then). The caller runs `up`."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    replica_ports = consecutive_free_ports(replicas) if replicas else []
    postgres_port, replica_base, pgbouncer_port, redis_port = free_ports(4)
    passwords = {key: secrets.token_urlsafe(18) for key in PASSWORD_KEYS}
    ports = [postgres_port, *(replica_ports or [replica_base]), pgbouncer_port, redis_port]
    with reachable_state_dir() as state_dir:
        stack = auto.create_stack(
            name,
            work_dir=str(work_dir),
            opts=auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{backend}"}),
        )
        live = LiveStack(stack, state_dir, backend, postgres_port, replica_ports, pgbouncer_port, redis_port, passwords)
        try:
            configure(stack, state_dir, ports, passwords, replicas, settings)
            yield live
        finally:
            try:
                if before_destroy is not None:
                    before_destroy(stack)
            finally:
                try:
                    stack.destroy()
                finally:
                    stack.workspace.remove_stack(name, force=True)
                    (work_dir / f"Pulumi.{name}.yaml").unlink(missing_ok=True)
        assert processes_under(state_dir) == [], "a server of the stack outlived its destroy"
