"""Selecting a stack through the Automation API, and where its platform listens (from its outputs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi.automation as auto

#: The project directory: the clone this package lives in (THORBIS_ROOT when scripts/pulumi-env.sh set it).
ROOT = Path(os.environ.get("THORBIS_ROOT") or Path(__file__).resolve().parents[1])


class ToolError(Exception):
    """The tool could not do its work (no such stack, `pulumi` failed); the message says what to do."""


def open_stack(name: str, work_dir: Path | None = None) -> auto.Stack:
    """The existing stack `name` of the project in `work_dir`, on the backend of PULUMI_BACKEND_URL."""
    directory = work_dir or ROOT
    try:
        return auto.select_stack(name, work_dir=str(directory))
    except auto.StackNotFoundError as error:
        raise ToolError(
            f"no stack {name!r} on backend {os.environ.get('PULUMI_BACKEND_URL', '(default)')}: "
            "check the name and PULUMI_BACKEND_URL, or create it with `make up STACK=...`"
        ) from error
    except auto.CommandError as error:
        raise ToolError(f"could not select stack {name!r} in {directory}: {last_line(str(error))}") from error


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text.strip()


@dataclass(frozen=True)
class Target:
    """Where the stack's platform listens, from its outputs and config (passwords never printed)."""

    platform: str
    host: str
    port: int
    database: str
    admin_user: str
    admin_password: str = field(repr=False)
    pooler_port: int | None = None
    replica_ports: tuple[int, ...] = ()
    redis_port: int | None = None
    redis_password: str | None = field(default=None, repr=False)
    pooler_auth_password: str | None = field(default=None, repr=False)
    authenticator_password: str | None = field(default=None, repr=False)
    ha_rest_ports: tuple[int, ...] = ()
    etcd_ports: tuple[int, ...] = ()

    def conninfo(self, port: int | None = None, **extra: Any) -> dict[str, Any]:
        """psycopg.connect keywords for the admin user on the primary (or another port)."""
        return {
            "host": self.host,
            "port": port or self.port,
            "dbname": self.database,
            "user": self.admin_user,
            "password": self.admin_password,
            "connect_timeout": 5,
            **extra,
        }


def optional_config(stack: auto.Stack, key: str) -> str | None:
    try:
        return stack.get_config(key).value
    except auto.CommandError:
        return None  # not set on this stack (an external platform has no PgBouncer password)


def read_target(stack: auto.Stack) -> Target:
    """The stack's outputs (secrets come back in clear to the Automation API) and two config secrets."""
    outputs = {key: value.value for key, value in stack.outputs().items()}
    missing = [key for key in ("host", "port", "database", "adminUser", "adminPassword") if outputs.get(key) is None]
    if missing:
        raise ToolError(f"stack {stack.name} has no output(s) {', '.join(missing)}: run `pulumi up` on it first")
    return Target(
        platform=str(outputs.get("platform", "")),
        host=str(outputs["host"]),
        port=int(outputs["port"]),
        database=str(outputs["database"]),
        admin_user=str(outputs["adminUser"]),
        admin_password=str(outputs["adminPassword"]),
        pooler_port=int(outputs["poolerPort"]) if outputs.get("poolerPort") else None,
        replica_ports=tuple(int(port) for port in outputs.get("replicaPorts") or []),
        redis_port=int(outputs["redisPort"]) if outputs.get("redisPort") else None,
        redis_password=outputs.get("redisPassword"),
        pooler_auth_password=optional_config(stack, "thorbis:pgbouncerAuthPassword"),
        authenticator_password=optional_config(stack, "thorbis:authenticatorPassword"),
        ha_rest_ports=tuple(int(port) for port in outputs.get("haRestPorts") or []),
        etcd_ports=tuple(int(port) for port in outputs.get("etcdPorts") or []),
    )
